"""The worker's keep-alive: a job that reports no training step (loading, evaluating) keeps its
lease while its worker lives, and loses it to the reconciler once the beating stops."""

from __future__ import annotations

import time

from orchestrator.registry.db import session_scope
from orchestrator.services.jobs import cancel_job, get_job, job_events, submit_job
from orchestrator.services.leases import claim_job, mark_cancelled
from orchestrator.services.reconcile import reconcile
from orchestrator.services.tenants import create_tenant
from worker.attempt import Heartbeat, KeepAlive

pytest_plugins = ["registry_fixtures"]

LEASE_S = 1.0


def test_keepalive_holds_the_lease_until_stopped(registry_settings):
    settings = registry_settings.model_copy(update={"lease_seconds": LEASE_S})
    with session_scope(settings) as s:
        create_tenant(s, "acme", max_running=1)
        job_id = submit_job(s, "acme", {"task": "sst2", "base_model": "tiny-bert", "max_steps": 2}).id
        assert claim_job(s, job_id, "w1", lease_seconds=LEASE_S) is not None

    keepalive = KeepAlive(Heartbeat(settings, job_id, "w1"), interval_s=LEASE_S / 4)
    keepalive.start()
    try:
        time.sleep(3 * LEASE_S)
        with session_scope(settings) as s:
            result = reconcile(s, lease_grace_s=0.0)
            assert job_id not in result.requeued
            assert get_job(s, job_id).job.state == "running"
    finally:
        keepalive.stop()
    assert not keepalive.is_alive()

    time.sleep(1.5 * LEASE_S)
    with session_scope(settings) as s:
        assert job_id in reconcile(s, lease_grace_s=0.0).requeued
        kinds = [e.kind for e in job_events(s, job_id)]
    assert kinds[-1] == "requeued" and "progress" in kinds


def test_keepalive_stops_when_the_lease_is_lost(registry_settings):
    with session_scope(registry_settings) as s:
        create_tenant(s, "acme", max_running=1)
        job_id = submit_job(s, "acme", {"task": "sst2", "base_model": "tiny-bert", "max_steps": 2}).id
        claim_job(s, job_id, "w1", lease_seconds=60)
        cancel_job(s, job_id)
        mark_cancelled(s, job_id, "w1")
    keepalive = KeepAlive(Heartbeat(registry_settings, job_id, "w1"), interval_s=0.05)
    keepalive.start()
    keepalive.join(timeout=5)
    assert not keepalive.is_alive()  # LeaseLost ended it: it never writes for a job it lost
