"""Thin Celery tasks: ids in, one call into the runner or the services, the outcome logged.

Exceptions are classified by `orchestrator.retries` inside the runner; a task only lets through what
must reach Celery (a bug in the runner itself), so a job's failure never kills the worker.
"""

from __future__ import annotations

from typing import Any

from orchestrator.dispatch import RECONCILE, RUN_JOB
from worker.celery_app import app


class JobFailed(Exception):
    """Raised after a job's failure is recorded, so Celery (and Flower) show the task as FAILURE
    instead of SUCCESS. Expected (`throws`): logged in one line, no traceback, not retried."""


@app.task(name=RUN_JOB, bind=True, ignore_result=True, throws=(JobFailed,))
def run_job(self: Any, job_id: str) -> str:
    """Claim and run a queued job; returns the outcome (cancelled, requeued, …) or raises JobFailed."""
    from celery.exceptions import Reject

    from worker import health
    from worker.attempt import shutting_down
    from worker.runner import run_job as execute

    if shutting_down():
        # This worker is stopping: hand the message back for another (or the restarted) worker.
        raise Reject("worker shutting down", requeue=True)
    if health.unhealthy():
        # Out of service (its own environment failed its jobs): claim nothing, the message is
        # another worker's.
        raise Reject(f"worker unhealthy: {health.unhealthy()}", requeue=True)

    from orchestrator.config import get_settings
    from worker import exporter, logs, presence

    worker_id = presence.worker_id(self.request.hostname)
    # The runner binds the job it claims to the log lines; the worker's row names it meanwhile.
    with logs.job_scope(), presence.on_job(job_id):
        from worker.packed import packing_enabled

        if packing_enabled(get_settings()):
            from worker.packed import run_packed

            results = run_packed(job_id, worker_id=worker_id)
        else:
            results = [execute(job_id, worker_id=worker_id)]
    for result in results:
        exporter.observe_outcome(result.outcome)
    failed = [r for r in results if r.outcome == "failed"]
    if failed:
        raise JobFailed("; ".join(f"job {r.job_id} failed: {r.detail}" for r in failed))
    return ", ".join(r.outcome for r in results)


@app.task(name=RECONCILE, ignore_result=True)
def reconcile() -> dict[str, list[str]]:
    """One reconciler pass (beat schedule): expired leases back to the queue, lost messages re-sent."""
    from orchestrator.announce import reconcile_once

    return reconcile_once()
