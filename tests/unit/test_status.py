"""`lorafleet status`: queue depth by tenant and state, workers by their last heartbeat, running
jobs, and why queued jobs wait — on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from datetime import timedelta

from click.testing import CliRunner

from orchestrator import services as svc
from orchestrator.cli.main import cli
from orchestrator.config import get_settings
from orchestrator.registry.db import forget_engine, session_scope
from orchestrator.registry.models import utcnow
from orchestrator.services.status import fleet_status

pytest_plugins = ["registry_fixtures"]

SPEC = {"task": "sst2", "base_model": "tiny-bert", "max_steps": 10}


def test_fleet_status(session):
    svc.create_tenant(session, "acme", max_running=1)
    svc.create_tenant(session, "beta", max_running=2)
    svc.create_tenant(session, "idle")
    t0 = utcnow() - timedelta(minutes=10)
    a1 = svc.submit_job(session, "acme", SPEC).id
    a2 = svc.submit_job(session, "acme", SPEC).id
    b1 = svc.submit_job(session, "beta", SPEC).id
    b2 = svc.submit_job(session, "beta", SPEC, priority=5).id
    b3 = svc.submit_job(session, "beta", SPEC).id
    assert svc.claim_job(session, a1, "w-live", lease_seconds=60, now=t0) is not None
    svc.heartbeat(session, a1, "w-live", step=6, total=10, loss=0.5, lease_seconds=60,
                  now=t0 + timedelta(seconds=60))
    assert svc.claim_job(session, b1, "w-gone", lease_seconds=60, now=t0) is not None

    fleet = fleet_status(session, lease_seconds=60, now=t0 + timedelta(seconds=90))

    assert fleet.jobs["acme"] == {"queued": 1, "running": 1, "succeeded": 0, "failed": 0, "cancelled": 0}
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


def test_status_command(tmp_path, monkeypatch):
    monkeypatch.setenv("LORAFLEET_HOME", str(tmp_path / "home"))
    for var in ("LORAFLEET_DATABASE_URL", "LORAFLEET_BROKER_URL", "LORAFLEET_ARTIFACTS"):
        monkeypatch.delenv(var, raising=False)
    get_settings.cache_clear()
    try:
        with session_scope() as s:
            svc.create_tenant(s, "acme")
            job_id = svc.submit_job(s, "acme", SPEC).id
        shown = json.loads(CliRunner().invoke(cli, ["status", "--json"], catch_exceptions=False).output)
        assert shown["jobs"]["acme"]["queued"] == 1 and shown["waiting"][0]["id"] == job_id
        assert "no worker has reported in" in shown["waiting"][0]["why"]
        table = CliRunner().invoke(cli, ["status"], catch_exceptions=False).output
        lines = table.splitlines()
        assert lines[0].startswith("queued 1") and lines[1].startswith("registry sqlite:///")
        assert job_id[:8] in table
        assert max(len(line) for line in lines[2:]) <= 80
    finally:
        forget_engine(get_settings().database_url)
        get_settings.cache_clear()
