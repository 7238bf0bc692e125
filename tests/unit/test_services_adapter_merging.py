"""Merge jobs on SQLite and PostgreSQL: refused at the door (nothing queued) unless the parents can
be merged, run through the worker's real attempt lifecycle (`worker.runner.run_job`, in process),
and the new adapter registered with its parents, its sha256 and a model name."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from sqlalchemy import func, select

from lora_engine.adapters.digest import adapter_files_digest
from lora_engine.adapters.folder import AdapterMeta, write_adapter_meta
from lora_engine.adapters.io import save_adapter
from lora_engine.catalog import TASKS
from lora_engine.inject import LoraSettings, head_module_names, inject_lora, mark_only_lora_as_trainable
from lora_engine.models import load_base_model
from orchestrator import errors
from orchestrator.registry.db import session_scope
from orchestrator.registry.models import Job, Usage
from orchestrator.services.adapter_merging import submit_merge
from orchestrator.services.adapters import (
    delete_adapter,
    get_adapter,
    list_adapters,
    model_names_of,
    new_adapter_path,
    parents_of,
    verified_adapter,
)
from orchestrator.services.jobs import get_job, submit_job
from orchestrator.services.leases import AdapterRecord, claim_job, finish_job_success
from orchestrator.services.tenants import create_tenant
from orchestrator.services.views import adapter_dict
from worker.runner import run_job

pytest_plugins = ["registry_fixtures"]


def _adapter(session, settings, tenant: str, seed: int, *, rank: int = 4, method: str = "lora",
             labels: tuple[str, ...] | None = None) -> str:
    """A real (tiny-bert, SST-2) adapter registered as its job's: B ≠ 0, its own head."""
    spec = {"task": "sst2", "rank": rank, "method": method, "base_model": "tiny-bert", "max_steps": 5}
    job = submit_job(session, tenant, spec, settings=settings)
    claim_job(session, job.id, "w1", 60)
    torch.manual_seed(seed)
    model, _ = load_base_model("tiny-bert", "classification", 2)
    settings_ = LoraSettings(method=method, rank=rank, alpha=2 * rank)
    inject_lora(model, settings_)
    trainable = mark_only_lora_as_trainable(model, modules_to_save=head_module_names(model))
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn_like(p))
    meta = AdapterMeta.for_task(TASKS["sst2"], base_model="tiny-bert", method=method)
    record = AdapterRecord(id=job.id, path="", sha256="", bytes=0, trainable_params=trainable, total_params=0)
    path = new_adapter_path(settings, job.tenant_id, job.id)
    save_adapter(model, path, base_model_name="tiny-bert", settings=settings_, task_type="classification",
                 meta=meta)
    if labels is not None:
        write_adapter_meta(path, replace(meta, label_names=labels))
    sha, size = adapter_files_digest(path)
    total = trainable + sum(p.numel() for p in model.parameters() if not p.requires_grad)
    record = replace(record, path=str(path), sha256=sha, bytes=size, total_params=total)
    finish_job_success(session, job.id, "w1", record, {"validation": {"accuracy": 0.5}})
    session.commit()
    return job.id  # the adapter's id is its job's here


def _jobs(session) -> int:
    return session.scalar(select(func.count()).select_from(Job))


def test_merge_job_runs_and_records_the_parents(session, registry_settings) -> None:
    create_tenant(session, "acme")
    a = _adapter(session, registry_settings, "acme", seed=1)
    b = _adapter(session, registry_settings, "acme", seed=2)
    job = submit_merge(session, "acme", [a, b[:8]], "dare_ties", [0.6, 0.4], 0.7, seed=3)
    session.commit()
    assert (job.kind, job.state, job.task, job.method, job.rank, job.base_model) == \
        ("merge", "queued", "sst2", "lora", 4, "tiny-bert")
    assert job.spec["parents"] == [{"id": a, "weight": 0.6}, {"id": b, "weight": 0.4}]  # ids, never paths
    assert (job.spec["density"], job.spec["seed"]) == (0.7, 3)

    result = run_job(job.id, worker_id="w2", settings=registry_settings, cache=None)
    assert result.outcome == "succeeded", result.detail
    with session_scope(registry_settings) as s:
        detail = get_job(s, job.id).to_dict()
        merged = verified_adapter(s, result.adapter_id)  # its files hash to the registry's sha256
        assert (merged.task, merged.method, merged.rank) == ("sst2", "lora", 4)
        assert merged.parent_adapter_id is None
        assert parents_of(s, [merged])[merged.id] == [a, b]
        listed = list_adapters(s, tenant="acme")
        views = {v.id: adapter_dict(v, parents=parents_of(s, listed)[v.id]) for v in listed}
        assert views[merged.id]["parents"] == [a, b] and views[a]["parents"] == []
        name = model_names_of(s, [merged])[merged.id]
        usage = s.scalars(select(Usage).where(Usage.job_id == job.id)).all()
    assert detail["state"] == "succeeded" and detail["metrics"] == {}
    assert detail["adapter"]["id"] == merged.id and detail["adapter"]["parents"] == [a, b]
    assert name == f"ft:tiny-bert:acme:merge-dare_ties:{merged.id}"
    assert [(u.examples, u.tokens, u.device) for u in usage] == [(0, 0, "cpu")]  # nothing trained
    assert merged.trainable_params > 0 and merged.total_params > merged.trainable_params


