"""A job across two devices on a real worker path (the runner, a SQLite registry, two gloo rank
processes): a rank killed mid-run ends the attempt within the lease, no rank is left behind, and
the job goes back to the queue; the next attempt resumes from the last checkpoint and obeys a
cancel through rank 0. Both attempts bill 2 devices x their wall time."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

from sqlalchemy import select

from orchestrator.config import load_settings
from orchestrator.registry.db import forget_engine, session_scope
from orchestrator.registry.models import Job, Usage
from orchestrator.services.jobs import cancel_job, job_events, submit_job
from orchestrator.services.tenants import create_tenant
from worker.runner import run_job

DATA_DIR = os.environ["LORAFLEET_DATA_DIR"]
# Long enough that it is still training when the test acts (it never runs to the end).
SPEC = {"task": "sst2", "base_model": "tiny-bert", "rank": 4, "max_steps": 100_000, "batch_size": 4,
        "max_length": 32, "eval_every": 0, "eval_size": 8, "devices": 2}
WAIT_S = 600  # for a rank to load on a busy machine; the assertions on time are the lease's


def rank_pids() -> dict[int, int]:
    """{rank: pid} of the rank processes this process started."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == os.getpid() and b"lora_engine.multidevice.rank" in cmdline:
            rank = next(int(v[5:]) for v in environ if v.startswith(b"RANK="))
            found[rank] = int(entry.name)
    return found


def wait_for_event(settings, job_id: str, kind: str, after: int = 0):
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        with session_scope(settings) as s:
            events = [e for e in job_events(s, job_id) if e.kind == kind and e.id > after]
        if events:
            return events[0]
        time.sleep(0.3)
    raise AssertionError(f"no {kind} event for job {job_id} in {WAIT_S}s")


def in_thread(fn):
    out: dict = {}
    thread = threading.Thread(target=lambda: out.update(result=fn()))
    thread.start()
    return thread, out


def test_a_killed_rank_ends_the_attempt_within_the_lease_and_the_job_resumes(tmp_path):
    settings = load_settings({
        "LORAFLEET_HOME": str(tmp_path / "home"), "LORAFLEET_DATA_DIR": DATA_DIR,
        "LORAFLEET_WORKER_DEVICES": "2", "LORAFLEET_LEASE_SECONDS": "30", "LORAFLEET_HEARTBEAT_SECONDS": "5",
        "LORAFLEET_CHECKPOINT_EVERY": "5"})
    try:
        with session_scope(settings) as s:
            create_tenant(s, "acme", max_running=2)
            job_id = submit_job(s, "acme", SPEC, settings=settings).id

        thread, out = in_thread(lambda: run_job(job_id, worker_id="w:1", settings=settings, cache=None))
        checkpoint = wait_for_event(settings, job_id, "checkpoint")
        ranks = rank_pids()
        assert sorted(ranks) == [0, 1]
        os.kill(ranks[1], signal.SIGKILL)
        thread.join(timeout=settings.lease_seconds)  # the attempt ends within its lease...
        assert not thread.is_alive()
        first = out["result"]
        assert first.outcome == "requeued", first.detail
        assert "RankFailed: rank 1 of 2 was killed by signal 9" in first.detail
        assert rank_pids() == {}  # ...and takes every rank with it
        with session_scope(settings) as s:
            job = s.get(Job, job_id)
            assert (job.state, job.attempts) == ("queued", 1)

        thread, out = in_thread(lambda: run_job(job_id, worker_id="w:1", settings=settings, cache=None))
        resumed = wait_for_event(settings, job_id, "resumed", after=checkpoint.id)
        assert resumed.data["step"] >= checkpoint.data["step"]  # from the last checkpoint, not from 0
        with session_scope(settings) as s:
            cancel_job(s, job_id)
        thread.join(timeout=WAIT_S)
        assert out["result"].outcome == "cancelled"  # the cancel reached rank 0: every rank stopped
        assert rank_pids() == {}
        with session_scope(settings) as s:
            job = s.get(Job, job_id)
            usage = s.execute(select(Usage.device_seconds, Usage.wall_seconds).where(Usage.job_id == job_id)
                              .order_by(Usage.attempt)).all()
        assert job.state == "cancelled"
        assert len(usage) == 2 and all(abs(d - 2 * w) < 1e-6 for d, w in usage)  # 2 devices billed
    finally:
        for pid in rank_pids().values():  # a failed assertion must not leave ranks training
            os.kill(pid, signal.SIGKILL)
        forget_engine(settings.database_url)
