"""A job that fails ends its Celery task in FAILURE (what Flower shows), not SUCCESS; the failure
is recorded in the registry first."""

from __future__ import annotations

import json

from orchestrator.config import get_settings
from orchestrator.registry.db import forget_engine, session_scope
from orchestrator.services.jobs import get_job, submit_job
from orchestrator.services.tenants import create_tenant


def test_a_failed_job_fails_its_task(tmp_path, monkeypatch):
    monkeypatch.setenv("LORAFLEET_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("LORAFLEET_DEVICE", "cpu")
    monkeypatch.setenv("LORAFLEET_DATA_ROOTS", str(tmp_path))
    for var in ("LORAFLEET_DATABASE_URL", "LORAFLEET_BROKER_URL", "LORAFLEET_ARTIFACTS"):
        monkeypatch.delenv(var, raising=False)
    get_settings.cache_clear()
    # A model folder the door accepts (config.json names a BERT) with no weights: loading fails.
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "config.json").write_text(json.dumps({"model_type": "bert"}))
    try:
        with session_scope() as s:
            create_tenant(s, "acme")
            job_id = submit_job(s, "acme", {"task": "sst2", "base_model": str(broken), "max_steps": 1}).id
        from worker.tasks import JobFailed, run_job

        result = run_job.apply(args=[job_id])
        assert result.state == "FAILURE" and isinstance(result.result, JobFailed)
        assert job_id in str(result.result)
        with session_scope() as s:
            assert get_job(s, job_id).job.state == "failed"
    finally:
        forget_engine(get_settings().database_url)
        get_settings.cache_clear()
