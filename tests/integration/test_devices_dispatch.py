"""A `devices: 2` job's message reaches a worker that can claim it: a worker of one device and a
worker of two run side by side (real Celery worker processes, Redis, PostgreSQL), the one-device
worker first in line for messages, and the job is claimed by the two-device worker from its first
message. No reconciler runs (cluster mode has none in the worker), so a message the one-device
worker took and dropped would leave the job queued: the test watches for that and fails at once."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from pathlib import Path

import pytest

from orchestrator.announce import sending_session
from orchestrator.config import load_settings
from orchestrator.dispatch import close_clients
from orchestrator.registry import db
from orchestrator.registry.db import session_scope
from orchestrator.services.jobs import get_job, job_events, submit_job
from orchestrator.services.tenants import create_tenant
from tests.integration.workers import (
    REDIS_URL,
    WORKER_START_TIMEOUT_S,
    flush_redis,
    start_worker,
    stop_worker,
    wait_for,
    worker_env,
)
from tests.registry_fixtures import create_pg_database, drop_pg_database, pg_database_url

pytestmark = pytest.mark.integration

WIDE = {"task": "sst2", "method": "lora", "rank": 4, "base_model": "tiny-bert", "max_steps": 2,
        "batch_size": 4, "eval_size": 8, "devices": 2}


def _start(env: dict[str, str], home: Path, name: str, devices: int) -> tuple[subprocess.Popen, Path, str]:
    log = home / f"{name}.log"
    proc = start_worker({**env, "LORAFLEET_WORKER_DEVICES": str(devices)}, log, name=name)
    wait_for(lambda: " ready." in log.read_text() or proc.poll() is not None, WORKER_START_TIMEOUT_S,
             f"{name} to start")
    assert proc.poll() is None, log.read_text()[-3000:]
    return proc, log, f"{name}-{os.getpid()}@{socket.gethostname()}:{proc.pid}"


def _kill(proc: subprocess.Popen) -> None:
    """The two-device worker is training across its ranks: no warm shutdown to wait for."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


def test_a_two_device_job_is_claimed_by_the_two_device_worker_from_its_first_message(tmp_path: Path):
    pg_name = create_pg_database()
    env = {**worker_env(tmp_path), "LORAFLEET_DATABASE_URL": pg_database_url(pg_name),
           "LORAFLEET_BROKER_URL": REDIS_URL}
    settings = load_settings(env)
    db.upgrade(settings.database_url)
    flush_redis()
    procs: list[subprocess.Popen] = []
    try:
        # The one-device worker starts first: it is first in line for a message on the queue both
        # consume (Redis serves the longest-blocked consumer first).
        small, small_log, _ = _start(env, tmp_path, "small", 1)
        procs.append(small)
        big, big_log, big_id = _start(env, tmp_path, "big", 2)
        procs.append(big)
        assert "queue gpu,gpu.devices-2," in big_log.read_text()

        with sending_session(settings) as s:
            create_tenant(s, "acme", max_running=2)
            job_id = submit_job(s, "acme", WIDE, settings=settings).id

        def claimed_or_dropped() -> str | None:
            if f"nothing to claim for message {job_id}" in small_log.read_text():
                return "dropped by the one-device worker"
            with session_scope(settings) as s:
                if any(e.kind == "claimed" for e in job_events(s, job_id)):
                    return "claimed"
            return None

        assert wait_for(claimed_or_dropped, 120, "the job to be claimed") == "claimed"
        with session_scope(settings) as s:
            events = job_events(s, job_id)
            job = get_job(s, job_id).job
        (claim,) = [e for e in events if e.kind == "claimed"]
        assert claim.data["worker"] == big_id
        assert job.dispatch_count == 1  # its first message: nothing was re-sent
        assert not [e for e in events if e.kind == "dispatched"]
        assert job_id not in small_log.read_text()  # the one-device worker never heard of it
    finally:
        for proc in procs[1:]:
            _kill(proc)
        for proc in procs[:1]:
            stop_worker(proc)
        close_clients()
        db.forget_engine(settings.database_url)
        drop_pg_database(pg_name)
        flush_redis()
