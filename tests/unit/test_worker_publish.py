"""The runner's last step on SQLite and PostgreSQL: a staged adapter is renamed into place,
hashed once, and registered, or, when the registry refuses it (the job was taken back meanwhile),
removed again, so no folder outlives a registration that failed."""

from __future__ import annotations

import json

import pytest

from lora_engine.adapters.io import adapter_files_digest
from orchestrator import artifacts, errors
from orchestrator.registry.db import session_scope
from orchestrator.services.adapters import get_adapter, list_adapters
from orchestrator.services.jobs import submit_job
from orchestrator.services.leases import UsageRecord, claim_job, requeue_job
from orchestrator.services.tenants import create_tenant
from worker.attempt import succeed
from worker.executor import JobContext, JobHooks, JobResult, StagedAdapter

pytest_plugins = ["registry_fixtures"]


def _claimed(settings, worker: str) -> JobContext:
    with session_scope(settings) as s:
        create_tenant(s, "acme")
        job = submit_job(s, "acme", {"task": "sst2", "base_model": "tiny-bert", "max_steps": 2})
        job = claim_job(s, job.id, worker, 60)
    staging = artifacts.staging_path(settings, job.tenant_id, job.id, job.attempts)
    staging.mkdir(parents=True)
    (staging / "adapter_config.json").write_text(json.dumps({"r": 4}))
    (staging / "adapter_model.safetensors").write_bytes(b"\0" * 64)
    hooks = JobHooks(lambda *a: None, lambda: False, lambda *a: None, lambda *a: None)
    return JobContext(job.id, job.tenant_id, "train", job.attempts, dict(job.spec), settings, hooks, staging,
                      artifacts.checkpoint_path(settings, job.tenant_id, job.id), None)


def _result(ctx: JobContext) -> JobResult:
    return JobResult({"validation": {"accuracy": 0.5}}, UsageRecord(device="cpu", examples=8),
                     StagedAdapter(ctx.staging_dir, 10, 100))


def test_published_adapter_is_hashed_where_it_lies(registry_settings):
    ctx = _claimed(registry_settings, "w1")
    outcome = succeed(ctx, "w1", _result(ctx))
    with session_scope(registry_settings) as s:
        row = get_adapter(s, outcome.adapter_id)
    assert row.path == str(artifacts.adapter_path(registry_settings, ctx.tenant_id, row.id))
    assert adapter_files_digest(row.path) == (row.sha256, row.bytes)
    assert not ctx.staging_dir.exists()


def test_a_refused_registration_leaves_no_folder(registry_settings):
    ctx = _claimed(registry_settings, "w1")
    with session_scope(registry_settings) as s:  # the reconciler handed the job to another worker
        requeue_job(s, ctx.job_id, "w1", "lease expired")
        claim_job(s, ctx.job_id, "w2", 60)
    with pytest.raises(errors.LeaseLost):
        succeed(ctx, "w1", _result(ctx))
    tenant_root = registry_settings.artifacts / ctx.tenant_id
    assert [p.name for p in tenant_root.iterdir()] == [".staging"]  # the published folder is gone
    with session_scope(registry_settings) as s:
        assert list_adapters(s) == []
