"""A broken worker environment is the worker's fault, not the job's: what the worker checks of
its own environment, how it counts faults, and the runner handing a job back (real registry,
real broker, a real tiny job)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.config import load_settings
from orchestrator.registry.db import forget_engine, session_scope
from orchestrator.services.jobs import get_job, job_events, submit_job
from orchestrator.services.tenants import create_tenant
from worker import health
from worker.preflight import environment_faults
from worker.runner import run_job

DATA_DIR = os.environ["LORAFLEET_DATA_DIR"]
TINY = {"task": "sst2", "base_model": "tiny-bert", "rank": 4, "max_steps": 2, "batch_size": 4, "eval_size": 8}


def _settings(tmp_path: Path, **env: str):
    return load_settings({"LORAFLEET_HOME": str(tmp_path / "home"), "LORAFLEET_DATA_DIR": DATA_DIR,
                          "LORAFLEET_DATA_ROOTS": str(tmp_path), **env})


@pytest.fixture(autouse=True)
def _fresh_health():
    health.reset()
    yield
    health.reset()


def test_the_worker_checks_only_its_own_paths_for_what_the_job_reads(tmp_path):
    sound = _settings(tmp_path)
    sound.artifacts.mkdir(parents=True)
    assert environment_faults(sound, {"task": "sst2"}) == []
    assert environment_faults(sound, {"task": "e2e"}) == []

    no_data = _settings(tmp_path, LORAFLEET_DATA_DIR=str(tmp_path / "gone"))
    assert environment_faults(no_data, {"task": "sst2"}) == [
        f"data folder {tmp_path / 'gone'} is missing (LORAFLEET_DATA_DIR)"]
    # A re-evaluation reads its adapters' tasks; a tenant's own data set is the job's, not ours.
    assert len(environment_faults(no_data, {"adapters": [{"id": "a", "task": "mrpc"}]})) == 1
    assert environment_faults(no_data, {"task": "classification", "dataset": "0" * 36}) == []

    half = tmp_path / "half"
    (half / "glue").mkdir(parents=True)
    only_glue = _settings(tmp_path, LORAFLEET_DATA_DIR=str(half))
    assert environment_faults(only_glue, {"task": "sst2"}) == []
    assert environment_faults(only_glue, {"task": "e2e"}) == [
        f"data folder {half} has no readable e2e/ (is missing) (LORAFLEET_DATA_DIR)"]

    # An artifacts folder is created on first use; one that cannot be is the worker's fault.
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    no_artifacts = _settings(tmp_path, LORAFLEET_ARTIFACTS=str(blocked / "artifacts"))
    assert environment_faults(no_artifacts, {"task": "sst2"}) == [
        f"artifacts folder {blocked / 'artifacts'} is missing and cannot be created (Not a directory) "
        "(LORAFLEET_ARTIFACTS)"]
    fresh = _settings(tmp_path, LORAFLEET_ARTIFACTS=str(tmp_path / "fresh" / "artifacts"))
    assert environment_faults(fresh, {"task": "sst2"}) == [] and fresh.artifacts.is_dir()


def test_a_worker_without_a_data_root_cannot_read_a_base_folder_and_says_so(tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.chdir(home)  # the home cannot be the default data root: this worker has none
    rootless = load_settings({"LORAFLEET_HOME": str(home), "LORAFLEET_DATA_DIR": DATA_DIR})
    assert rootless.data_roots == []
    assert environment_faults(rootless, {"task": "sst2", "base_model": "tiny-bert"}) == []
    faults = environment_faults(rootless, {"task": "sst2", "base_model": str(tmp_path / "model")})
    assert len(faults) == 1 and "set LORAFLEET_DATA_ROOTS for this worker" in faults[0]


def test_a_deleted_working_folder_is_named(tmp_path):
    # In a process of its own (with the engine loaded, as a worker has): its working folder is
    # deleted under it.
    gone = tmp_path / "was-here"
    gone.mkdir()
    code = ("import os, sys; from orchestrator.config import load_settings; import lora_engine.models; "
            "from worker.preflight import environment_faults; "
            f"s = load_settings({{'LORAFLEET_HOME': {str(tmp_path)!r}}}); os.rmdir(os.getcwd()); "
            "print(environment_faults(s, {'task': 'custom'})[0])")
    out = subprocess.run([sys.executable, "-c", code], cwd=gone, capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert out.stdout.strip() == (f"working folder {gone} is gone (No such file or directory): start the "
                                  "worker in an existing folder"), out.stderr


def test_faults_in_a_row_make_the_process_unhealthy_once():
    called = []
    health.on_unhealthy(called.append)
    assert not health.record_fault("data folder /x is missing", unhealthy_after=3)
    assert not health.record_fault("data folder /x is missing", unhealthy_after=3)
    health.record_ok()  # a job its environment did not fail: the count starts again
    assert not health.record_fault("data folder /x is missing", unhealthy_after=3)
    assert not health.record_fault("data folder /x is missing", unhealthy_after=3)
    assert health.unhealthy() is None
    assert health.record_fault("data folder /x is missing", unhealthy_after=3)
    assert "failed 3 job(s) in a row" in health.unhealthy() and health.unhealthy().endswith("/x is missing")
    assert not health.record_fault("data folder /x is missing", unhealthy_after=3)  # already out
    health.record_ok()
    assert called == [health.unhealthy()]  # once; and it stays out of service until restarted


def test_a_worker_without_its_data_folder_hands_the_job_back(tmp_path):
    good = _settings(tmp_path, LORAFLEET_UNHEALTHY_AFTER="2")
    broken = _settings(tmp_path, LORAFLEET_UNHEALTHY_AFTER="2", LORAFLEET_DATA_DIR=str(tmp_path / "gone"))
    try:
        with session_scope(good) as s:
            create_tenant(s, "acme")
            job_id = submit_job(s, "acme", TINY, max_attempts=1, settings=good).id

        first = run_job(job_id, worker_id="broken:1", settings=broken, cache=None)
        assert (first.outcome, first.job_id) == ("requeued", job_id)
        with session_scope(good) as s:
            job = get_job(s, job_id).job
            events = list(job_events(s, job_id))
        # Its one attempt is still there: the worker's fault did not use it.
        assert (job.state, job.attempts, job.max_attempts) == ("queued", 0, 1)
        assert [e.kind for e in events] == ["submitted", "claimed", "requeued"]
        assert f"data folder {tmp_path / 'gone'} is missing" in events[-1].message
        assert health.unhealthy() is None

        second = run_job(job_id, worker_id="broken:1", settings=broken, cache=None)
        assert second.outcome == "requeued" and "is missing" in health.unhealthy()

        done = run_job(job_id, worker_id="healthy:2", settings=good, cache=None)
        assert done.outcome == "succeeded", done.detail
        with session_scope(good) as s:
            detail = get_job(s, job_id)
        assert (detail.job.attempts, [u.attempt for u in detail.usage]) == (1, [1])
    finally:
        forget_engine(good.database_url)


def test_a_jobs_own_bad_input_still_fails_it(tmp_path):
    settings = _settings(tmp_path)
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text('{"model_type": "bert"}')  # no weights
    try:
        with session_scope(settings) as s:
            create_tenant(s, "acme")
            job_id = submit_job(s, "acme", {**TINY, "base_model": str(tmp_path / "model")},
                                    settings=settings).id
        result = run_job(job_id, worker_id="w:1", settings=settings, cache=None)
        assert result.outcome == "failed" and "cannot load base model" in result.detail
        assert health.unhealthy() is None
    finally:
        forget_engine(settings.database_url)


def test_an_unhealthy_worker_claims_nothing_and_hands_the_message_back(tmp_path, monkeypatch):
    from celery.exceptions import Reject

    from orchestrator.config import get_settings

    monkeypatch.setenv("LORAFLEET_HOME", str(tmp_path / "home"))
    for var in ("LORAFLEET_DATABASE_URL", "LORAFLEET_BROKER_URL", "LORAFLEET_ARTIFACTS"):
        monkeypatch.delenv(var, raising=False)
    get_settings.cache_clear()
    try:
        with session_scope() as s:
            create_tenant(s, "acme")
            job_id = submit_job(s, "acme", TINY).id
        health.record_fault("data folder /srv/data is missing", unhealthy_after=1)
        from worker.tasks import run_job as task

        result = task.apply(args=[job_id])
        assert isinstance(result.result, Reject) and result.result.requeue
        assert "data folder /srv/data is missing" in str(result.result.reason)
        with session_scope() as s:
            assert [e.kind for e in job_events(s, job_id)] == ["submitted"]  # not claimed
    finally:
        forget_engine(get_settings().database_url)
        get_settings.cache_clear()
