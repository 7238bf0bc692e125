"""The reconciler: no broker redelivery rule is trusted on its own.

Each pass (a periodic task, and `lorafleet reconcile`):
1. running jobs whose lease expired more than `lease_grace_s` ago (the worker died or hung) go
   back to `queued` (event `requeued`), to `failed` once attempts reached max_attempts, or to
   `cancelled` when a cancel was requested meanwhile (a dead worker cannot obey it; the
   reconciler must not revive the job), or `paused` when a pause was requested meanwhile (a
   paused job is never dispatched: only its tenant's resume queues it again);
2. queued jobs that may have lost their message are returned for re-dispatch, and their
   `dispatched_at` / `dispatch_count` recorded. A job is due when its last dispatch (or, never
   dispatched, its submission) is older than `retries.redispatch_wait` (doubling per message):
   a job that waits behind busy workers is re-sent with exponential back-off instead of adding a
   message every pass (extra messages are harmless, the claim drops them, but they pile up).
The caller sends the Celery messages for the returned ids (orchestrator never imports worker),
each on the queue of its job's class, its device count and whether it needs CUDA (`by_class`,
`dispatch.job_class`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import func, select, text, update
from sqlalchemy.orm import Session

from orchestrator.dispatch import JobClass, job_class
from orchestrator.registry import repositories as repo
from orchestrator.registry.models import Job, utcnow
from orchestrator.retries import redispatch_wait
from orchestrator.services._tx import readonly, transactional
from orchestrator.services.events import add_event

# Past its expiry a lease gets this many seconds more before its job is taken back: room for
# clock skew between machines, small against the lease itself.
LEASE_GRACE_S = 5.0
REDISPATCH_AFTER_S = 60.0


@dataclass
class ReconcileResult:
    dispatch: list[str] = field(default_factory=list)  # job ids to send a message for
    requeued: list[str] = field(default_factory=list)  # expired leases returned to the queue
    failed: list[str] = field(default_factory=list)  # expired leases out of attempts
    cancelled: list[str] = field(default_factory=list)  # expired leases of jobs asked to cancel
    paused: list[str] = field(default_factory=list)  # expired leases of jobs asked to pause


def _record_dispatch(job: Job, now: datetime) -> None:
    job.dispatched_at = now
    job.dispatch_count = (job.dispatch_count or 0) + 1


@transactional
def reconcile(
    session: Session,
    now: datetime | None = None,
    *,
    lease_grace_s: float = LEASE_GRACE_S,
    redispatch_after_s: float = REDISPATCH_AFTER_S,
) -> ReconcileResult:
    """One reconciliation pass (see the module doc); returns what to dispatch and what moved."""
    # Here, not at the top: every `job submit` imports this module (for `mark_dispatched`), and
    # the worker's side of the leases is no part of a submit.
    from orchestrator.services.leases import requeue_or_fail

    now = now or utcnow()
    result = ReconcileResult()
    for job in repo.running_with_lease_before(session, now - timedelta(seconds=lease_grace_s)):
        session.refresh(job, with_for_update=True)
        if job.state != "running" or job.lease_expires_at is None or \
                job.lease_expires_at >= now - timedelta(seconds=lease_grace_s):
            continue  # finished or heartbeated meanwhile
        reason = f"lease of {job.lease_owner} expired at {job.lease_expires_at.isoformat()}"
        state = requeue_or_fail(session, job, reason, now)
        if state == "queued":
            _record_dispatch(job, now)
            result.requeued.append(job.id)
            result.dispatch.append(job.id)
        elif state == "cancelled":  # its cancel was requested while its worker was dead
            result.cancelled.append(job.id)
        elif state == "paused":  # likewise its pause: paused from its last checkpoint
            result.paused.append(job.id)
        else:
            result.failed.append(job.id)
    # Never dispatched jobs wait `redispatch_after_s` too: their submitter is about to send.
    cutoff = now - timedelta(seconds=redispatch_after_s)
    for job in repo.queued_not_dispatched_since(session, cutoff):
        if job.id in result.dispatch:
            continue
        last = job.dispatched_at or job.created_at
        wait = redispatch_wait(job.dispatch_count or 0, redispatch_after_s)
        if job.dispatched_at is not None and (now - last).total_seconds() < wait:
            continue
        _record_dispatch(job, now)
        result.dispatch.append(job.id)
        if job.dispatch_count > 1:
            add_event(session, job, "dispatched", f"re-dispatched by the reconciler (#{job.dispatch_count})",
                      {"dispatch_count": job.dispatch_count}, ts=now)
    return result


# Ids per UPDATE of `mark_dispatched`: well under every backend's limit on bound parameters.
DISPATCH_CHUNK = 500


@transactional
def mark_dispatched(session: Session, job_ids: list[str], now: datetime | None = None) -> None:
    """Record that a message was sent for these jobs (call after sending, e.g. after submit):
    what `_record_dispatch` does to one loaded job, as one UPDATE per 500 ids (a submit-batch
    of 1,000 jobs would otherwise load every job again, one query each).
    On PostgreSQL the commit does not wait for its WAL flush: a record lost to a crash only
    makes the reconciler send the jobs' messages again, which costs nothing (a second claim
    finds nothing), and every submit would otherwise wait for a second flush."""
    now = now or utcnow()
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SET LOCAL synchronous_commit TO OFF"))
    for start in range(0, len(job_ids), DISPATCH_CHUNK):
        chunk = list(job_ids[start:start + DISPATCH_CHUNK])
        session.execute(
            update(Job).where(Job.id.in_(chunk), Job.state == "queued")
            .values(dispatched_at=now, dispatch_count=func.coalesce(Job.dispatch_count, 0) + 1))


@readonly
def by_class(session: Session, job_ids: list[str]) -> dict[JobClass, list[str]]:
    """The ids grouped by their jobs' class (`orchestrator.dispatch.job_class`), in order: the
    queue each message goes to (`dispatch.job_queue`). An id without a job (purged) goes with the
    plain class (one device, no CUDA): its message finds nothing to claim wherever it lands."""
    classes: dict[str, JobClass] = {}
    for start in range(0, len(job_ids), DISPATCH_CHUNK):
        chunk = list(job_ids[start:start + DISPATCH_CHUNK])
        rows = session.execute(select(Job.id, Job.devices, Job.quantize).where(Job.id.in_(chunk)))
        classes.update((job_id, job_class(devices, quantize)) for job_id, devices, quantize in rows)
    groups: dict[JobClass, list[str]] = {}
    for job_id in job_ids:
        groups.setdefault(classes.get(job_id, JobClass()), []).append(job_id)
    return groups
