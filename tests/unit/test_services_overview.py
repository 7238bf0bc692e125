"""What a front door lists and shows, composed by the services (not by the CLI), on SQLite and
PostgreSQL: jobs with their tenant slug and headline metric, a tenant with its summary and quotas."""

from __future__ import annotations

import pytest

from orchestrator import errors
from orchestrator.registry.models import new_id
from orchestrator.services.adapters import new_adapter_path
from orchestrator.services.jobs import submit_job
from orchestrator.services.leases import AdapterRecord, claim_job, finish_job_success
from orchestrator.services.overview import job_listing, tenant_overview
from orchestrator.services.tenants import create_tenant, set_tenant_quota

pytest_plugins = ["registry_fixtures"]


def _succeed(session, settings, adapter_files, job, metrics, size=1000):
    claim_job(session, job.id, "w1", 60)
    adapter_id = new_id()
    path = adapter_files(new_adapter_path(settings, job.tenant_id, adapter_id))
    record = AdapterRecord(id=adapter_id, path=str(path), sha256="a" * 64, bytes=size,
                               trainable_params=10, total_params=100)
    finish_job_success(session, job.id, "w1", record, metrics,
                           {"device": "cpu", "device_seconds": 4.0, "wall_seconds": 5.0})


def test_job_listing_joins_tenant_slugs_and_headline_metrics(session, registry_settings, adapter_files,
                                                             job_spec):
    create_tenant(session, "acme")
    create_tenant(session, "globex")
    scored = submit_job(session, "acme", job_spec)  # sst2: accuracy is its primary metric
    _succeed(session, registry_settings, adapter_files, scored,
             {"validation": {"accuracy": 0.75, "loss": 0.4}, "train": {"accuracy": 0.9}})
    waiting = submit_job(session, "globex", {**job_spec, "task": "mrpc"})

    listed = job_listing(session)
    assert [(j.job.id, j.tenant_slug, j.headline) for j in listed] == [
        (waiting.id, "globex", None), (scored.id, "acme", ("accuracy", 0.75))]
    assert [j.to_dict()["tenant"] for j in listed] == ["globex", "acme"]
    assert [j.job.id for j in job_listing(session, tenant="acme")] == [scored.id]
    assert [j.job.id for j in job_listing(session, state="queued")] == [waiting.id]
    assert [j.job.id for j in job_listing(session, limit=1, offset=1)] == [scored.id]
    with pytest.raises(errors.InvalidInput, match="unknown state 'napping'"):
        job_listing(session, state="napping")
    with pytest.raises(errors.NotFound, match="no tenant 'nobody'"):
        job_listing(session, tenant="nobody")


def test_tenant_overview_merges_the_tenant_its_summary_and_its_quotas(session, registry_settings,
                                                                      adapter_files, job_spec):
    create_tenant(session, "acme", max_running=3)
    create_tenant(session, "other")
    _succeed(session, registry_settings, adapter_files, submit_job(session, "acme", job_spec),
             {"validation": {"accuracy": 0.5}}, size=4000)
    submit_job(session, "acme", job_spec)
    submit_job(session, "other", job_spec)  # another tenant's job counts nowhere here

    overview = tenant_overview(session, "acme")
    view = overview.to_dict()
    assert (view["slug"], view["max_running"]) == ("acme", 3)
    assert view["jobs"] == {
        "queued": 1, "running": 0, "paused": 0, "succeeded": 1, "failed": 0, "cancelled": 0
    }
    assert (view["adapters"], view["adapter_bytes"], view["device_seconds"]) == (1, 4000, 4.0)
    assert view["quotas"]["queued_jobs"] == {"used": 1, "limit": overview.tenant.max_queued}
    assert view["quotas"]["running_jobs"] == {"used": 0, "limit": 3}
    assert view["quotas"]["storage_bytes"] == {"used": 4000, "limit": None, "over": False}
    assert overview.storage_warning is None

    set_tenant_quota(session, "acme", max_storage_bytes=1000)
    over = tenant_overview(session, "acme")
    assert over.to_dict()["quotas"]["storage_bytes"] == {"used": 4000, "limit": 1000, "over": True}
    assert "over its storage quota: 4000 of 1000 bytes" in over.storage_warning
    with pytest.raises(errors.NotFound, match="no tenant 'nobody'"):
        tenant_overview(session, "nobody")
