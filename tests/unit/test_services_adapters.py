"""Adapters and the per-tenant summary on SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator import artifacts, errors
from orchestrator.registry.models import new_id
from orchestrator.services.adapters import (
    delete_adapter,
    get_adapter,
    list_adapters,
    new_adapter_path,
    verified_adapter,
)
from orchestrator.services.jobs import get_job, submit_job
from orchestrator.services.leases import AdapterRecord, claim_job, fail_job, finish_job_success
from orchestrator.services.summary import tenant_summary
from orchestrator.services.tenants import create_tenant

pytest_plugins = ["registry_fixtures"]


def _train(session, settings, adapter_files, tenant: str, spec: dict, usage: dict | None = None):
    job = submit_job(session, tenant, spec)
    claim_job(session, job.id, "w1", 60)
    adapter_id = new_id()
    path = adapter_files(new_adapter_path(settings, job.tenant_id, adapter_id))
    record = AdapterRecord(id=adapter_id, path=str(path), sha256="a" * 64, bytes=1000,
                               trainable_params=10, total_params=100)
    return finish_job_success(session, job.id, "w1", record, {"validation": {"accuracy": 0.8}}, usage)


def test_list_get_delete_adapters_scoped_by_tenant(
    session, registry_settings, adapter_files, job_spec
) -> None:
    create_tenant(session, "acme")
    create_tenant(session, "other")
    mine = _train(session, registry_settings, adapter_files, "acme", job_spec)
    theirs = _train(session, registry_settings, adapter_files, "other", {**job_spec, "task": "mrpc"})
    assert [a.id for a in list_adapters(session, tenant="acme")] == [mine.id]
    assert {a.id for a in list_adapters(session)} == {mine.id, theirs.id}
    assert [a.id for a in list_adapters(session, task="mrpc")] == [theirs.id]
    assert get_adapter(session, mine.id, tenant="acme").path == mine.path
    with pytest.raises(errors.NotFound, match="for tenant 'other'"):
        get_adapter(session, mine.id, tenant="other")
    with pytest.raises(errors.NotFound):
        delete_adapter(session, mine.id, tenant="other", settings=registry_settings)

    assert (Path(mine.path) / "adapter_config.json").is_file()
    delete_adapter(session, mine.id, settings=registry_settings)
    assert not Path(mine.path).exists() and Path(theirs.path).exists()
    with pytest.raises(errors.NotFound):
        get_adapter(session, mine.id)
    assert list_adapters(session, tenant="acme") == []
    kept = list_adapters(session, tenant="acme", include_deleted=True)
    assert [a.id for a in kept] == [mine.id] and kept[0].deleted_at is not None
    detail = get_job(session, mine.job_id)  # the job keeps its history
    assert detail.job.state == "succeeded" and detail.metrics == {"validation": {"accuracy": 0.8}}


def test_delete_never_touches_files_outside_the_artifacts_root(
    session, registry_settings, adapter_files, job_spec, tmp_path
) -> None:
    create_tenant(session, "acme")
    job = submit_job(session, "acme", job_spec)
    claim_job(session, job.id, "w1", 60)
    outside = adapter_files(tmp_path / "elsewhere")
    record = AdapterRecord(id=new_id(), path=str(outside), sha256="a" * 64, bytes=1, trainable_params=1,
                               total_params=1)
    adapter = finish_job_success(session, job.id, "w1", record, {})
    delete_adapter(session, adapter.id, settings=registry_settings)
    assert (outside / "adapter_config.json").is_file()


def test_adapter_paths_are_built_from_ids_only(registry_settings) -> None:
    tid, aid = new_id(), new_id()
    assert new_adapter_path(registry_settings, tid, aid) == registry_settings.artifacts / tid / aid
    with pytest.raises(errors.InvalidInput, match="adapter_id must be a UUID"):
        new_adapter_path(registry_settings, tid, "../../etc")
    jid = new_id()
    expected = registry_settings.artifacts / tid / "checkpoints" / jid
    assert artifacts.checkpoint_path(registry_settings, tid, jid) == expected


def test_tenant_summary(session, registry_settings, adapter_files, job_spec) -> None:
    create_tenant(session, "acme", name="Acme Research")
    create_tenant(session, "idle")
    usage = {"device": "cpu", "device_seconds": 10.0, "wall_seconds": 11.0, "examples": 100, "tokens": 900}
    _train(session, registry_settings, adapter_files, "acme", job_spec, usage)
    _train(session, registry_settings, adapter_files, "acme", job_spec, usage)
    failed = submit_job(session, "acme", job_spec)
    claim_job(session, failed.id, "w1", 60)
    fail_job(session, failed.id, "w1", "bad data", {"device": "cpu", "device_seconds": 2.5,
                                                         "wall_seconds": 3.0})
    submit_job(session, "acme", job_spec)
    rows = {r.slug: r.to_dict() for r in tenant_summary(session)}
    acme = rows["acme"]
    assert acme["name"] == "Acme Research"
    assert acme["jobs"] == {
        "queued": 1, "running": 0, "paused": 0, "succeeded": 2, "failed": 1, "cancelled": 0
    }
    assert (acme["adapters"], acme["adapter_bytes"]) == (2, 2000)
    assert acme["device_seconds"] == pytest.approx(22.5)  # failed attempts cost device time too
    assert (acme["examples"], acme["tokens"]) == (200, 1800)
    assert rows["idle"]["jobs"]["queued"] == 0 and rows["idle"]["device_seconds"] == 0.0
    assert [r.slug for r in tenant_summary(session, tenant="idle")] == ["idle"]


def test_an_adapter_is_loaded_only_while_its_files_match_the_registry(
    session, registry_settings, adapter_files, job_spec
) -> None:
    from lora_engine.adapters.io import adapter_files_digest
    from lora_engine.errors import AdapterError

    create_tenant(session, "acme")
    job = submit_job(session, "acme", job_spec)
    claim_job(session, job.id, "w1", 60)
    adapter_id = new_id()
    path = adapter_files(new_adapter_path(registry_settings, job.tenant_id, adapter_id))
    sha256, size = adapter_files_digest(path)
    record = AdapterRecord(id=adapter_id, path=str(path), sha256=sha256, bytes=size,
                               trainable_params=10, total_params=100)
    finish_job_success(session, job.id, "w1", record, {"validation": {"accuracy": 0.8}})
    assert verified_adapter(session, adapter_id).id == adapter_id
    weights = next(p for p in Path(path).iterdir() if p.suffix == ".safetensors")
    weights.write_bytes(weights.read_bytes()[:-1] + b"\x01")  # one byte changed on disk
    with pytest.raises(AdapterError, match="changed since it was registered"):
        verified_adapter(session, adapter_id)
