"""The worker's keep-alive: a job that reports no training step (loading, evaluating) keeps its
lease while its worker lives, and loses it to the reconciler once the beating stops."""

from __future__ import annotations

import time

from orchestrator import services as svc
from orchestrator.registry.db import session_scope
from orchestrator.services.reconcile import reconcile
from worker.attempt import Heartbeat, KeepAlive

pytest_plugins = ["registry_fixtures"]

LEASE_S = 1.0


def test_keepalive_holds_the_lease_until_stopped(registry_settings):
    settings = registry_settings.model_copy(update={"lease_seconds": LEASE_S})
    with session_scope(settings) as s:
        svc.create_tenant(s, "acme", max_running=1)
        job_id = svc.submit_job(s, "acme", {"task": "sst2", "base_model": "tiny-bert", "max_steps": 2}).id
        assert svc.claim_job(s, job_id, "w1", lease_seconds=LEASE_S) is not None

    keepalive = KeepAlive(Heartbeat(settings, job_id, "w1"), interval_s=LEASE_S / 4)
    keepalive.start()
    try:
        time.sleep(3 * LEASE_S)
        with session_scope(settings) as s:
            result = reconcile(s, lease_grace_s=0.0)
            assert job_id not in result.requeued
            assert svc.get_job(s, job_id).job.state == "running"
    finally:
        keepalive.stop()
    assert not keepalive.is_alive()

    time.sleep(1.5 * LEASE_S)
    with session_scope(settings) as s:
        assert job_id in reconcile(s, lease_grace_s=0.0).requeued
        kinds = [e.kind for e in svc.job_events(s, job_id)]
    assert kinds[-1] == "requeued" and "progress" in kinds


def test_keepalive_stops_when_the_lease_is_lost(registry_settings):
    with session_scope(registry_settings) as s:
        svc.create_tenant(s, "acme", max_running=1)
        job_id = svc.submit_job(s, "acme", {"task": "sst2", "base_model": "tiny-bert", "max_steps": 2}).id
        svc.claim_job(s, job_id, "w1", lease_seconds=60)
        svc.cancel_job(s, job_id)
        svc.mark_cancelled(s, job_id, "w1")
    keepalive = KeepAlive(Heartbeat(registry_settings, job_id, "w1"), interval_s=0.05)
    keepalive.start()
    keepalive.join(timeout=5)
    assert not keepalive.is_alive()  # LeaseLost ended it: it never writes for a job it lost
