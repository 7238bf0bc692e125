"""Redis restarted, and once flushed, while jobs are queued and one runs: every job still ends
exactly once. The test runs its own redis-server (no persistence) on a spare port, so a restart
loses every queued message, as a crashed broker without a volume does; the registry and the
reconciler (a real `lorafleet reconcile --every` process) bring the work back."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.announce import announce_jobs
from orchestrator.registry import db
from orchestrator.registry.db import session_scope
from orchestrator.services.jobs import get_job, submit_job
from orchestrator.services.tenants import create_tenant
from tests.integration.faults import TERMINAL, Fleet, assert_exactly_once, fleet_env, make_fleet, stop_fleet
from tests.integration.workers import wait_for, worker_env
from tests.registry_fixtures import create_pg_database, drop_pg_database, pg_database_url

pytestmark = pytest.mark.integration

TINY = {"task": "sst2", "method": "lora", "rank": 4, "base_model": "tiny-bert", "batch_size": 4,
        "eval_size": 16}


def _spare_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _redis(port: int, log: Path) -> subprocess.Popen:
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=open(log, "a"), stderr=subprocess.STDOUT, start_new_session=True,  # noqa: SIM115
    )
    import redis

    client = redis.Redis(port=port)
    wait_for(lambda: _pings(client), 20, "redis-server to start")
    return proc


def _pings(client) -> bool:
    try:
        return bool(client.ping())
    except Exception:
        return False


@pytest.fixture
def own_redis_fleet(tmp_path: Path) -> Iterator[tuple[Fleet, dict]]:
    port = _spare_port()
    server = {"port": port, "proc": _redis(port, tmp_path / "redis.log"), "log": tmp_path / "redis.log"}
    pg_name = create_pg_database()
    env = fleet_env(worker_env(tmp_path), LORAFLEET_DATABASE_URL=pg_database_url(pg_name),
                    LORAFLEET_BROKER_URL=f"redis://127.0.0.1:{port}/0", LORAFLEET_TENANT_MAX_RUNNING="1")
    db.upgrade(env["LORAFLEET_DATABASE_URL"])
    fleet = make_fleet(env, tmp_path, "cluster", names=("ra",))
    try:
        yield fleet, server
    finally:
        stop_fleet(fleet)
        from orchestrator.dispatch import close_clients

        close_clients()
        db.forget_engine(fleet.settings.database_url)
        drop_pg_database(pg_name)
        server["proc"].send_signal(signal.SIGTERM)
        server["proc"].wait(timeout=10)


def _state(fleet: Fleet, job_id: str) -> str:
    with session_scope(fleet.settings) as s:
        return get_job(s, job_id).job.state


def test_redis_restarted_and_flushed_loses_no_job(own_redis_fleet):
    fleet, server = own_redis_fleet
    with session_scope(fleet.settings) as s:
        create_tenant(s, "broker", max_running=1)
        jobs = [submit_job(s, "broker", {**TINY, "seed": i, "max_steps": 120 if i == 0 else 3}).id
                for i in range(4)]
    announce_jobs(jobs, settings=fleet.settings)
    wait_for(lambda: _state(fleet, jobs[0]) == "running", 120, f"the first job to run\n{fleet.log()}")

    # A restart: the process dies, its queue with it (no persistence), and comes back empty.
    server["proc"].send_signal(signal.SIGKILL)
    server["proc"].wait(timeout=10)
    time.sleep(1)
    server["proc"] = _redis(server["port"], server["log"])
    wait_for(lambda: _state(fleet, jobs[0]) in TERMINAL or _state(fleet, jobs[1]) == "running", 180,
             f"work to go on after the restart\n{fleet.log()}")
    # ...and once flushed while jobs wait.
    import redis

    redis.Redis(port=server["port"]).flushall()
    for job_id in jobs:
        wait_for(lambda j=job_id: _state(fleet, j) in TERMINAL, 180, f"job {job_id} to end\n{fleet.log()}")
        detail = assert_exactly_once(fleet.settings, job_id)
        assert detail["attempts"] == 1
    assert all(w.alive() for w in fleet.workers.values()) and fleet.reconciler.poll() is None
