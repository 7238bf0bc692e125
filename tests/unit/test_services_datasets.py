"""Tenants' data at the door, on SQLite and PostgreSQL: data sets stored by id and checked by hash,
paths confined to the data roots, quotas, and fair share between tenants at the claim."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select

from lora_engine.errors import DataValidationError, SpecError
from orchestrator import errors
from orchestrator.config import get_settings
from orchestrator.errors import QuotaExceeded
from orchestrator.registry.models import Dataset, Job, Usage, new_id, utcnow
from orchestrator.services.adapters import delete_adapter, get_adapter, new_adapter_path
from orchestrator.services.datasets import (
    dataset_dir,
    dataset_for_training,
    delete_dataset,
    get_dataset,
    list_datasets,
    upload_dataset,
)
from orchestrator.services.jobs import cancel_job, get_job, job_events, plan_job, submit_batch, submit_job
from orchestrator.services.leases import AdapterRecord, claim_job, claim_next, fail_job, finish_job_success
from orchestrator.services.pausing import pause_job
from orchestrator.services.quotas import month_start, tenant_quota_usage
from orchestrator.services.tenants import create_tenant, get_tenant, set_tenant_quota

pytest_plugins = ["registry_fixtures"]
SPEC = {"task": "sst2", "rank": 4, "base_model": "tiny-bert", "max_steps": 5}


@pytest.fixture
def roots(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A data root (tmp_path/data) and an artifacts root beside it, in the process settings."""
    data = tmp_path / "data"
    data.mkdir()
    monkeypatch.setenv("LORAFLEET_DATA_ROOTS", str(data))
    monkeypatch.setenv("LORAFLEET_ARTIFACTS", str(tmp_path / "artifacts"))
    get_settings.cache_clear()
    yield data
    get_settings.cache_clear()


def rows_file(path: Path, n: int = 12, dup: int = 0) -> Path:
    rows = [{"text": f"row {i} is {'good' if i % 2 else 'bad'}", "label": i % 2} for i in range(n)]
    rows += rows[:dup]
    path.write_bytes("\ufeff".encode() + b"".join((json.dumps(r) + "\r\n").encode() for r in rows))
    return path


def _count(session, model) -> int:
    n = session.scalar(select(func.count()).select_from(model))
    session.commit()
    return n


def test_upload_stores_the_exact_bytes_by_id_and_profiles_them(session, roots: Path) -> None:
    create_tenant(session, "acme")
    source = rows_file(roots / "d.jsonl", n=12, dup=2)  # BOM and CRLF: handled
    ds = upload_dataset(session, "acme", source, "classification")
    stored = dataset_dir(get_settings(), ds.tenant_id, ds.id) / "data.jsonl"
    assert stored.read_bytes() == source.read_bytes()
    assert (ds.rows, ds.duplicate_rows, ds.label_counts) == (14, 2, {"0": 7, "1": 7})
    assert ds.bytes == source.stat().st_size
    assert ds.token_estimate > 0 and len(ds.sha256) == 64
    again = upload_dataset(session, "acme", source, "classification")
    assert again.id == ds.id and _count(session, Dataset) == 1  # same bytes: nothing new stored
    assert [d.id for d in list_datasets(session, tenant="acme")] == [ds.id]


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (b"", "file: empty: no rows"),
        (b'{"text": "a", "label": 0}\n{"text": "b", "label": "x"}\n{"text": "c", "label": 0}\n',
         "line 2: label is a str"),
        (b'{"text": "a", "label": 0}\n{"text": "b", "label": 0}\n{"text": "c", "label": 1}\n',
         "line 3: the label on this line has 1 row(s)"),
        (b'{"text": "top secret", "label": 0}\nnot json at all secret\n', "line 2: not valid JSON"),
        (b'{"txt": "secret", "label": 0}\n', "line 1: unknown field(s) 'txt'"),
    ],
)
def test_a_bad_upload_names_lines_and_reasons_never_content_and_writes_nothing(
    session, roots: Path, content: bytes, needle: str
) -> None:
    create_tenant(session, "acme")
    (roots / "bad.jsonl").write_bytes(content)
    with pytest.raises(DataValidationError) as info:
        upload_dataset(session, "acme", roots / "bad.jsonl", "classification")
    assert needle in str(info.value) and "secret" not in str(info.value).replace("'txt'", "")
    assert _count(session, Dataset) == 0
    assert not (get_settings().artifacts).exists() or not any(get_settings().artifacts.rglob("*.jsonl"))


