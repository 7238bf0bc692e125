"""`lorafleet status`: queue depth by tenant and state, workers by their last heartbeat, running
jobs, and why queued jobs wait — on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from datetime import timedelta

from click.testing import CliRunner

from orchestrator.cli.main import cli
from orchestrator.config import get_settings
from orchestrator.registry.db import forget_engine, session_scope
from orchestrator.registry.models import utcnow
from orchestrator.services.jobs import submit_job
from orchestrator.services.leases import claim_job, heartbeat
from orchestrator.services.status import fleet_status
from orchestrator.services.tenants import create_tenant
from orchestrator.services.workers import (
    MISSED_BEATS_LOST,
    WorkerInfo,
    mark_worker_stopped,
    register_worker,
    worker_beat,
)

pytest_plugins = ["registry_fixtures"]

SPEC = {"task": "sst2", "base_model": "tiny-bert", "max_steps": 10}


def test_fleet_status(session):
    create_tenant(session, "acme", max_running=1)
    create_tenant(session, "beta", max_running=2)
    create_tenant(session, "idle")
    t0 = utcnow() - timedelta(minutes=10)
    a1 = submit_job(session, "acme", SPEC).id
    a2 = submit_job(session, "acme", SPEC).id
    b1 = submit_job(session, "beta", SPEC).id
    b2 = submit_job(session, "beta", SPEC, priority=5).id
    b3 = submit_job(session, "beta", SPEC).id
    assert claim_job(session, a1, "w-live", lease_seconds=60, now=t0) is not None
    heartbeat(session, a1, "w-live", step=6, total=10, loss=0.5, lease_seconds=60,
                  now=t0 + timedelta(seconds=60))
    assert claim_job(session, b1, "w-gone", lease_seconds=60, now=t0) is not None

    fleet = fleet_status(session, lease_seconds=60, now=t0 + timedelta(seconds=90))

    assert fleet.jobs["acme"] == {
        "queued": 1, "running": 1, "paused": 0, "succeeded": 0, "failed": 0, "cancelled": 0
    }
    assert fleet.jobs["beta"]["queued"] == 2 and fleet.jobs["beta"]["running"] == 1
    assert set(fleet.jobs["idle"].values()) == {0}
    assert fleet.queued_total == 3
    workers = [(w.worker, w.running, w.alive) for w in fleet.workers]
    assert workers == [("w-gone", 1, False), ("w-live", 1, True)]
    live = next(r for r in fleet.running if r.id == a1)
    assert (live.step, live.total, live.loss) == (6, 10, 0.5)
    assert abs(live.steps_per_s - 6 / 60) < 1e-6
    # Claim order: fewest running first (a tie here), then priority, then age.
    assert [(w.id, w.why) for w in fleet.waiting] == [
        (b2, "next in line, for the next free worker"),
        (a2, "tenant acme at its quota (1/1 running)"),
        (b3, "1 claimable job(s) ahead of it"),
    ]


def _info(worker_id: str, beat: float = 10.0) -> WorkerInfo:
    return WorkerInfo(worker_id, "host-a", 4242, "gpu", "cpu", "cpu", beat)


def test_workers_alive_idle_or_on_a_job_lost_and_stopped(session):
    """Workers by their own rows: registered, beating (idle too), silent, stopped; plus a lease
    owner that never registered (seen through its job's heartbeat only)."""
    create_tenant(session, "acme", max_running=3)
    t0 = utcnow() - timedelta(minutes=10)
    job = submit_job(session, "acme", SPEC).id
    queued = submit_job(session, "acme", SPEC).id
    old = submit_job(session, "acme", SPEC).id
    for worker_id in ("busy:1", "idle:2", "killed:3", "done:4"):
        register_worker(session, _info(worker_id), now=t0)
    assert claim_job(session, job, "busy:1", lease_seconds=60, now=t0) is not None
    assert worker_beat(session, "busy:1", job, now=t0 + timedelta(seconds=100))
    assert worker_beat(session, "idle:2", None, now=t0 + timedelta(seconds=100))
    # killed:3 beats last at t0 + 60 s; three missed 10 s beats later it counts as lost.
    assert worker_beat(session, "killed:3", None, now=t0 + timedelta(seconds=60))
    mark_worker_stopped(session, "done:4", now=t0 + timedelta(seconds=50))
    assert not worker_beat(session, "done:4", None, now=t0 + timedelta(seconds=70))  # stays stopped
    assert not worker_beat(session, "never:9", None)
    assert claim_job(session, old, "legacy:5", lease_seconds=60, now=t0 + timedelta(seconds=90))

    at = t0 + timedelta(seconds=60 + MISSED_BEATS_LOST * 10 + 1)
    fleet = fleet_status(session, lease_seconds=60, now=at)

    seen = {w.worker: (w.state, w.alive, w.job, w.running) for w in fleet.workers}
    assert seen == {
        "busy:1": ("alive", True, job, 1),
        "idle:2": ("alive", True, None, 0),
        "killed:3": ("lost", False, None, 0),
        "done:4": ("stopped", False, None, 0),
        "legacy:5": ("alive", True, old, 1),  # no row: its lease's heartbeat speaks for it
    }
    assert [w.worker for w in fleet.workers] == sorted(seen)
    busy = next(w for w in fleet.workers if w.worker == "busy:1")
    assert (busy.hostname, busy.pid, busy.queue, busy.device, busy.started_at) == ("host-a", 4242, "gpu",
                                                                                   "cpu", t0)
    assert next(w for w in fleet.workers if w.worker == "done:4").stopped_at == t0 + timedelta(seconds=50)
    assert fleet.waiting[0].id == queued and fleet.waiting[0].why == "next in line, for the next free worker"
    # Past GONE_SHOWN_S the stopped and lost ones drop out; a re-registered id starts afresh.
    later = t0 + timedelta(hours=2)
    register_worker(session, _info("done:4"), now=later)
    assert worker_beat(session, "idle:2", None, now=later)
    fleet = fleet_status(session, lease_seconds=60, now=later)
    assert {w.worker: w.state for w in fleet.workers} == {"done:4": "alive", "idle:2": "alive",
                                                          "busy:1": "lost", "legacy:5": "lost"}


def test_an_unhealthy_worker_says_why_and_takes_no_jobs(session):
    create_tenant(session, "acme")
    queued = submit_job(session, "acme", SPEC).id
    t0 = utcnow() - timedelta(minutes=1)
    register_worker(session, _info("sick:1"), now=t0)
    reason = "its own environment failed 3 job(s) in a row; the last: data folder /srv/data is missing"
    assert worker_beat(session, "sick:1", None, now=t0 + timedelta(seconds=5), unhealthy=reason)
    assert worker_beat(session, "sick:1", None, now=t0 + timedelta(seconds=15), unhealthy=reason)
    fleet = fleet_status(session, lease_seconds=60, now=t0 + timedelta(seconds=20))
    (sick,) = fleet.workers
    assert (sick.state, sick.alive, sick.reason) == ("unhealthy", False, reason)
    assert sick.unhealthy_since == t0 + timedelta(seconds=5)  # its first unhealthy beat
    assert fleet.waiting[0].id == queued
    assert "every worker that reports in is unhealthy" in fleet.waiting[0].why
    # Silent, it is lost like any other; restarted under the same id, it starts healthy.
    later = t0 + timedelta(seconds=20 + MISSED_BEATS_LOST * 10)
    assert fleet_status(session, lease_seconds=60, now=later).workers[0].state == "lost"
    register_worker(session, _info("sick:1"), now=later)
    fleet = fleet_status(session, lease_seconds=60, now=later)
    assert (fleet.workers[0].state, fleet.workers[0].reason) == ("alive", None)


def test_status_command(tmp_path, monkeypatch):
    monkeypatch.setenv("LORAFLEET_HOME", str(tmp_path / "home"))
    for var in ("LORAFLEET_DATABASE_URL", "LORAFLEET_BROKER_URL", "LORAFLEET_ARTIFACTS"):
        monkeypatch.delenv(var, raising=False)
    get_settings.cache_clear()
    try:
        with session_scope() as s:
            create_tenant(s, "acme")
            job_id = submit_job(s, "acme", SPEC).id
        shown = json.loads(CliRunner().invoke(cli, ["status", "--json"], catch_exceptions=False).output)
        assert shown["jobs"]["acme"]["queued"] == 1 and shown["waiting"][0]["id"] == job_id
        assert "no worker has reported in" in shown["waiting"][0]["why"]
        assert shown["workers"] == []
        with session_scope() as s:
            register_worker(s, _info("gpu0@host-a:4242"))
        shown = json.loads(CliRunner().invoke(cli, ["status", "--json"], catch_exceptions=False).output)
        assert [(w["worker"], w["state"], w["job"]) for w in shown["workers"]] == [("gpu0@host-a:4242",
                                                                                   "alive", None)]
        table = CliRunner().invoke(cli, ["status"], catch_exceptions=False).output
        lines = table.splitlines()
        assert lines[0].startswith("queued 1") and lines[1].startswith("registry sqlite:///")
        assert job_id[:8] in table
        worker_line = next(line for line in lines if line.startswith("gpu0@host-a:4242"))
        assert worker_line.split()[1:3] == ["alive", "idle"]
        assert max(len(line) for line in lines[2:]) <= 80
    finally:
        forget_engine(get_settings().database_url)
        get_settings.cache_clear()
