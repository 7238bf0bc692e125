"""Queueing re-evaluations on SQLite and PostgreSQL: one job per (tenant, base model) listing its
live LoRA adapters, scoped by tenant / task / base model; nothing to do is an error, nothing queued."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from orchestrator import errors
from orchestrator.errors import QuotaExceeded
from orchestrator.registry.models import Adapter, Job, new_id, utcnow
from orchestrator.services.adapters import new_adapter_path
from orchestrator.services.jobs import get_job, submit_job
from orchestrator.services.leases import AdapterRecord, claim_job, finish_job_success
from orchestrator.services.reevaluation import reevaluate_adapter_ids, submit_reevaluation
from orchestrator.services.tenants import create_tenant, get_tenant, set_tenant_quota

pytest_plugins = ["registry_fixtures"]


def _adapter(session, settings, tenant: str, **spec) -> str:
    job = submit_job(session, tenant, {"task": "sst2", "rank": 4, "base_model": "tiny-bert",
                                           "max_steps": 5, **spec})
    claim_job(session, job.id, "w1", 60)
    adapter_id = new_id()
    path = new_adapter_path(settings, job.tenant_id, adapter_id)
    record = AdapterRecord(id=adapter_id, path=str(path), sha256="a" * 64, bytes=10,
                               trainable_params=1, total_params=2)
    finish_job_success(session, job.id, "w1", record, {"validation": {"accuracy": 0.8}})
    return adapter_id


def test_one_job_per_tenant_and_base_model(session, registry_settings) -> None:
    for slug in ("acme", "globex"):
        create_tenant(session, slug)
    a1 = _adapter(session, registry_settings, "acme")
    a2 = _adapter(session, registry_settings, "acme", task="mnli")
    a3 = _adapter(session, registry_settings, "acme", base_model="tiny-roberta")
    _adapter(session, registry_settings, "acme", method="full")  # a whole model: not swappable
    gone = _adapter(session, registry_settings, "acme")
    session.get(Adapter, gone).deleted_at = utcnow()
    g1 = _adapter(session, registry_settings, "globex")
    session.commit()

    jobs = submit_reevaluation(session, tenant="acme")
    got = {(j.base_model, j.task): reevaluate_adapter_ids(j.spec) for j in jobs}
    assert got == {("tiny-bert", "mixed"): [a1, a2], ("tiny-roberta", "sst2"): [a3]}
    assert {(j.kind, j.method, j.rank, j.state) for j in jobs} == {("reevaluate", "none", 0, "queued")}
    assert jobs[1].spec["adapters"] == [{"id": a3, "task": "sst2"}]  # by id: the worker reads the folder
    assert get_job(session, jobs[0].id).to_dict()["kind"] == "reevaluate"

    everyone = submit_reevaluation(session, task="sst2", base_model="tiny-bert", eval_size=32)
    assert sorted(reevaluate_adapter_ids(j.spec) for j in everyone) == sorted([[a1], [g1]])
    assert {j.spec["eval_size"] for j in everyone} == {32}
    tenant_of = {reevaluate_adapter_ids(j.spec)[0]: j.tenant_id for j in everyone}
    assert tenant_of[g1] == get_tenant(session, "globex").id  # each tenant's job is its own


def test_validated_at_the_door(session, registry_settings) -> None:
    create_tenant(session, "acme")
    create_tenant(session, "empty")
    _adapter(session, registry_settings, "acme")
    session.commit()
    before = session.scalar(select(func.count()).select_from(Job))
    with pytest.raises(errors.InvalidInput,
                       match="nothing to re-evaluate: no LoRA adapters for tenant empty"):
        submit_reevaluation(session, tenant="empty")
    with pytest.raises(errors.InvalidInput, match="task cola"):
        submit_reevaluation(session, tenant=["acme"], task="cola")
    with pytest.raises(errors.InvalidInput, match="unknown task 'sst3'; allowed: cola"):
        submit_reevaluation(session, task="sst3")
    with pytest.raises(errors.InvalidInput, match="eval_size must be an integer >= 1"):
        submit_reevaluation(session, eval_size=0)
    with pytest.raises(errors.NotFound, match="no tenant 'nobody'"):
        submit_reevaluation(session, tenant=["acme", "nobody"])
    set_tenant_quota(session, "acme", max_queued=0)
    with pytest.raises(QuotaExceeded, match="may have 0 queued job"):
        submit_reevaluation(session, tenant="acme")
    session.rollback()
    assert session.scalar(select(func.count()).select_from(Job)) == before