def test_refused_at_the_door_and_nothing_queued(session, registry_settings) -> None:
    create_tenant(session, "acme")
    create_tenant(session, "globex")
    a = _adapter(session, registry_settings, "acme", seed=1)
    b = _adapter(session, registry_settings, "acme", seed=2)
    rank2 = _adapter(session, registry_settings, "acme", seed=3, rank=2)
    dora = _adapter(session, registry_settings, "acme", seed=4, method="dora")
    dora2 = _adapter(session, registry_settings, "acme", seed=7, method="dora")
    other_labels = _adapter(session, registry_settings, "acme", seed=5, labels=("bad", "good"))
    theirs = _adapter(session, registry_settings, "globex", seed=6)
    before = _jobs(session)
    cases = [
        (errors.NotFound, "no adapter", dict(adapters=[a, theirs])),  # another tenant's: unknown
        (errors.NotFound, "no adapter", dict(adapters=[a, "/etc/passwd"])),  # ids, not paths
        (errors.InvalidInput, "ranks 2, 4: ties needs one rank", dict(adapters=[a, rank2], how="ties")),
        (errors.InvalidInput, "differ in method", dict(adapters=[a, dora])),
        (errors.InvalidInput, "dora adapter cannot be merged: its magnitude", dict(adapters=[dora, dora2])),
        (errors.InvalidInput, "different label sets", dict(adapters=[a, other_labels])),
        (errors.InvalidInput, "more than once", dict(adapters=[a, a[:8]])),
        (errors.InvalidInput, "3 weight", dict(weights=[0.2, 0.3, 0.5])),
        (errors.InvalidInput, "sum to more than 0", dict(weights=[1.0, -1.0])),
        (errors.InvalidInput, "density applies to", dict(how="linear", density=0.3)),
        (errors.InvalidInput, "unknown merge method 'svd'", dict(how="svd")),
        (errors.InvalidInput, "suffix must be", dict(suffix="../x")),
    ]
    for error, words, given in cases:
        args = {"adapters": [a, b], "how": "ties", **given}
        with pytest.raises(error, match=words):
            submit_merge(session, "acme", args.pop("adapters"), args.pop("how"), **args)
        session.rollback()
    with pytest.raises(errors.NotFound, match="no adapter"):
        submit_merge(session, "globex", [theirs, a], "linear")
    session.rollback()
    assert _jobs(session) == before
    cat = submit_merge(session, "acme", [a, rank2], "cat")  # cat merges ranks that differ
    assert (cat.rank, cat.spec["parents"][0]["weight"]) == (6, 0.5)
    assert get_adapter(session, a).id == a


def test_a_parent_gone_before_the_merge_runs_fails_the_job(session, registry_settings) -> None:
    create_tenant(session, "acme")
    a = _adapter(session, registry_settings, "acme", seed=1)
    b = _adapter(session, registry_settings, "acme", seed=2)
    job = submit_merge(session, "acme", [a, b], "linear")
    session.commit()
    delete_adapter(session, b, settings=registry_settings)
    session.commit()
    result = run_job(job.id, worker_id="w2", settings=registry_settings, cache=None)
    assert result.outcome == "failed" and f"parent adapter {b}" in result.detail
    with session_scope(registry_settings) as s:
        assert [x.id for x in list_adapters(s, tenant="acme")] == [a]  # nothing half-registered
