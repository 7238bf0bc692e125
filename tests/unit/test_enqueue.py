"""Enqueue after commit: a service records the jobs to send in its transaction; the edge's
session (`announce.sending_session`) sends them once they committed, and a transaction that
rolled back sends nothing. Real registry (SQLite, PostgreSQL) and the real embedded broker."""

from __future__ import annotations

import pytest
from kombu import Connection

from orchestrator.announce import sending_session
from orchestrator.dispatch import close_clients, ensure_broker_dir
from orchestrator.registry.db import session_scope
from orchestrator.services._tx import transactional
from orchestrator.services.enqueue import enqueue_job
from orchestrator.services.jobs import get_job, submit_job
from orchestrator.services.tenants import create_tenant

pytest_plugins = ["registry_fixtures"]

SPEC = {"task": "sst2", "base_model": "tiny-bert", "max_steps": 2}


def _sent(settings) -> list[str]:
    """The job ids of the messages on the broker, in order (taken off it)."""
    close_clients()
    ensure_broker_dir(settings.broker_url)
    ids = []
    with Connection(settings.broker_url) as conn:
        queue = conn.SimpleQueue(settings.queue)
        while True:
            try:
                message = queue.get(timeout=0.5)
            except queue.Empty:
                return ids
            ids.append(message.decode()[0][0])
            message.ack()


@transactional
def _queue_then_fail(session, job_id: str) -> None:
    enqueue_job(session, job_id)  # what a service records in its transaction...
    raise RuntimeError("...which then fails: it rolls back")


def test_committed_jobs_are_sent_after_the_session_and_rolled_back_ones_never(registry_settings):
    settings = registry_settings
    with pytest.raises(RuntimeError), sending_session(settings) as s:
        create_tenant(s, "acme")
        job_id = submit_job(s, "acme", SPEC).id
        assert _sent(settings) == []  # committed, not yet sent: the session is still open
        with pytest.raises(RuntimeError):
            _queue_then_fail(s, "never-queued")
        later = submit_job(s, "acme", {**SPEC, "seed": 2}).id  # the next commit sends only its own
        raise RuntimeError("the command fails after its commits")
    assert _sent(settings) == [job_id, later]  # the block raised after the commits: they are still sent
    with session_scope(settings) as s:
        assert [get_job(s, j).job.dispatch_count for j in (job_id, later)] == [1, 1]


def test_a_plain_session_sends_nothing_and_an_idempotent_resubmission_resends(registry_settings):
    settings = registry_settings
    with session_scope(settings) as s:  # not an edge: services record, nothing is sent
        create_tenant(s, "acme")
        job_id = submit_job(s, "acme", SPEC, idempotency_key="k1").id
    assert _sent(settings) == []
    with sending_session(settings) as s:  # the same key: the queued job's message may be lost
        assert submit_job(s, "acme", SPEC, idempotency_key="k1").id == job_id
    assert _sent(settings) == [job_id]