def test_paths_are_confined_to_the_data_roots(session, roots: Path, tmp_path: Path) -> None:
    create_tenant(session, "acme")
    outside = rows_file(tmp_path / "outside.jsonl")
    (roots / "link.jsonl").symlink_to(outside)
    (roots / "sub").mkdir()
    for path, needle in [
        ("/etc/passwd", "outside the allowed data roots"),
        (str(outside), "outside the allowed data roots"),
        (str(roots / "link.jsonl"), "outside the allowed data roots (a symlink"),
        (str(roots / "sub" / ".." / ".." / "outside.jsonl"), "contains '..'"),
    ]:
        with pytest.raises(errors.InvalidInput, match="allowed data roots") as info:
            upload_dataset(session, "acme", path, "classification")
        assert needle in str(info.value) and str(roots) in str(info.value)
        with pytest.raises(errors.InvalidInput, match=needle.split(" (")[0]):
            submit_job(session, "acme", {"task": "custom-classification", "dataset": path})
    assert _count(session, Job) == 0 and _count(session, Dataset) == 0


def test_a_job_names_its_data_set_by_id_and_the_worker_checks_the_hash(session, roots: Path) -> None:
    create_tenant(session, "acme")
    create_tenant(session, "globex")
    spec = {"task": "custom-classification", "base_model": "tiny-bert", "max_steps": 2}
    job = submit_job(session, "acme", {**spec, "dataset": str(rows_file(roots / "d.jsonl"))})
    assert job.dataset_id is not None and job.spec["dataset"] == job.dataset_id  # uploaded first
    again = submit_job(session, "acme", {**spec, "dataset": job.dataset_id[:8]})  # as listed
    assert again.dataset_id == job.dataset_id and again.spec["dataset"] == job.dataset_id
    assert get_dataset(session, job.dataset_id[:8]).id == job.dataset_id
    with pytest.raises(errors.NotFound, match="for tenant 'globex'"):  # another tenant's id: not found
        submit_job(session, "globex", {**spec, "dataset": job.dataset_id})
    with pytest.raises(errors.NotFound, match="for tenant 'globex'"):  # nor its prefix (spelled as an id)
        submit_job(session, "globex", {**spec, "dataset": job.dataset_id[:8]})
    with pytest.raises(SpecError, match="holds classification rows"):
        submit_job(session, "acme", {"task": "custom-generation", "base_model": "tiny-llama",
                                         "dataset": job.dataset_id})

    path = dataset_for_training(session, job.spec["dataset"], job.tenant_id)  # the worker's look-up
    assert path == dataset_dir(get_settings(), job.tenant_id, job.dataset_id) / "data.jsonl"
    with pytest.raises(DataValidationError, match="not this tenant's"):
        dataset_for_training(session, job.dataset_id, get_tenant(session, "globex").id)
    path.write_bytes(path.read_bytes() + b'{"text": "sneaked in", "label": 1}\n')
    with pytest.raises(DataValidationError, match="no longer matches the sha256"):
        dataset_for_training(session, job.dataset_id, job.tenant_id)

    with pytest.raises(errors.InvalidState, match="used by 2 queued, running or paused"):
        delete_dataset(session, job.dataset_id)
    cancel_job(session, again.id)
    pause_job(session, job.id)  # a paused job runs again later: its data must stay
    with pytest.raises(errors.InvalidState, match="used by 1 queued, running or paused"):
        delete_dataset(session, job.dataset_id)
    cancel_job(session, job.id)
    delete_dataset(session, job.dataset_id, tenant="acme")
    assert not path.parent.exists()
    with pytest.raises(errors.NotFound):
        get_dataset(session, job.dataset_id)


def test_a_failed_submission_leaves_no_uploaded_file_behind(session, roots: Path) -> None:
    create_tenant(session, "acme")
    data = str(rows_file(roots / "d.jsonl"))
    items = [{"tenant": "acme", "task": "custom-classification", "dataset": data, "base_model": "tiny-bert"},
             {"tenant": "acme", "task": "sst2", "lr": float("nan")}]
    with pytest.raises(errors.BatchError, match="item 1: lr: must be a finite number"):
        submit_batch(session, items)
    assert _count(session, Dataset) == 0 and _count(session, Job) == 0
    assert not list(get_settings().artifacts.rglob("data.jsonl"))


