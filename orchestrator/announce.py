"""Sending job messages and recording that they were sent: after commit, re-dispatch, reconcile.

`orchestrator.dispatch.send_run_jobs` is the one function that puts a message on the broker;
here it is told each job's queue (its class, `services.reconcile.by_class`, read in the
session that records the dispatch) and paired with the registry's record of the dispatch, which
the reconciler reads to re-send for queued jobs whose message may be lost (when:
`orchestrator.retries.redispatch_wait`).
A crash between sending and recording is harmless: a second message finds nothing to claim.

Services record the jobs to send in their transaction (`orchestrator.services.enqueue`); an edge
that opens sessions (the CLI, the worker, quickstart) opens them with `sending_session`, which
sends what committed once the session is done. Nothing else announces.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from orchestrator.config import Settings, get_settings
from orchestrator.dispatch import JobClass, send_run_jobs

if TYPE_CHECKING:
    from sqlalchemy.orm import Session


def announce_jobs(
    job_ids: list[str], *, settings: Settings | None = None, countdown: float | None = None
) -> None:
    """Send a message per queued job (after the jobs were committed), each on the queue of its
    class (device count, CUDA), and record the dispatch."""
    from orchestrator.registry.db import session_scope
    from orchestrator.services.reconcile import by_class, mark_dispatched

    settings = settings or get_settings()
    if not job_ids:
        return
    with session_scope(settings) as session:
        # Sent before the record: a crash in between costs a second message, never a lost one.
        send_by_class(by_class(session, list(job_ids)), settings, countdown)
        mark_dispatched(session, list(job_ids))


def send_by_class(groups: dict[JobClass, list[str]], settings: Settings,
                  countdown: float | None = None) -> None:
    """Send the messages of job ids grouped by class (`services.reconcile.by_class`)."""
    for job, ids in groups.items():
        send_run_jobs(ids, settings=settings, countdown=countdown, job=job)


@contextmanager
def sending_session(
    settings: Settings | None = None, *, on_send_error: Callable[[list[str], Exception], None] | None = None,
) -> Iterator[Session]:
    """A registry session (`session_scope`) whose committed jobs are sent once it is closed, also
    when the block raises after a commit. `on_send_error(job_ids, error)`: the broker could not
    take them (the jobs are committed; the reconciler sends later); without it, the error raises."""
    from orchestrator.registry.db import session_scope
    from orchestrator.services.enqueue import take_ready

    settings = settings or get_settings()
    ready: list[tuple[str, float | None]] = []
    try:
        with session_scope(settings) as session:
            try:
                yield session
            finally:
                ready = take_ready(session)
    finally:
        if ready:
            send_ready(ready, settings, on_send_error)


def send_ready(ready: list[tuple[str, float | None]], settings: Settings,
               on_send_error: Callable[[list[str], Exception], None] | None = None) -> None:
    """Send the (job id, countdown) pairs a session committed (`services.enqueue.take_ready`)."""
    by_countdown: dict[float | None, list[str]] = {}
    for job_id, countdown in ready:
        ids = by_countdown.setdefault(countdown, [])
        if job_id not in ids:
            ids.append(job_id)
    for countdown, ids in by_countdown.items():
        try:
            announce_jobs(ids, settings=settings, countdown=countdown)
        except Exception as exc:
            if on_send_error is None:
                raise
            on_send_error(ids, exc)


def reconcile_once(
    *,
    settings: Settings | None = None,
    lease_grace_s: float | None = None,
    redispatch_after_s: float | None = None,
    webhooks: bool = True,
) -> dict[str, list[str]]:
    """One reconciler pass: requeue/fail/cancel expired leases, then (re-)send messages for
    queued jobs, then (`webhooks`) send one batch of due webhook deliveries (a process that runs
    a `webhook_delivery.WebhookSender` passes False). Returns {"dispatched", "requeued",
    "failed", "cancelled", "paused"} (job ids) and, with `webhooks`, "webhooks_delivered"
    (delivery ids)."""
    from orchestrator.registry.db import session_scope

    # From the submodule itself: once `orchestrator.services.reconcile` (the module) is imported,
    # the package attribute of that name is the module, not the function.
    from orchestrator.services.reconcile import LEASE_GRACE_S, REDISPATCH_AFTER_S, by_class, reconcile

    settings = settings or get_settings()
    with session_scope(settings) as session:
        result = reconcile(
            session,
            lease_grace_s=LEASE_GRACE_S if lease_grace_s is None else lease_grace_s,
            redispatch_after_s=REDISPATCH_AFTER_S if redispatch_after_s is None else redispatch_after_s,
        )
        groups = by_class(session, list(result.dispatch)) if result.dispatch else {}
    send_by_class(groups, settings)
    report = {"dispatched": result.dispatch, "requeued": result.requeued, "failed": result.failed,
              "cancelled": result.cancelled, "paused": result.paused}
    if webhooks:
        from orchestrator.webhook_delivery import deliver_due

        report["webhooks_delivered"] = deliver_due(settings).delivered
    return report
