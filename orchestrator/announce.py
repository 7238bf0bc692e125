"""Sending job messages and recording that they were sent: submit, re-dispatch, reconcile.

`orchestrator.dispatch.send_run_jobs` is the one function that puts a message on the broker;
here it is paired with the registry's record of the dispatch, which the reconciler reads to
re-send for queued jobs whose message may be lost (when: `orchestrator.retries.redispatch_wait`).
A crash between sending and recording is harmless: a second message finds nothing to claim.
"""

from __future__ import annotations

from orchestrator.config import Settings, get_settings
from orchestrator.dispatch import send_run_jobs


def announce_jobs(
    job_ids: list[str], *, settings: Settings | None = None, countdown: float | None = None
) -> None:
    """Send a message per queued job (after the jobs were committed) and record the dispatch."""
    from orchestrator.registry.db import session_scope
    from orchestrator.services.reconcile import mark_dispatched

    settings = settings or get_settings()
    if not job_ids:
        return
    send_run_jobs(list(job_ids), settings=settings, countdown=countdown)
    with session_scope(settings) as session:
        mark_dispatched(session, list(job_ids))


def reconcile_once(
    *,
    settings: Settings | None = None,
    lease_grace_s: float | None = None,
    redispatch_after_s: float | None = None,
) -> dict[str, list[str]]:
    """One reconciler pass: requeue/fail/cancel expired leases, then (re-)send messages for
    queued jobs. Returns {"dispatched", "requeued", "failed", "cancelled"} (job ids)."""
    from orchestrator.registry.db import session_scope

    # From the submodule itself: once `orchestrator.services.reconcile` (the module) is imported,
    # the package attribute of that name is the module, not the function.
    from orchestrator.services.reconcile import LEASE_GRACE_S, REDISPATCH_AFTER_S, reconcile

    settings = settings or get_settings()
    with session_scope(settings) as session:
        result = reconcile(
            session,
            lease_grace_s=LEASE_GRACE_S if lease_grace_s is None else lease_grace_s,
            redispatch_after_s=REDISPATCH_AFTER_S if redispatch_after_s is None else redispatch_after_s,
        )
    send_run_jobs(list(result.dispatch), settings=settings)
    return {"dispatched": result.dispatch, "requeued": result.requeued, "failed": result.failed,
            "cancelled": result.cancelled}