def test_no_spec_path_may_point_into_the_artifacts_root(session, roots: Path, monkeypatch) -> None:
    # Another tenant's full fine-tune folder or adapter folder, reached by path: refused.
    monkeypatch.setenv("LORAFLEET_DATA_ROOTS", f"{roots}:{get_settings().artifacts.parent}")
    get_settings.cache_clear()
    create_tenant(session, "acme")
    theirs = get_settings().artifacts / "other-tenant" / "some-adapter"
    theirs.mkdir(parents=True)
    (theirs / "config.json").write_text('{"model_type": "bert"}')
    (theirs / "adapter_config.json").write_text("{}")
    for field in ("base_model", "init_from"):
        with pytest.raises(errors.InvalidInput, match="points into the artifacts root"):
            submit_job(session, "acme", {**SPEC, field: str(theirs)})
    assert _count(session, Job) == 0


def test_queued_storage_and_monthly_budget_quotas(session, roots: Path) -> None:
    create_tenant(session, "acme")
    set_tenant_quota(session, "acme", max_queued=2)
    submit_job(session, "acme", SPEC)
    with pytest.raises(QuotaExceeded, match="may have 2 queued job"):
        submit_batch(session, [{"tenant": "acme", **SPEC}] * 2)
    submit_job(session, "acme", SPEC)
    with pytest.raises(QuotaExceeded, match="it has 2 and this adds 1"):
        submit_job(session, "acme", SPEC)

    set_tenant_quota(session, "acme", max_queued=100, max_storage_bytes=10)
    with pytest.raises(QuotaExceeded, match="may store 10 bytes"):
        upload_dataset(session, "acme", rows_file(roots / "d.jsonl"), "classification")
    set_tenant_quota(session, "acme", max_storage_bytes=None)
    upload_dataset(session, "acme", roots / "d.jsonl", "classification")
    set_tenant_quota(session, "acme", max_storage_bytes=10)  # now over it: no new jobs either
    with pytest.raises(QuotaExceeded, match="a new job's adapter needs room"):
        submit_job(session, "acme", SPEC)

    # 1 device-hour a month; 3000 s used this month (and 1e6 s last month, which does not count).
    set_tenant_quota(session, "acme", device_hours_per_month=1.0, max_storage_bytes=None)
    tenant = get_tenant(session, "acme")
    done = session.scalars(select(Job).where(Job.tenant_id == tenant.id)).first()
    now = utcnow()
    spent = [(3000.0, now), (1e6, month_start(now) - timedelta(days=1))]
    for attempt, (seconds, when) in enumerate(spent, 1):
        session.add(Usage(job_id=done.id, tenant_id=tenant.id, attempt=attempt, device="cpu",
                          device_seconds=seconds, wall_seconds=seconds, examples=int(seconds) * 10, tokens=0,
                          created_at=when))
    session.commit()
    # Measured throughput on tiny-bert: 10 examples/s over both attempts. 5 steps × 32 = 160
    # examples ≈ 16 s fits in the 600 s left; 100 steps × 32 × 4 = 12800 examples ≈ 1280 s does not.
    submit_job(session, "acme", SPEC)
    with pytest.raises(QuotaExceeded, match=r"0\.8333 h are used this month, 0\.1667 h left") as info:
        submit_job(session, "acme", {**SPEC, "max_steps": 100, "grad_accum": 4})
    assert "estimated at 0.3556 h" in str(info.value)
    usage = tenant_quota_usage(session, "acme")
    assert (usage.queued, usage.max_queued, round(usage.device_hours_this_month, 4)) == (3, 100, 0.8333)


