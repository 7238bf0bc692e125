"""Job service on SQLite and PostgreSQL: submit, batch, idempotency, lineage, cancel, retry."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from lora_engine.errors import LoraFleetInputError, SpecError
from lora_engine.spec import validate_spec
from orchestrator import errors
from orchestrator.config import get_settings
from orchestrator.errors import QuotaExceeded
from orchestrator.registry.models import Job, JobEvent, new_id
from orchestrator.retries import Abort
from orchestrator.services.adapters import new_adapter_path
from orchestrator.services.jobs import (
    cancel_job,
    get_job,
    job_events,
    list_jobs,
    retry_job,
    submit_batch,
    submit_job,
)
from orchestrator.services.leases import (
    AdapterRecord,
    claim_job,
    fail_job,
    finish_job_success,
    heartbeat,
    mark_cancelled,
)
from orchestrator.services.tenants import create_tenant, get_tenant, list_tenants, set_tenant_quota

pytest_plugins = ["registry_fixtures"]
SPEC = {"task": "sst2", "method": "lora", "rank": 4, "base_model": "tiny-bert", "max_steps": 5}


def _count(session, model) -> int:
    n = session.scalar(select(func.count()).select_from(model))
    session.commit()
    return n


def _kinds(session, job_id: str) -> list[str]:
    return [e.kind for e in job_events(session, job_id)]


@pytest.mark.parametrize("slug", ["a", "acme", "acme-research-2", "0x", "a" * 40])
def test_valid_tenant_slugs(session, slug) -> None:
    t = create_tenant(session, slug, name="Acme", max_running=3)
    assert (get_tenant(session, slug).id, t.max_running) == (t.id, 3)


@pytest.mark.parametrize("slug", ["", "Acme", "a_b", "-lead", "a" * 41, "héllo", "a b", "../x"])
def test_invalid_tenant_slugs_are_refused_with_the_rule(session, slug) -> None:
    with pytest.raises(errors.InvalidInput, match="lowercase letters, digits and dashes"):
        create_tenant(session, slug)
    assert list_tenants(session) == []


def test_tenant_errors(session) -> None:
    create_tenant(session, "acme")
    with pytest.raises(errors.Conflict, match="already exists"):
        create_tenant(session, "acme")
    with pytest.raises(errors.NotFound, match="no tenant 'nobody'"):
        get_tenant(session, "nobody")
    with pytest.raises(errors.InvalidInput, match="max_running"):
        create_tenant(session, "neg", max_running=-1)
    assert [t.slug for t in list_tenants(session)] == ["acme"]


def test_submit_resolves_the_auto_budget_from_the_data(session) -> None:
    from lora_engine.budget import describe

    create_tenant(session, "acme")
    job = submit_job(session, "acme", {"task": "rte", "base_model": "tiny-bert"})
    # RTE's 2240 training rows: 224 held out, 2016 trained in batches of 16 for 6 epochs, scored
    # every epoch (126 steps), stop after 3 evaluations without gain.
    keys = ("epochs", "batch_size", "lr", "eval_every", "eval_holdout", "patience")
    picked = {k: job.spec[k] for k in keys}
    assert picked == {"epochs": 6.0, "batch_size": 16, "lr": 1e-3, "eval_every": 126, "eval_holdout": 224,
                      "patience": 3}
    shown = describe(get_job(session, job.id).to_dict()["spec"])
    assert shown.startswith("6 epochs · batch 16 · lr 0.001") and shown.endswith("cls pooling")
    # The classifier's pooling is resolved at the door too: MiniLM-L6's own (mean), or as given.
    minilm = submit_job(session, "acme", {"task": "rte"})
    assert minilm.spec["pooling"] == "mean" and job.spec["pooling"] == "cls"
    given = submit_job(session, "acme", {"task": "rte", "pooling": "cls"})
    assert given.spec["pooling"] == "cls"


def test_submit_writes_job_and_event_with_resolved_spec(session) -> None:
    create_tenant(session, "acme")
    job = submit_job(session, "acme", SPEC, priority=5)
    assert (job.state, job.task, job.method, job.rank, job.base_model, job.priority, job.attempts) == (
        "queued", "sst2", "lora", 4, "tiny-bert", 5, 0)
    assert job.spec["alpha"] == 8.0 and job.spec["max_steps"] == 5  # task defaults filled in
    # The stored spec is resolved from the training file too (6227 SST-2 rows: batch 32, and an
    # explicit max_steps budget: no evaluation during training): the worker re-resolves nothing.
    assert (job.spec["batch_size"], job.spec["eval_every"], job.spec["patience"]) == (32, 0, 0)
    stored = validate_spec(job.spec)
    assert not stored.needs_train_rows and stored.resolved() == validate_spec(SPEC).resolved(train_rows=6227)
    assert _kinds(session, job.id) == ["submitted"]
    detail = get_job(session, job.id).to_dict()
    assert (detail["state"], detail["tenant"], detail["adapter"]) == ("queued", "acme", None)
    assert detail["metrics"] == {} and detail["attempts"] == 0


def test_method_none_queues_an_untuned_evaluation(session) -> None:
    create_tenant(session, "acme")
    job = submit_job(session, "acme", {"task": "sst2", "method": "none", "base_model": "tiny-bert"})
    assert (job.kind, job.method, job.rank, job.state) == ("evaluate", "none", 0, "queued")
    assert (job.spec["rank"], job.spec["max_length"], job.spec["seed"]) == (0, 128, 42)
    assert not {"lr", "epochs", "alpha", "targets", "warmup_ratio"} & set(job.spec)  # nothing to train
    assert get_job(session, job.id).to_dict()["kind"] == "evaluate"
    assert "untuned baseline" in job_events(session, job.id)[0].message
    assert submit_job(session, "acme", SPEC).kind == "train"


def test_bad_spec_writes_nothing_and_lists_every_problem(session) -> None:
    create_tenant(session, "acme")
    with pytest.raises(SpecError) as err:
        submit_job(session, "acme", {"task": "nope", "rank": 0, "lr": -1})
    assert len(err.value.problems) >= 3
    assert _count(session, Job) == 0 and _count(session, JobEvent) == 0
    with pytest.raises(errors.NotFound):
        submit_job(session, "ghost", SPEC)
    with pytest.raises(LoraFleetInputError, match="priority"):
        submit_job(session, "acme", SPEC, priority=10**6)
    assert _count(session, Job) == 0


def test_idempotency_key_returns_the_existing_job(session) -> None:
    create_tenant(session, "acme")
    create_tenant(session, "other")
    first = submit_job(session, "acme", SPEC, idempotency_key="k1")
    again = submit_job(session, "acme", SPEC, idempotency_key="k1")
    assert again.id == first.id and _count(session, Job) == 1
    assert submit_job(session, "other", SPEC, idempotency_key="k1").id != first.id  # keys are per tenant
    with pytest.raises(errors.Conflict, match="different spec"):
        submit_job(session, "acme", {**SPEC, "rank": 8}, idempotency_key="k1")
    assert _count(session, Job) == 2


def test_an_idempotency_key_matches_a_job_stored_before_the_spec_gained_fields(session) -> None:
    create_tenant(session, "acme")
    first = submit_job(session, "acme", SPEC, idempotency_key="k1")
    job = session.get(Job, first.id)
    added_later = ("devices", "gradient_checkpointing")
    assert all(k in job.spec for k in added_later)
    job.spec = {k: v for k, v in job.spec.items() if k not in added_later}  # as an older release stored it
    session.commit()
    assert submit_job(session, "acme", SPEC, idempotency_key="k1").id == first.id
    with pytest.raises(errors.Conflict, match="different spec"):
        submit_job(session, "acme", {**SPEC, "devices": 2}, idempotency_key="k1")
    assert _count(session, Job) == 1


def test_batch_is_all_or_nothing_with_per_item_problems(session) -> None:
    create_tenant(session, "acme")
    good = [{"tenant": "acme", "spec": {**SPEC, "task": t}} for t in ("sst2", "mrpc", "rte")]
    bad = [*good, {"tenant": "acme", "task": "cola", "rank": -2}, {"tenant": "ghost", "spec": SPEC}, "x"]
    with pytest.raises(errors.BatchError) as err:
        submit_batch(session, bad)
    assert sorted(err.value.problems) == [3, 4, 5]
    assert any("rank" in p for p in err.value.problems[3])
    assert "no tenant 'ghost'" in err.value.problems[4][0]
    assert _count(session, Job) == 0

    jobs = submit_batch(session, [*good, {"tenant": "acme", "task": "cola", "rank": 2, "max_steps": 3,
                                              "base_model": "tiny-bert", "priority": 2}])
    assert [j.task for j in jobs] == ["sst2", "mrpc", "rte", "cola"] and jobs[3].priority == 2
    assert _count(session, Job) == 4 and _count(session, JobEvent) == 4
    with pytest.raises(errors.BatchError, match="repeats item 0"):
        submit_batch(session, [{"tenant": "acme", "spec": SPEC, "idempotency_key": "x"}] * 2)


def _finished_adapter(session, settings, adapter_files, tenant: str, spec=SPEC):
    """A job run to success by hand (claim + finish) with adapter files on disk."""
    job = submit_job(session, tenant, spec)
    assert claim_job(session, job.id, "w1", 60) is not None
    adapter_id = new_id()
    path = adapter_files(new_adapter_path(settings, job.tenant_id, adapter_id))
    record = AdapterRecord(id=adapter_id, path=str(path), sha256="ab" * 32, bytes=64,
                               trainable_params=100, total_params=1000)
    return finish_job_success(session, job.id, "w1", record, {"validation": {"accuracy": 0.9}})


def test_init_from_records_lineage_and_checks_compatibility(
    session, registry_settings, adapter_files
) -> None:
    create_tenant(session, "acme")
    create_tenant(session, "other")
    mnli = _finished_adapter(session, registry_settings, adapter_files, "acme", {**SPEC, "task": "mnli"})
    child = submit_job(session, "acme", {"task": "mrpc", "rank": 4, "max_steps": 5},
                           init_from_adapter_id=mnli.id)
    assert child.init_from_adapter_id == mnli.id
    assert child.spec["init_from"] == mnli.id and child.base_model == "tiny-bert"  # by id; inherited base
    with pytest.raises(errors.NotFound, match="for tenant 'other'"):  # another tenant's adapter
        submit_job(session, "other", {**SPEC, "task": "mrpc"}, init_from_adapter_id=mnli.id)
    with pytest.raises(SpecError, match="base model"):
        submit_job(session, "acme", {**SPEC, "base_model": "tiny-roberta"}, init_from_adapter_id=mnli.id)
    with pytest.raises(SpecError, match="regression"):
        submit_job(session, "acme", {**SPEC, "task": "stsb"}, init_from_adapter_id=mnli.id)

    assert claim_job(session, child.id, "w2", 60) is not None
    record = AdapterRecord(id=new_id(), path="/x", sha256="0" * 64, bytes=1, trainable_params=1,
                               total_params=2)
    child_adapter = finish_job_success(session, child.id, "w2", record, {})
    assert child_adapter.parent_adapter_id == mnli.id


def test_cancel_queued_is_immediate_running_sets_the_flag(session) -> None:
    create_tenant(session, "acme")
    queued = submit_job(session, "acme", SPEC)
    assert cancel_job(session, queued.id).state == "cancelled"
    assert claim_job(session, queued.id, "w1", 60) is None  # a late message finds nothing
    running = submit_job(session, "acme", SPEC)
    claim_job(session, running.id, "w1", 60)
    job = cancel_job(session, running.id)
    assert (job.state, job.cancel_requested) == ("running", True)
    cancel_job(session, running.id)  # twice: no second event
    assert _kinds(session, running.id) == ["submitted", "claimed", "cancel_requested"]
    assert heartbeat(session, running.id, "w1", 1, 5, 0.5, 60) is Abort.CANCEL  # the worker learns it
    assert mark_cancelled(session, running.id, "w1", step=1).state == "cancelled"
    with pytest.raises(errors.InvalidState, match="already cancelled"):
        cancel_job(session, running.id)


def test_retry_failed_or_cancelled_keeps_counting_attempts(session) -> None:
    create_tenant(session, "acme")
    job = submit_job(session, "acme", SPEC)
    with pytest.raises(errors.InvalidState, match="only failed or cancelled"):
        retry_job(session, job.id)
    claim_job(session, job.id, "w1", 60)
    fail_job(session, job.id, "w1", "bad data: line 3")
    retried = retry_job(session, job.id)
    # A fresh budget on top of the attempt made: the next claim is attempt 2 (its own usage row).
    assert (retried.state, retried.attempts, retried.error, retried.lease_owner) == ("queued", 1, None, None)
    assert retried.max_attempts == 1 + get_settings().max_attempts
    assert _kinds(session, job.id)[-2:] == ["failed", "retried"]
    assert claim_job(session, job.id, "w2", 60).attempts == 2


def test_retry_is_refused_at_the_queued_quota_and_changes_nothing(session) -> None:
    create_tenant(session, "acme")
    set_tenant_quota(session, "acme", max_queued=1)
    failed = submit_job(session, "acme", SPEC)
    claim_job(session, failed.id, "w1", 60)
    fail_job(session, failed.id, "w1", "bad data: line 3")
    waiting = submit_job(session, "acme", {**SPEC, "seed": 2})
    with pytest.raises(QuotaExceeded, match=r"may have 1 queued job\(s\); it has 1 and this adds 1"):
        retry_job(session, failed.id)
    job = get_job(session, failed.id).job
    assert (job.state, job.attempts, job.error) == ("failed", 1, "bad data: line 3")
    assert _kinds(session, failed.id)[-1] == "failed"
    cancel_job(session, waiting.id)  # room again: the same retry is accepted
    assert retry_job(session, failed.id).state == "queued"


def _race(session_maker, n: int, call) -> tuple[list, list[BaseException]]:
    """`call(session, i)` from `n` threads at once, each on its own session (connection)."""
    import threading

    barrier = threading.Barrier(n)
    results: list = []
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            with session_maker() as s:
                barrier.wait(timeout=10)
                results.append(call(s, i))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results, errors


def test_concurrent_submits_and_retries_stop_exactly_at_the_queued_quota(session, session_maker) -> None:
    create_tenant(session, "acme")
    set_tenant_quota(session, "acme", max_queued=3)
    ids, errors = _race(session_maker, 8, lambda s, i: submit_job(s, "acme", {**SPEC, "seed": i}).id)
    assert len(ids) == 3 and len(errors) == 5, errors
    assert all(isinstance(e, QuotaExceeded) and "may have 3 queued job(s)" in str(e) for e in errors), errors
    assert sorted(j.id for j in list_jobs(session, tenant="acme", state="queued")) == sorted(ids)
    # Two running, one queued: two retries and two batch submissions race for the two free places.
    for job_id in ids[:2]:
        claim_job(session, job_id, "w1", 60)
        fail_job(session, job_id, "w1", "bad data")
    calls = [lambda s, i, j=job_id: retry_job(s, j).id for job_id in ids[:2]]
    batch = [{"tenant": "acme", **SPEC, "seed": 10}]
    calls += [lambda s, i: [j.id for j in submit_batch(s, batch)]] * 2
    done, errors = _race(session_maker, 4, lambda s, i: calls[i](s, i))
    assert len(done) == 2 and len(errors) == 2, errors
    assert all(isinstance(e, QuotaExceeded) for e in errors), errors
    assert len(list_jobs(session, tenant="acme", state="queued")) == 3


def test_lookups_are_scoped_to_the_tenant(session) -> None:
    create_tenant(session, "acme")
    create_tenant(session, "other")
    job = submit_job(session, "acme", SPEC)
    assert get_job(session, job.id, tenant="acme").job.id == job.id
    with pytest.raises(errors.NotFound):
        get_job(session, job.id, tenant="other")
    with pytest.raises(errors.NotFound):
        cancel_job(session, job.id, tenant="other")
    with pytest.raises(errors.NotFound):
        job_events(session, job.id, tenant="other")
    assert list_jobs(session, tenant="other") == []
    assert [j.id for j in list_jobs(session, tenant="acme", state="queued")] == [job.id]
    with pytest.raises(errors.InvalidInput, match="allowed: queued"):
        list_jobs(session, state="done")
    assert get_job(session, job.id).job.state == "queued"


def test_events_page_after_id(session) -> None:
    create_tenant(session, "acme")
    job = submit_job(session, "acme", SPEC)
    first = job_events(session, job.id)
    claim_job(session, job.id, "w1", 60)
    newer = job_events(session, job.id, after_id=first[-1].id)
    assert [e.kind for e in newer] == ["claimed"]


def test_concurrent_submits_with_one_idempotency_key_make_one_job(session, session_maker) -> None:
    import threading

    create_tenant(session, "acme")
    barrier = threading.Barrier(3)
    ids: list[str] = []
    errors: list[BaseException] = []

    def submit() -> None:
        try:
            with session_maker() as s:
                barrier.wait(timeout=10)
                ids.append(submit_job(s, "acme", SPEC, idempotency_key="same").id)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=submit) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors and len(ids) == 3 and len(set(ids)) == 1, (errors, ids)
    assert _count(session, Job) == 1 and _count(session, JobEvent) == 1
