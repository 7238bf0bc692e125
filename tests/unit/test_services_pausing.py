"""Pause and resume in the registry (SQLite and PostgreSQL): what each state does with a pause,
what the worker's side records, and that nothing claims or re-dispatches a paused job."""

from __future__ import annotations

from datetime import timedelta

import pytest

from orchestrator import errors
from orchestrator.registry.models import utcnow
from orchestrator.retries import Abort
from orchestrator.services.enqueue import take_ready
from orchestrator.services.jobs import cancel_job, get_job, job_events, submit_job
from orchestrator.services.leases import claim_job, claim_next, heartbeat, requeue_job, return_job
from orchestrator.services.pausing import pause_job, resume_job
from orchestrator.services.reconcile import reconcile
from orchestrator.services.tenants import create_tenant, set_tenant_quota

pytest_plugins = ["registry_fixtures"]
SPEC = {"task": "sst2", "method": "lora", "rank": 4, "base_model": "tiny-bert", "max_steps": 5}


def _kinds(session, job_id: str) -> list[str]:
    return [e.kind for e in job_events(session, job_id)]


def test_a_queued_job_pauses_at_once_and_nothing_claims_or_dispatches_it(session) -> None:
    create_tenant(session, "acme")
    job = submit_job(session, "acme", SPEC)
    take_ready(session)
    assert pause_job(session, job.id, tenant="acme").state == "paused"
    assert pause_job(session, job.id).state == "paused"  # twice: nothing changes
    assert claim_job(session, job.id, "w1", 60) is None
    assert claim_next(session, "w1", 60) is None
    later = utcnow() + timedelta(hours=5)
    result = reconcile(session, now=later, redispatch_after_s=1)
    assert job.id not in result.dispatch
    assert _kinds(session, job.id) == ["submitted", "paused"]

    resumed = resume_job(session, job.id, tenant="acme")
    assert resumed.state == "queued"
    assert [jid for jid, _ in take_ready(session)] == [job.id]  # its message, after the commit
    assert claim_job(session, job.id, "w1", 60) is not None
    assert _kinds(session, job.id)[-2:] == ["unpaused", "claimed"]


def test_a_running_job_pauses_at_its_checkpoint_and_resumes_with_its_attempt_back(session) -> None:
    create_tenant(session, "acme")
    job = submit_job(session, "acme", SPEC)
    take_ready(session)
    claim_job(session, job.id, "w1", 60)
    max_attempts = get_job(session, job.id).job.max_attempts
    assert heartbeat(session, job.id, "w1", 1, 5, 0.9, 60) is None
    paused = pause_job(session, job.id, tenant="acme")
    assert (paused.state, paused.pause_requested) == ("running", True)
    pause_job(session, job.id)  # twice: one event
    assert heartbeat(session, job.id, "w1", 2, 5, 0.8, 60) is Abort.PAUSE  # the worker learns it
    with pytest.raises(errors.InvalidState, match="only paused jobs can be resumed"):
        resume_job(session, job.id)
    # The worker checkpointed and stopped: the release its abort reason decides.
    assert requeue_job(session, job.id, "w1", "paused", release=True) == "paused"
    assert take_ready(session) == []  # no message: nothing must claim it
    row = get_job(session, job.id).job
    assert (row.state, row.lease_owner, row.pause_requested) == ("paused", None, False)
    assert row.max_attempts == max_attempts + 1  # the attempt the pause interrupted is given back
    events = job_events(session, job.id)
    assert [e.kind for e in events] == ["submitted", "claimed", "progress", "pause_requested", "paused"]
    assert events[-1].data["step"] == 2

    resume_job(session, job.id)
    again = claim_job(session, job.id, "w2", 60)
    assert (again.state, again.attempts, again.pause_requested) == ("running", 2, False)


def test_cancel_wins_over_pause_and_a_paused_job_cancels_at_once(session) -> None:
    create_tenant(session, "acme")
    running = submit_job(session, "acme", SPEC)
    claim_job(session, running.id, "w1", 60)
    pause_job(session, running.id)
    cancel_job(session, running.id)
    assert heartbeat(session, running.id, "w1", 1, 5, 0.5, 60) is Abort.CANCEL
    assert requeue_job(session, running.id, "w1", "stopped", release=True) == "cancelled"
    with pytest.raises(errors.InvalidState, match="already cancelled"):
        pause_job(session, running.id)

    other = submit_job(session, "acme", SPEC)
    pause_job(session, other.id)
    assert cancel_job(session, other.id).state == "cancelled"
    assert _kinds(session, other.id)[-1] == "cancelled"
    with pytest.raises(errors.InvalidState, match="only paused jobs"):
        resume_job(session, other.id)


def test_a_lost_or_handed_back_worker_leaves_a_pause_requested_job_paused(session) -> None:
    create_tenant(session, "acme")
    lost = submit_job(session, "acme", SPEC)
    t0 = utcnow()
    claim_job(session, lost.id, "dead", 10, now=t0)
    pause_job(session, lost.id)
    result = reconcile(session, now=t0 + timedelta(seconds=60))
    assert result.paused == [lost.id] and lost.id not in result.dispatch
    assert get_job(session, lost.id).job.state == "paused"

    faulty = submit_job(session, "acme", SPEC)
    claim_job(session, faulty.id, "broken", 60)
    pause_job(session, faulty.id)
    assert return_job(session, faulty.id, "broken", "model cache unreadable") == "paused"
    row = get_job(session, faulty.id).job
    assert (row.state, row.attempts) == ("paused", 0)


def test_pause_resume_scope_and_quota(session) -> None:
    create_tenant(session, "acme")
    create_tenant(session, "rival")
    job = submit_job(session, "acme", SPEC)
    with pytest.raises(errors.NotFound):
        pause_job(session, job.id, tenant="rival")
    pause_job(session, job.id)
    with pytest.raises(errors.NotFound):
        resume_job(session, job.id, tenant="rival")
    submit_job(session, "acme", SPEC)
    set_tenant_quota(session, "acme", max_queued=1)
    with pytest.raises(errors.QuotaExceeded, match="queued"):
        resume_job(session, job.id)
    assert get_job(session, job.id).job.state == "paused"  # nothing changed
    cancel_job(session, job.id)
    with pytest.raises(errors.InvalidState, match="only queued or running jobs can be paused"):
        pause_job(session, job.id)
