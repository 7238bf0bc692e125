"""Worker side on SQLite and PostgreSQL: claim (exclusive, quota, fair share), heartbeat and lease
loss, finishing (adapter + metrics + usage in one go), requeue, and the reconciler."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from orchestrator import errors
from orchestrator.registry import db
from orchestrator.registry.models import Adapter, Job, Metric, Usage, new_id, utcnow
from orchestrator.services.adapters import new_adapter_path
from orchestrator.services.jobs import cancel_job, get_job, job_events, list_jobs, retry_job, submit_job
from orchestrator.services.leases import (
    AdapterRecord,
    claim_job,
    claim_next,
    fail_job,
    finish_job_success,
    heartbeat,
    mark_cancelled,
    record_phase,
    requeue_job,
    unclaimable_reason,
)
from orchestrator.services.reconcile import mark_dispatched, reconcile
from orchestrator.services.tenants import create_tenant, set_tenant_quota

pytest_plugins = ["registry_fixtures"]


def _kinds(session, job_id: str) -> list[str]:
    return [e.kind for e in job_events(session, job_id)]


def _race(make_session, job_ids: list[str], n_threads: int) -> list[str | None]:
    """n_threads claim at the same moment (a barrier), each with its own session/connection;
    thread i claims job_ids[i % len(job_ids)]. Returns the claimed job id (or None) per thread."""
    barrier = threading.Barrier(n_threads)
    results: list[str | None] = [None] * n_threads
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            with make_session(i) as s:
                s.connection()  # check out a connection before the start line
                s.commit()
                barrier.wait(timeout=10)
                job = claim_job(s, job_ids[i % len(job_ids)], f"worker-{i}", 60)
                results[i] = job.id if job is not None else None
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors
    return results


def test_claim_is_exclusive_under_concurrency(session, session_maker, job_spec) -> None:
    create_tenant(session, "acme", max_running=10)
    for _ in range(3):  # a few rounds: a race that loses only sometimes still shows up
        job = submit_job(session, "acme", job_spec)
        results = _race(lambda i: session_maker(), [job.id], n_threads=4)
        assert sum(r is not None for r in results) == 1, results
        claimed = get_job(session, job.id).job
        assert (claimed.state, claimed.attempts) == ("running", 1)
        assert _kinds(session, job.id).count("claimed") == 1


def test_claim_respects_the_tenant_quota_under_concurrency(session, session_maker, job_spec) -> None:
    create_tenant(session, "acme", max_running=1)
    jobs = [submit_job(session, "acme", job_spec).id for _ in range(4)]
    results = _race(lambda i: session_maker(), jobs, n_threads=4)
    assert sum(r is not None for r in results) == 1, results
    assert len(list_jobs(session, tenant="acme", state="running")) == 1
    assert "at its quota (1/1 running)" in unclaimable_reason(session, jobs[results.index(None)])


def test_claim_exclusive_across_engines(session, registry_url, job_spec) -> None:
    """Separate engines (separate pools), as separate worker processes would have."""
    create_tenant(session, "acme", max_running=10)
    job = submit_job(session, "acme", job_spec)
    engines = [db.make_engine(registry_url) for _ in range(3)]
    try:
        from sqlalchemy.orm import Session

        results = _race(lambda i: Session(engines[i], expire_on_commit=False), [job.id], n_threads=3)
    finally:
        for e in engines:
            e.dispose()
    assert sum(r is not None for r in results) == 1, results


def test_claim_sets_the_lease_and_drops_what_is_not_claimable(session, job_spec) -> None:
    create_tenant(session, "acme", max_running=1)
    now = utcnow()
    a, b = submit_job(session, "acme", job_spec), submit_job(session, "acme", job_spec)
    job = claim_job(session, a.id, "w1", 120, now=now)
    assert (job.state, job.lease_owner, job.attempts) == ("running", "w1", 1)
    assert job.lease_expires_at == now + timedelta(seconds=120) and job.started_at == now
    assert claim_job(session, a.id, "w2", 60) is None  # duplicate delivery
    assert claim_job(session, b.id, "w2", 60) is None  # quota 1: b stays queued
    assert get_job(session, b.id).job.state == "queued"
    assert claim_job(session, new_id(), "w2", 60) is None  # unknown id
    fail_job(session, a.id, "w1", "boom")
    assert claim_job(session, b.id, "w2", 60) is not None  # a slot freed up


def test_the_unclaimable_reason_is_the_claims_own_quota_rule(session, job_spec) -> None:
    create_tenant(session, "acme", max_running=1)
    a, b = submit_job(session, "acme", job_spec), submit_job(session, "acme", job_spec)
    assert unclaimable_reason(session, b.id) == f"job {b.id} is queued and claimable"
    claim_job(session, a.id, "w1", 60)
    assert unclaimable_reason(session, b.id) == "tenant acme is at its quota (1/1 running)"
    assert unclaimable_reason(session, a.id) == f"job {a.id} is running"
    set_tenant_quota(session, "acme", max_running=2)  # the rule reads the quota as the claim does
    assert unclaimable_reason(session, b.id) == f"job {b.id} is queued and claimable"
    assert claim_job(session, b.id, "w2", 60) is not None


def test_claim_next_is_fair_across_tenants(session, job_spec) -> None:
    create_tenant(session, "big", max_running=5)
    create_tenant(session, "small", max_running=5)
    big = [submit_job(session, "big", job_spec).id for _ in range(3)]
    small = submit_job(session, "small", job_spec).id
    urgent = submit_job(session, "big", job_spec, priority=9).id
    order = [claim_next(session, f"w{i}", 60).id for i in range(5)]
    # big's urgent job first (both tenants at 0 running, higher priority), then small (0 running),
    # then big's oldest first.
    assert order == [urgent, small, *big]
    assert claim_next(session, "w9", 60) is None


def test_heartbeat_extends_lease_rate_limits_events_and_detects_loss(session, job_spec) -> None:
    create_tenant(session, "acme")
    job = submit_job(session, "acme", job_spec)
    t0 = utcnow()
    claim_job(session, job.id, "w1", 30, now=t0)
    for step in range(1, 5):  # 4 heartbeats within 3 s: only the first writes an event
        at = t0 + timedelta(seconds=step - 1)
        cancel = heartbeat(session, job.id, "w1", step, 10, 1.0 / step, 30, now=at, event_interval_s=5)
        assert cancel is None
    heartbeat(session, job.id, "w1", 8, 10, 0.1, 30, now=t0 + timedelta(seconds=9), event_interval_s=5)
    heartbeat(session, job.id, "w1", 10, 10, 0.05, 30, now=t0 + timedelta(seconds=10), event_interval_s=5)
    progress = [e for e in job_events(session, job.id) if e.kind == "progress"]
    assert [e.data["step"] for e in progress] == [1, 8, 10]  # first, after the interval, last step
    current = get_job(session, job.id).job
    assert (current.progress_step, current.progress_total, current.last_loss) == (10, 10, 0.05)
    assert current.lease_expires_at == t0 + timedelta(seconds=40)
    with pytest.raises(errors.LeaseLost, match="leased to w1"):
        heartbeat(session, job.id, "intruder", 11, 10, 0.1, 30)


def test_phase_events_name_the_work_between_steps(session, job_spec) -> None:
    create_tenant(session, "acme")
    job = submit_job(session, "acme", job_spec)
    claim_job(session, job.id, "w1", 30)
    record_phase(session, job.id, "w1", "evaluating", 5)
    record_phase(session, job.id, "w1", "saving", 5)
    phases = [(e.message, e.data) for e in job_events(session, job.id) if e.kind == "phase"]
    assert phases == [("evaluating at step 5", {"phase": "evaluating", "step": 5}),
                      ("saving the adapter at step 5", {"phase": "saving", "step": 5})]
    with pytest.raises(errors.InvalidInput, match="unknown phase 'napping'; allowed: evaluating, saving"):
        record_phase(session, job.id, "w1", "napping", 5)
    with pytest.raises(errors.LeaseLost):
        record_phase(session, job.id, "intruder", "saving", 5)


def test_finish_records_adapter_metrics_and_usage_atomically(session, registry_settings, job_spec) -> None:
    create_tenant(session, "acme")
    job = submit_job(session, "acme", job_spec)
    claim_job(session, job.id, "w1", 60)
    adapter_id = new_id()
    path = new_adapter_path(registry_settings, job.tenant_id, adapter_id)
    assert path == registry_settings.artifacts / job.tenant_id / adapter_id
    record = AdapterRecord(id=adapter_id, path=str(path), sha256="f" * 64, bytes=1234,
                               trainable_params=1500, total_params=400_000)
    usage = {"device": "cpu", "device_seconds": 12.5, "wall_seconds": 13.0, "peak_memory_bytes": 2**20,
             "examples": 160, "tokens": 5000, "activation_memory_bytes": 2**19, "step_seconds": 0.25}
    with pytest.raises(errors.InvalidInput, match="unknown usage fields"):  # nothing half-written
        finish_job_success(session, job.id, "w1", record, {"validation": {"accuracy": 0.5}}, {"gpus": 1})
    assert session.scalar(select(func.count()).select_from(Adapter)) == 0
    session.commit()
    finish_job_success(session, job.id, "w1", record,
                           {"validation": {"accuracy": 0.875, "loss": 0.31}, "train": {"loss": 0.2}}, usage)
    detail = get_job(session, job.id).to_dict()
    assert detail["state"] == "succeeded" and detail["adapter"]["id"] == adapter_id
    assert detail["adapter"]["path"] == str(path) and detail["adapter"]["task"] == "sst2"
    assert detail["metrics"] == {"train": {"loss": 0.2}, "validation": {"accuracy": 0.875, "loss": 0.31}}
    assert detail["usage"] == [{"attempt": 1, **usage}]
    assert session.scalar(select(func.count()).select_from(Metric)) == 3
    assert _kinds(session, job.id)[-1] == "succeeded"
    with pytest.raises(errors.LeaseLost, match="succeeded"):  # a late duplicate finish writes nothing
        finish_job_success(session, job.id, "w1", record, {})
    assert session.scalar(select(func.count()).select_from(Usage)) == 1


def test_requeue_on_transient_errors_until_attempts_run_out(session, job_spec) -> None:
    create_tenant(session, "acme")
    job = submit_job(session, "acme", job_spec, max_attempts=2)
    claim_job(session, job.id, "w1", 60)
    assert requeue_job(session, job.id, "w1", "worker shutting down", {"device_seconds": 3.0}) == "queued"
    claim_job(session, job.id, "w2", 60)
    assert requeue_job(session, job.id, "w2", "device lost") == "failed"
    final = get_job(session, job.id)
    assert final.job.state == "failed" and "gave up after 2 attempt(s)" in final.job.error
    assert [u.attempt for u in final.usage] == [1]
    assert _kinds(session, job.id) == ["submitted", "claimed", "requeued", "claimed", "failed"]


def test_reconcile_requeues_expired_leases_then_fails_after_max_attempts(session, job_spec) -> None:
    create_tenant(session, "acme")
    job = submit_job(session, "acme", job_spec, max_attempts=2)
    t0 = utcnow()
    claim_job(session, job.id, "dead-worker", 10, now=t0)
    assert reconcile(session, now=t0 + timedelta(seconds=20), lease_grace_s=30).requeued == []  # in grace
    result = reconcile(session, now=t0 + timedelta(seconds=50), lease_grace_s=30)
    assert result.requeued == [job.id] and job.id in result.dispatch
    requeued = get_job(session, job.id).job
    assert (requeued.state, requeued.lease_owner) == ("queued", None)
    with pytest.raises(errors.LeaseLost):  # the dead worker, if it wakes up, must stop
        heartbeat(session, job.id, "dead-worker", 3, 10, 0.1, 10)

    t1 = t0 + timedelta(seconds=100)
    claim_job(session, job.id, "w2", 10, now=t1)
    result = reconcile(session, now=t1 + timedelta(seconds=60), lease_grace_s=30)
    assert result.failed == [job.id] and result.dispatch == []
    failed = get_job(session, job.id).job
    assert failed.state == "failed" and "lease of w2 expired" in failed.error
    assert _kinds(session, job.id)[-1] == "failed"


def test_a_release_uses_no_attempt(session, job_spec) -> None:
    create_tenant(session, "acme")
    job = submit_job(session, "acme", job_spec, max_attempts=1)
    for n in range(1, 4):  # three deploys in a row
        assert claim_job(session, job.id, f"w{n}", 60).attempts == n
        assert requeue_job(session, job.id, f"w{n}", "worker shutting down", {"device_seconds": 1.0},
                               release=True) == "queued"
    assert claim_job(session, job.id, "w4", 60).attempts == 4
    assert requeue_job(session, job.id, "w4", "device lost") == "failed"  # a real failure counts
    final = get_job(session, job.id)
    assert [u.attempt for u in final.usage] == [1, 2, 3]  # one row per attempt, never reused


def test_a_worker_fault_gives_the_attempt_back_and_bills_nothing(session, job_spec) -> None:
    from orchestrator.services.leases import return_job

    create_tenant(session, "acme")
    job = submit_job(session, "acme", job_spec, max_attempts=1)
    for n in range(1, 5):  # more faults than the job has attempts: none of them counts
        assert claim_job(session, job.id, f"w{n}", 60).attempts == 1
        assert return_job(session, job.id, f"w{n}", "data folder /srv/data is missing") == "queued"
        back = get_job(session, job.id)
        assert (back.job.state, back.job.attempts, back.job.max_attempts, back.job.lease_owner) == (
            "queued", 0, 1, None)
        assert back.usage == []
    events = [e for e in job_events(session, job.id) if e.kind == "requeued"]
    assert len(events) == 4 and "data folder /srv/data is missing" in events[0].message
    assert events[-1].data == {"attempt": 0, "released": False, "worker_fault": True, "worker": "w4",
                               "step": None}
    with pytest.raises(errors.LeaseLost):  # only the worker that holds it hands it back
        return_job(session, job.id, "w4", "late")
    assert claim_job(session, job.id, "w5", 60).attempts == 1
    cancel_job(session, job.id)  # a cancel requested meanwhile wins over the hand-back
    assert return_job(session, job.id, "w5", "data folder /srv/data is missing") == "cancelled"


def test_a_cancel_requested_while_the_worker_is_dead_is_obeyed(session, job_spec) -> None:
    create_tenant(session, "acme")
    job = submit_job(session, "acme", job_spec)
    t0 = utcnow()
    claim_job(session, job.id, "dead-worker", 10, now=t0)
    assert cancel_job(session, job.id).state == "running"  # a flag nobody will read
    result = reconcile(session, now=t0 + timedelta(seconds=30), lease_grace_s=5)
    assert result.cancelled == [job.id] and result.dispatch == [] and result.requeued == []
    assert get_job(session, job.id).job.state == "cancelled"
    assert claim_job(session, job.id, "w2", 10) is None  # never revived
    # The same for a transient failure reported by a live worker after the cancel.
    other = submit_job(session, "acme", job_spec)
    claim_job(session, other.id, "w3", 60)
    cancel_job(session, other.id)
    assert requeue_job(session, other.id, "w3", "device lost") == "cancelled"


def test_retry_cancel_retry_keeps_attempts_and_usage_unique(session, job_spec) -> None:
    create_tenant(session, "acme")
    job = submit_job(session, "acme", job_spec)
    for n in range(1, 4):
        assert claim_job(session, job.id, f"w{n}", 60).attempts == n
        cancel_job(session, job.id)
        mark_cancelled(session, job.id, f"w{n}", step=n, usage={"device_seconds": float(n)})
        assert get_job(session, job.id).job.state == "cancelled"
        retry_job(session, job.id)
    assert [u.attempt for u in get_job(session, job.id).usage] == [1, 2, 3]


def test_reconcile_redispatches_queued_jobs_with_backoff(session, job_spec) -> None:
    create_tenant(session, "acme")
    t0 = utcnow()
    job = submit_job(session, "acme", job_spec)
    assert reconcile(session, now=t0 + timedelta(seconds=10), redispatch_after_s=60).dispatch == []
    mark_dispatched(session, [job.id], now=t0)

    def due(seconds: float) -> list[str]:
        return reconcile(session, now=t0 + timedelta(seconds=seconds), redispatch_after_s=60).dispatch

    assert due(90) == []  # one dispatch so far: wait 2 x 60 s
    assert due(130) == [job.id]
    assert due(130 + 200) == []  # two dispatches: wait 4 x 60 s
    assert due(130 + 250) == [job.id]
    never_sent = submit_job(session, "acme", job_spec)  # message lost right after submit
    late = utcnow() + timedelta(seconds=61)
    assert never_sent.id in reconcile(session, now=late, redispatch_after_s=60).dispatch


def _finished_adapter(session, registry_settings, tenant: str, spec: dict) -> str:
    """A succeeded training job of `tenant`; returns its adapter id."""
    job = submit_job(session, tenant, spec)
    claim_job(session, job.id, "w1", 60)
    adapter_id = new_id()
    path = new_adapter_path(registry_settings, job.tenant_id, adapter_id)
    record = AdapterRecord(id=adapter_id, path=str(path), sha256="a" * 64, bytes=10,
                               trainable_params=1, total_params=2)
    finish_job_success(session, job.id, "w1", record, {"validation": {"accuracy": 0.8}})
    return adapter_id


def _claimed_as(session, tenant: str, spec: dict, kind: str, **spec_extra) -> str:
    job = submit_job(session, tenant, spec)
    row = session.get(Job, job.id)
    row.kind, row.spec = kind, {**row.spec, **spec_extra}
    session.commit()
    claim_job(session, job.id, "w1", 60)
    return job.id


def test_metrics_carry_source_and_time_per_job_kind(session, registry_settings, job_spec) -> None:
    create_tenant(session, "acme")
    a1 = _finished_adapter(session, registry_settings, "acme", job_spec)
    a2 = _finished_adapter(session, registry_settings, "acme", job_spec)
    trained = session.scalars(select(Metric).where(Metric.adapter_id == a1)).all()
    assert [(m.source, m.name) for m in trained] == [("job", "accuracy")] and trained[0].created_at.tzinfo

    # The untuned baseline: metrics with no adapter; an adapter handed back is refused whole.
    ev = _claimed_as(session, "acme", job_spec, "evaluate")
    record = AdapterRecord(id=new_id(), path="/x", sha256="0" * 64, bytes=1, trainable_params=1,
                               total_params=1)
    with pytest.raises(errors.InvalidInput, match="makes no adapter"):
        finish_job_success(session, ev, "w1", record, {"validation": {"accuracy": 0.5}})
    assert session.scalar(select(func.count()).select_from(Adapter)) == 2
    finish_job_success(session, ev, "w1", None,
                           {"validation": {"accuracy": 0.5, "majority_class_rate": 0.51}})
    rows = session.scalars(select(Metric).where(Metric.job_id == ev).order_by(Metric.name)).all()
    assert [(m.adapter_id, m.source, m.split, m.name) for m in rows] == [
        (None, "job", "validation", "accuracy"), (None, "job", "validation", "majority_class_rate")]
    detail = get_job(session, ev).to_dict()
    assert detail["kind"] == "evaluate" and detail["adapter"] is None and detail["reevaluated"] == {}

    # A re-evaluation: one job, the same metric names for each adapter it scored.
    re = _claimed_as(session, "acme", job_spec, "reevaluate",
                     adapters=[{"id": a, "task": "sst2", "path": "/x"} for a in (a1, a2)])
    with pytest.raises(errors.InvalidInput, match="not \\['nope'\\]"):
        finish_job_success(session, re, "w1", None, {}, reevaluated={"nope": {"validation": {"x": 1}}})
    scores = {a1: {"validation": {"accuracy": 0.79}}, a2: {"validation": {"accuracy": 0.81}}}
    finish_job_success(session, re, "w1", None, {}, reevaluated=scores)
    detail = get_job(session, re).to_dict()
    assert detail["kind"] == "reevaluate" and detail["reevaluated"] == scores and detail["metrics"] == {}
    sources = session.scalars(select(Metric.source).where(Metric.job_id == re)).all()
    assert sources == ["reevaluation", "reevaluation"]


def test_metrics_unique_per_job_or_per_adapter_of_a_reevaluation(session, job_spec) -> None:
    """The two partial unique indexes: (job, split, name) for a job's own rows, (job, adapter,
    split, name) for re-evaluation rows."""
    create_tenant(session, "acme")
    job = submit_job(session, "acme", job_spec)

    def add(adapter_id, source):
        session.add(Metric(job_id=job.id, adapter_id=adapter_id, tenant_id=job.tenant_id,
                           split="validation", name="accuracy", value=0.5, source=source))
        session.flush()

    add(None, "job")
    with pytest.raises(IntegrityError), session.begin_nested():
        add(None, "job")  # NULL adapters do not escape the job's own uniqueness
    a = session.get(Adapter, _adapter_row(session, job))
    add(a.id, "reevaluation")
    with pytest.raises(IntegrityError), session.begin_nested():
        add(a.id, "reevaluation")
    with pytest.raises(IntegrityError), session.begin_nested():
        add(None, "unknown")  # the source check constraint


def _adapter_row(session, job) -> str:
    row = Adapter(tenant_id=job.tenant_id, path="/x", sha256="0" * 64, bytes=1, trainable_params=1,
                  total_params=1, base_model=job.base_model, task=job.task, method=job.method, rank=job.rank)
    session.add(row)
    session.flush()
    return row.id
