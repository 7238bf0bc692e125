"""Pause and resume: a tenant sets a job aside and later takes it up where it stopped.

    queued  --pause-->  paused                     (now: it never ran, or waits to run again)
    running --pause-->  running, pause_requested   (its worker's next heartbeat sees the flag,
                        --checkpoint--> paused      checkpoints and stops; `leases` records it:
                                                    lease released, the attempt given back)
    paused  --resume--> queued                     (a message after the commit; the next attempt
                                                    resumes from the checkpoint, `resumed` event)
    paused  --cancel--> cancelled                  (`jobs.cancel_job`)

Nothing claims (`repositories.claimable`: queued only) or re-dispatches (the reconciler: queued
only) a paused job. A resumed job joins the queue again, so its tenant's queue quota applies.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from orchestrator.errors import InvalidState
from orchestrator.registry import repositories as repo
from orchestrator.registry.models import Job
from orchestrator.services._tx import transactional
from orchestrator.services.enqueue import enqueue_job
from orchestrator.services.events import add_event
from orchestrator.services.jobs import job_or_404
from orchestrator.services.quotas import check_queued


@transactional
def pause_job(session: Session, job_id: str, tenant: str | None = None) -> Job:
    """Pause: a queued job is paused now; a running one gets `pause_requested` (its worker
    checkpoints at its next heartbeat and the job goes `paused`); pausing a paused job, or a
    running one twice, changes nothing; a finished one, or one whose cancel was requested:
    InvalidState."""
    job = job_or_404(session, job_id, tenant)
    session.refresh(job, with_for_update=True)  # serialise with a concurrent claim
    if job.state == "queued":
        job.state, job.dispatched_at, job.dispatch_count = "paused", None, 0
        add_event(session, job, "paused", "paused while queued", {"step": None})
    elif job.state == "running":
        if job.cancel_requested:
            raise InvalidState(f"job {job.id} is being cancelled; it cannot be paused")
        if not job.pause_requested:
            job.pause_requested = True
            add_event(session, job, "pause_requested",
                      f"pause requested; {job.lease_owner} will checkpoint and stop")
    elif job.state != "paused":
        raise InvalidState(f"job {job.id} is already {job.state}; only queued or running jobs can be paused")
    return job


@transactional
def resume_job(session: Session, job_id: str, tenant: str | None = None) -> Job:
    """Resume a paused job: back to `queued` (its message sent after the commit); the attempt
    that claims it continues from its last checkpoint. A job not paused: InvalidState. The
    tenant's queue quota applies, as to a submission (QuotaExceeded, nothing changed)."""
    job = job_or_404(session, job_id, tenant)
    if job.state != "paused":
        raise InvalidState(f"job {job.id} is {job.state}; only paused jobs can be resumed")
    owner = repo.tenant_by_id(session, job.tenant_id)
    assert owner is not None  # jobs.tenant_id is a non-null foreign key
    check_queued(session, owner, 1)  # the tenant's lock first, then the job's, as a claim takes them
    session.refresh(job, with_for_update=True)
    if job.state != "paused":
        raise InvalidState(f"job {job.id} is {job.state}; only paused jobs can be resumed")
    job.state, job.error = "queued", None
    job.dispatched_at, job.dispatch_count = None, 0
    add_event(session, job, "unpaused", "resumed by its tenant: back in the queue",
              {"step": job.progress_step})
    enqueue_job(session, job.id)
    return job
