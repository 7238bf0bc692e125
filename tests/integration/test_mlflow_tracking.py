"""The MLflow sink end to end: a real `mlflow server` process (temporary SQLite backend store,
artifacts served through it), a real worker process (embedded registry and broker) whose
LORAFLEET_MLFLOW_TRACKING_URI points at it, real tiny jobs; every run read back through MLflow's
own REST API: params, metric steps, tags, the adapter's files. A run the server refuses (the
tenant's experiment deleted) is given up at once with a `tracking` event. Then the server is
stopped: a job still succeeds, its `tracking` warning event is recorded, and the worker takes the
next job.

The server is started once for the module (it takes ~10-15 s), the worker too; the back-off is
shortened through the environment. The sink is the same for either registry (its queries are
tested on both in tests/unit/test_tracking_sink.py), so only the embedded mode runs here.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from orchestrator import artifacts
from orchestrator.announce import announce_jobs
from orchestrator.config import load_settings
from orchestrator.registry import db
from orchestrator.registry.db import session_scope
from orchestrator.services.jobs import JobLabels, get_job, job_events, submit_job
from orchestrator.services.metrics import metric_history
from orchestrator.services.tenants import create_tenant
from tests.integration.workers import (
    WORKER_START_TIMEOUT_S,
    LiveWorker,
    start_worker,
    stop_worker,
    wait_for,
    worker_env,
)
from worker.tracking import Sink

pytestmark = pytest.mark.integration

TINY = {"task": "sst2", "method": "lora", "rank": 4, "base_model": "tiny-bert", "max_steps": 3,
        "batch_size": 4, "eval_size": 8}
MLFLOW_START_TIMEOUT_S = 120
API = "/api/2.0/mlflow"


@dataclass
class MlflowServer:
    url: str
    proc: subprocess.Popen
    log_path: Path

    def wait_ready(self) -> None:
        def healthy() -> bool:
            if self.proc.poll() is not None:
                pytest.fail(f"mlflow server exited ({self.proc.returncode}):\n"
                            f"{self.log_path.read_text()[-3000:]}")
            try:
                return httpx.get(f"{self.url}/health", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(healthy, MLFLOW_START_TIMEOUT_S, "the mlflow server to start", interval=0.5)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)  # its own session: the server and its workers
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """Started, not yet ready: the worker starts meanwhile (`worker` waits for both)."""
    folder = tmp_path_factory.mktemp("mlflow")
    port = _free_port()
    log_path = folder / "server.log"
    argv = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
            "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}",
            "--artifacts-destination", str(folder / "artifacts"), "--workers", "1"]
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}
    with open(log_path, "w") as log:
        proc = subprocess.Popen(argv, cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    server = MlflowServer(f"http://127.0.0.1:{port}", proc, log_path)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def worker(mlflow_server: MlflowServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveWorker]:
    home = tmp_path_factory.mktemp("lorafleet-mlflow")
    env = {**worker_env(home), "LORAFLEET_MLFLOW_TRACKING_URI": mlflow_server.url,
           "LORAFLEET_MLFLOW_FLUSH_S": "0.2", "LORAFLEET_MLFLOW_TIMEOUT_S": "5",
           "LORAFLEET_MLFLOW_RETRY_FIRST_S": "0.1", "LORAFLEET_MLFLOW_RETRY_CAP_S": "0.3",
           "LORAFLEET_MLFLOW_GIVE_UP_S": "1.5"}
    settings = load_settings(env)
    proc = start_worker(env, home / "worker.log", name="mlflow")
    live = LiveWorker(settings, env, proc, home / "worker.log", "embedded")
    try:
        mlflow_server.wait_ready()
        wait_for(lambda: " ready." in live.log(), WORKER_START_TIMEOUT_S, "the worker to start", live)
        yield live
    finally:
        stop_worker(proc)
        from orchestrator.dispatch import close_clients

        close_clients()
        db.forget_engine(settings.database_url)


def _submit(worker: LiveWorker, tenant: str, labels: JobLabels | None = None) -> str:
    with session_scope(worker.settings) as s:
        job_id = submit_job(s, tenant, dict(TINY), settings=worker.settings, labels=labels).id
    announce_jobs([job_id], settings=worker.settings)
    return job_id


def _state(worker: LiveWorker, job_id: str) -> str:
    with session_scope(worker.settings) as s:
        return get_job(s, job_id).job.state


def _ended(worker: LiveWorker, *job_ids: str) -> None:
    wait_for(lambda: all(_state(worker, j) in ("succeeded", "failed", "cancelled") for j in job_ids), 180,
             "the jobs to end", worker)
    assert [_state(worker, j) for j in job_ids] == ["succeeded"] * len(job_ids), worker.log()[-3000:]


def _get(server: MlflowServer, endpoint: str, **params: str) -> dict:
    answer = httpx.get(f"{server.url}{API}/{endpoint}", params=params, timeout=10)
    assert answer.status_code == 200, answer.text
    return answer.json()


def _runs(server: MlflowServer, experiment: str) -> list[dict]:
    found = httpx.get(f"{server.url}{API}/experiments/get-by-name", params={"experiment_name": experiment},
                      timeout=10)
    if found.status_code == 404:
        return []
    experiment_id = found.json()["experiment"]["experiment_id"]
    answer = httpx.post(f"{server.url}{API}/runs/search", json={"experiment_ids": [experiment_id]},
                        timeout=10)
    return answer.json().get("runs", [])


def _tracking_events(worker: LiveWorker, job_id: str) -> list:
    with session_scope(worker.settings) as s:
        return [e for e in job_events(s, job_id) if e.kind == "tracking"]


def test_a_job_is_one_mlflow_run_and_an_opted_out_job_none(worker: LiveWorker,
                                                           mlflow_server: MlflowServer) -> None:
    tenant = "acme-ml"
    with session_scope(worker.settings) as s:
        create_tenant(s, tenant, max_running=2)
    # The tenant's strings go as values: a key MLflow would refuse as a tag name, quotes, a path.
    metadata = {"team name!": "nlp's", "where": "../../etc"}
    tracked = _submit(worker, tenant, JobLabels(metadata=metadata, suffix="demo.1"))
    opted_out = _submit(worker, tenant, JobLabels(tracking=False))
    _ended(worker, tracked, opted_out)

    def finished_runs() -> list[dict]:
        return [r for r in _runs(mlflow_server, tenant) if r["info"]["status"] == "FINISHED"]

    [run] = wait_for(finished_runs, 60, "the job's MLflow run to finish", worker)
    with session_scope(worker.settings) as s:
        detail = get_job(s, tracked)
        history = metric_history(s, tracked)
    run = _get(mlflow_server, "runs/get", run_id=run["info"]["run_id"])["run"]
    run_id = run["info"]["run_id"]
    tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
    assert tags["lorafleet.tenant"] == tenant and tags["lorafleet.job_id"] == tracked
    assert json.loads(tags["lorafleet.metadata"]) == metadata and tags["lorafleet.suffix"] == "demo.1"
    params = {p["key"]: p["value"] for p in run["data"]["params"]}
    for key, value in detail.job.spec.items():  # the stored (resolved) spec, every field
        if not isinstance(value, dict):
            assert params[key] == (value if isinstance(value, str) else json.dumps(value, sort_keys=True))
    assert (params["rank"], params["max_steps"], params["task"]) == ("4", "3", "sst2")

    # Every curve, step by step, as the registry holds it.
    series = {p.name for p in history}
    assert {"loss", "lr"} <= series
    for name in series:
        got = _get(mlflow_server, "metrics/get-history", run_id=run_id, metric_key=name)["metrics"]
        want = sorted((p.step, p.value) for p in history if p.name == name)
        assert sorted((m["step"], m["value"]) for m in got) == [(s, pytest.approx(v)) for s, v in want], name
    assert [p.step for p in history if p.name == "loss"] == [1, 2, 3]
    finals = {f"{split}/{name}": value for split, values in detail.metrics.items()
              for name, value in values.items()}
    assert finals
    logged = {m["key"]: m["value"] for m in run["data"]["metrics"]}
    for key, value in finals.items():
        assert logged[key] == pytest.approx(value), key

    # The adapter folder, byte for byte.
    folder = artifacts.adapter_path(worker.settings, detail.job.tenant_id, detail.adapter.id)
    local = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    listed = _get(mlflow_server, "artifacts/list", run_id=run_id, path="adapter")["files"]
    assert sorted(f["path"].removeprefix("adapter/") for f in listed if not f["is_dir"]) == local
    root = run["info"]["artifact_uri"].removeprefix("mlflow-artifacts:").strip("/")
    weights = httpx.get(f"{mlflow_server.url}/api/2.0/mlflow-artifacts/artifacts/{root}/adapter/"
                        "adapter_model.safetensors", timeout=30)
    assert weights.content == (folder / "adapter_model.safetensors").read_bytes()

    # Another attempt (a sink on another worker, here this process's) finds the run by its tag and
    # sends nothing twice: the same history, the same final metrics, the run still FINISHED.
    def histories() -> dict[str, int]:
        return {key: len(_get(mlflow_server, "metrics/get-history", run_id=run_id, metric_key=key)["metrics"])
                for key in sorted(series | set(finals))}

    before = histories()
    other = Sink(worker.settings)
    try:
        other.watch(tracked)
        other.ended(tracked)
        other.pass_once()
        assert not other.jobs
    finally:
        other.client.close()
    assert histories() == before
    assert [r["info"]["status"] for r in _runs(mlflow_server, tenant)] == ["FINISHED"]

    # The opted-out job: no run anywhere, no warning either.
    assert all(r["info"]["run_name"] != opted_out for r in _runs(mlflow_server, tenant))
    assert _tracking_events(worker, tracked) == [] and _tracking_events(worker, opted_out) == []


def test_a_refused_run_is_given_up_at_once_with_a_warning(worker: LiveWorker,
                                                          mlflow_server: MlflowServer) -> None:
    """The tenant's experiment was deleted on the server (a 4xx for every new run): no retry loop,
    one `tracking` event quoting MLflow's answer, the job succeeded."""
    tenant = "acme-deleted"
    with session_scope(worker.settings) as s:
        create_tenant(s, tenant, max_running=2)
    created = httpx.post(f"{mlflow_server.url}{API}/experiments/create", json={"name": tenant}, timeout=10)
    httpx.post(f"{mlflow_server.url}{API}/experiments/delete",
               json={"experiment_id": created.json()["experiment_id"]}, timeout=10).raise_for_status()
    job_id = _submit(worker, tenant)
    _ended(worker, job_id)
    [event] = wait_for(lambda: _tracking_events(worker, job_id), 60, "the tracking warning", worker)
    assert "MLflow refused" in event.message and "HTTP 400" in event.data["error"]
    assert _runs(mlflow_server, tenant) == []


def test_mlflow_down_the_job_succeeds_with_a_tracking_warning(worker: LiveWorker,
                                                              mlflow_server: MlflowServer) -> None:
    tenant = "acme-down"
    with session_scope(worker.settings) as s:
        create_tenant(s, tenant, max_running=2)
    mlflow_server.stop()
    first = _submit(worker, tenant)
    _ended(worker, first)
    [event] = wait_for(lambda: _tracking_events(worker, first), 60, "the tracking warning", worker)
    assert "MLflow unreachable" in event.message and "given up" in event.message
    assert "ConnectError" in event.data["error"]
    second = _submit(worker, tenant)  # the worker is not stuck on MLflow: it takes the next job
    _ended(worker, second)
    wait_for(lambda: _tracking_events(worker, second), 60, "the second job's tracking warning", worker)
    assert worker.alive()
