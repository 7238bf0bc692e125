"""The MLflow sink's own rules, on SQLite and PostgreSQL, with nothing listening on the tracking
server's port (a real refused connection): a worker holding more jobs than `mlflow_max_jobs`
drops the oldest with a `tracking` warning event (memory stays bounded), a job whose server stays
down is retried with back-off and given up with a warning, an opted-out job is never tried. The
run written to a real `mlflow server` is tests/integration/test_mlflow_tracking.py's."""

from __future__ import annotations

import base64
import json
import socket
import time

import pytest

from orchestrator.config import ConfigError, load_settings
from orchestrator.registry.db import session_scope
from orchestrator.services.jobs import JobLabels, job_events, submit_job
from orchestrator.services.tenants import create_tenant
from tests.registry_fixtures import SPEC
from tests.webhook_receiver import Receiver
from worker.mlflow_rest import MlflowClient, MlflowError
from worker.tracking import PARAM_VALUE_MAX, Sink, spec_params

pytest_plugins = ["registry_fixtures"]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again on return: connections are refused


def _tracking(settings, job_id: str) -> list:
    with session_scope(settings) as s:
        return [e for e in job_events(s, job_id) if e.kind == "tracking"]


def test_the_tracking_server_is_an_http_url_of_the_operator(tmp_path) -> None:
    home = {"LORAFLEET_HOME": str(tmp_path)}
    assert load_settings(home).mlflow_tracking_uri == ""  # off by default
    given = load_settings({**home, "LORAFLEET_MLFLOW_TRACKING_URI": "https://u:p@mlflow.example/"})
    assert given.mlflow_tracking_uri == "https://u:p@mlflow.example"
    for bad in ("file:///tmp/mlruns", "databricks", "sqlite:///x.db"):
        with pytest.raises(ConfigError, match=r"LORAFLEET_MLFLOW_TRACKING_URI=.*allowed: an http"):
            load_settings({**home, "LORAFLEET_MLFLOW_TRACKING_URI": bad})


def test_basic_auth_leaves_the_url_and_answers_are_classified() -> None:
    """Against a real local HTTP server: the URL's user:password@ goes as an Authorization header
    (httpx logs URLs); 503 is worth another try, 400 is not."""
    receiver = Receiver()
    try:
        client = MlflowClient(receiver.url.replace("http://", "http://ops:s%40cret@"), timeout_s=5)
        assert "s@cret" not in str(client.http.base_url) and "ops" not in str(client.http.base_url)
        for status, transient in ((503, True), (429, True), (400, False)):
            receiver.answer = status
            with pytest.raises(MlflowError) as caught:
                client.finish_run("r1", "FINISHED", 0)
            assert caught.value.transient is transient and f"HTTP {status}" in str(caught.value)
        auth = {r.headers["authorization"] for r in receiver.received}
        assert auth == {"Basic " + base64.b64encode(b"ops:s@cret").decode()}
        client.close()
    finally:
        receiver.close()


def test_spec_params_flatten_and_keep_values_as_data() -> None:
    params = spec_params({"task": "sst2", "rank": 4, "lr": 0.0005, "targets": ["query", "value"],
                          "init_from": None, "packed": True, "extra": {"a": 1, "b c!": "x"},
                          "notes": "y" * (PARAM_VALUE_MAX + 10)})
    assert params == {"task": "sst2", "rank": "4", "lr": "0.0005", "targets": '["query", "value"]',
                      "init_from": "null", "packed": "true", "extra.a": "1", "extra.b c_": "x",
                      "notes": "y" * PARAM_VALUE_MAX}


def test_mlflow_down_drops_the_oldest_then_gives_up_with_warnings(registry_settings) -> None:
    settings = registry_settings.model_copy(update={
        "mlflow_tracking_uri": f"http://127.0.0.1:{_closed_port()}", "mlflow_max_jobs": 2,
        "mlflow_retry_first_s": 0.01, "mlflow_retry_cap_s": 0.02, "mlflow_give_up_s": 0.2,
        "mlflow_timeout_s": 2.0})
    with session_scope(settings) as s:
        create_tenant(s, "acme")
        oldest, kept, out = (submit_job(s, "acme", {**SPEC, "seed": seed}, settings=settings,
                                        labels=JobLabels(tracking=seed != 3)).id for seed in (1, 2, 3))
    sink = Sink(settings)  # its thread is not started: the test makes its passes
    try:
        for job_id in (oldest, kept, out):
            sink.watch(job_id)
        assert list(sink.jobs) == [kept, out]  # bounded: the oldest went
        sink.pass_once()
        [dropped] = _tracking(settings, oldest)
        assert "fell behind" in dropped.message and dropped.data == {"reason": "fell behind"}
        assert list(sink.jobs) == [kept]  # the opted-out job: forgotten, never tried
        assert sink.jobs[kept].failures == 1 and "ConnectError" in sink.jobs[kept].last_error
        deadline = time.monotonic() + 30
        while sink.jobs and time.monotonic() < deadline:
            time.sleep(0.05)
            sink.pass_once()
        assert not sink.jobs
        [gave_up] = _tracking(settings, kept)
        assert "MLflow unreachable" in gave_up.message and "given up" in gave_up.message
        assert "ConnectError" in gave_up.data["error"]
        assert _tracking(settings, out) == []
        json.dumps(gave_up.data)  # the event's data is plain JSON
    finally:
        sink.client.close()