def test_a_finishing_adapter_past_the_storage_quota_is_kept_and_closes_the_door(session, roots: Path) -> None:
    """Running jobs are never killed for a quota: the adapter that pushes the tenant over its
    storage quota is registered (the work is done), the tenant shows over quota, and new jobs,
    dry runs and uploads are refused with the figures and what to delete, until it is deleted."""
    settings = get_settings()
    create_tenant(session, "acme")
    data = upload_dataset(session, "acme", rows_file(roots / "d.jsonl"), "classification")
    set_tenant_quota(session, "acme", max_storage_bytes=data.bytes + 100)
    job = submit_job(session, "acme", SPEC)  # 100 bytes left: room for a job
    claim_job(session, job.id, "w1", 60)
    adapter_id = new_id()
    path = new_adapter_path(settings, job.tenant_id, adapter_id)
    record = AdapterRecord(id=adapter_id, path=str(path), sha256="a" * 64, bytes=5000,
                               trainable_params=1, total_params=2)
    row = finish_job_success(session, job.id, "w1", record, {"validation": {"accuracy": 0.8}})
    assert row.id == adapter_id

    assert get_job(session, job.id).job.state == "succeeded"
    assert get_adapter(session, adapter_id).deleted_at is None  # kept, past the quota
    done = job_events(session, job.id)[-1]
    assert done.kind == "succeeded" and done.data["storage_over_quota"] is True
    assert "over its storage quota" in done.message
    usage = tenant_quota_usage(session, "acme")
    assert usage.storage_over_quota and usage.storage_bytes == data.bytes + 5000
    assert usage.to_dict()["storage_over_quota"] is True

    used, limit = data.bytes + 5000, data.bytes + 100
    with pytest.raises(QuotaExceeded) as refused:
        submit_job(session, "acme", {**SPEC, "seed": 1})
    message = str(refused.value)
    assert f"may store {limit} bytes" in message and f"{used} are used" in message
    assert f"largest: adapter {adapter_id[:8]} (5000 bytes), data set {data.id[:8]}" in message
    with pytest.raises(QuotaExceeded, match=f"{used} are used"):
        plan_job(session, "acme", {**SPEC, "seed": 1})
    with pytest.raises(QuotaExceeded, match=f"{used} are used and this adds"):
        upload_dataset(session, "acme", rows_file(roots / "e.jsonl", n=14), "classification")
    assert _count(session, Job) == 1 and _count(session, Dataset) == 1  # nothing written

    delete_adapter(session, adapter_id)  # back within the quota: the door opens again
    assert not tenant_quota_usage(session, "acme").storage_over_quota
    assert submit_job(session, "acme", {**SPEC, "seed": 1}).state == "queued"


def test_fair_share_b_starts_within_a_few_claims_after_a_queued_200(session) -> None:
    create_tenant(session, "a", max_running=2)
    create_tenant(session, "b", max_running=2)
    submit_batch(session, [{"tenant": "a", **SPEC} for _ in range(200)])
    submit_batch(session, [{"tenant": "b", **SPEC} for _ in range(5)])
    b_id = get_tenant(session, "b").id
    order = []
    for _ in range(12):  # one worker: each job ends before the next claim (both tenants at 0 running)
        job = claim_next(session, "w1", lease_seconds=60)
        order.append("b" if job.tenant_id == b_id else "a")
        fail_job(session, job.id, "w1", "test: done")
    # Served in turn: B's 5 jobs are among the first 10 claims, not after A's 200.
    assert order[:10] == ["a", "b"] * 5
    # With jobs left running, the tenant running fewer goes first, within each tenant's quota.
    running = [claim_next(session, f"w{i}", lease_seconds=60) for i in range(3)]
    assert [j.tenant_id == b_id for j in running if j is not None].count(True) == 0  # b has none left
    assert sum(j is not None for j in running) == 2  # a's quota of 2 running


def test_a_validation_file_is_stored_beside_the_data_and_checked_too(session, roots: Path) -> None:
    create_tenant(session, "acme")
    train = rows_file(roots / "train.jsonl", n=10)
    val = roots / "val.jsonl"
    val.write_text('{"text": "held out", "label": 1}\n')
    ds = upload_dataset(session, "acme", train, "classification", validation=val)
    folder = dataset_dir(get_settings(), ds.tenant_id, ds.id)
    assert (folder / "data.validation.jsonl").read_bytes() == val.read_bytes()
    assert ds.validation_rows == 1 and ds.validation_sha256 is not None
    (roots / "val-names.jsonl").write_text('{"text": "held out", "label": "pos"}\n')
    with pytest.raises(DataValidationError, match="label type differs"):
        upload_dataset(session, "acme", train, "classification", validation=roots / "val-names.jsonl")
    assert _count(session, Dataset) == 1
