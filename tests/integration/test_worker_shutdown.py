"""Stopping a worker mid-job (a deploy, a scale-down): the job checkpoints, goes back to the
queue, and the next worker resumes it from that checkpoint instead of starting over. Meanwhile
`lorafleet status` shows each worker by its own heartbeat: on the job, idle, stopped."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.announce import announce_jobs
from orchestrator.config import load_settings
from orchestrator.dispatch import close_clients
from orchestrator.registry import db
from orchestrator.registry.db import session_scope
from orchestrator.services.jobs import get_job, job_events, submit_job
from orchestrator.services.status import fleet_status
from orchestrator.services.tenants import create_tenant
from tests.integration.workers import (
    ROOT,
    WORKER_START_TIMEOUT_S,
    LiveWorker,
    start_worker,
    stop_worker,
    wait_for,
    worker_env,
)

pytestmark = pytest.mark.integration


def _start(env: dict[str, str], home: Path, name: str) -> LiveWorker:
    worker = LiveWorker(
        load_settings(env), env, start_worker(env, home / f"{name}.log"), home / f"{name}.log", "embedded"
    )
    wait_for(lambda: " ready." in worker.log(), WORKER_START_TIMEOUT_S, f"{name} to start", worker)
    return worker


def test_sigterm_requeues_the_running_job_and_the_next_worker_resumes_it(tmp_path: Path):
    env = {**worker_env(tmp_path), "LORAFLEET_CHECKPOINT_EVERY": "1000"}  # only the stop checkpoints
    settings = load_settings(env)
    first = _start(env, tmp_path, "first")
    second = None
    try:
        # It created the registry: without Alembic's start-up chatter in its log.
        assert "new registry" in first.log()
        assert "setup plugin" not in first.log() and "Context impl" not in first.log()
        with session_scope(settings) as s:
            create_tenant(s, "deploys", max_running=1)
            job_id = submit_job(
                s,
                "deploys",
                {
                    "task": "sst2",
                    "base_model": "tiny-bert",
                    "rank": 4,
                    # Long enough that a quiet machine cannot finish it between two polls.
                    "max_steps": 400,
                    "batch_size": 4,
                    "eval_size": 16,
                },
                # One attempt only: a graceful shutdown's requeue must not use it up.
                max_attempts=1,
            ).id
        announce_jobs([job_id], settings=settings)

        def step() -> int:
            with session_scope(settings) as s:
                return get_job(s, job_id).job.progress_step or 0

        wait_for(lambda: step() >= 3, 90, "the job to train a few steps", first)
        with session_scope(settings) as s:
            seen = {w.worker: w for w in fleet_status(s, lease_seconds=settings.lease_seconds).workers}
        assert (seen[worker_id(first)].state, seen[worker_id(first)].job) == ("alive", job_id)
        stop_worker(first.proc)
        assert first.proc.returncode == 0
        with session_scope(settings) as s:
            detail = get_job(s, job_id).to_dict()
            events = list(job_events(s, job_id))
        assert detail["state"] == "queued" and detail["attempts"] == 1
        requeued = [e for e in events if e.kind == "requeued"]
        assert len(requeued) == 1 and "worker shutting down" in requeued[0].message
        assert requeued[0].data["released"] is True
        ckpt = settings.artifacts / detail["tenant_id"] / "checkpoints" / job_id
        saved = [p.name for p in ckpt.glob("step-*")]
        assert len(saved) == 1  # only the stop wrote one (periodic checkpoints every 1000 steps)
        stopped_at = int(saved[0].removeprefix("step-"))
        # Heartbeats are throttled, so the registry's progress may trail the step the stop saved.
        assert 3 <= detail["progress"]["step"] <= stopped_at < 400

        second = _start(env, tmp_path, "second")
        wait_for(
            lambda: get_state(settings, job_id) in ("succeeded", "failed", "cancelled"),
            90,
            "the resumed job to finish",
            second,
        )
        with session_scope(settings) as s:
            detail = get_job(s, job_id).to_dict()
            events = list(job_events(s, job_id))
        assert detail["state"] == "succeeded" and detail["attempts"] == 2
        assert [u["attempt"] for u in detail["usage"]] == [1, 2]
        claims = [i for i, e in enumerate(events) if e.kind == "claimed"]
        assert len(claims) == 2
        # Resumed, not restarted: from the stop's checkpoint, and every step after it is new.
        resumed = next(e for e in events[claims[1] :] if e.kind == "resumed")
        assert resumed.data["step"] == stopped_at
        progress = [e for e in events[claims[1] :] if e.kind == "progress" and e.data["step"]]
        assert progress and progress[0].data["step"] > stopped_at

        # The idle worker is alive by its own heartbeat; the first one said it stopped.
        idle = wait_for(lambda: (w := status_workers(env).get(worker_id(second))) and w["job"] is None and w,
                        90, "the second worker to show idle", second)
        assert idle["state"] == "alive" and idle["pid"] == second.proc.pid and idle["device"] == "cpu"
        assert status_workers(env)[worker_id(first)]["state"] == "stopped"
        stop_worker(second.proc)
        assert second.proc.returncode == 0
        assert status_workers(env)[worker_id(second)]["state"] == "stopped"
    finally:
        stop_worker(first.proc)
        if second is not None:
            stop_worker(second.proc)
        close_clients()
        db.forget_engine(settings.database_url)


def worker_id(worker: LiveWorker) -> str:
    """The id the worker registers and leases under: `<celery node>:<pid>` (start_worker's node)."""
    return f"it-{os.getpid()}@{socket.gethostname()}:{worker.proc.pid}"


def status_workers(env: dict[str, str]) -> dict[str, dict]:
    """`lorafleet status --json`'s workers, by id."""
    out = subprocess.run([sys.executable, "-m", "orchestrator.cli.main", "status", "--json"], env=env,
                         cwd=ROOT, capture_output=True, text=True, timeout=60, check=True)
    return {w["worker"]: w for w in json.loads(out.stdout)["workers"]}


def get_state(settings, job_id: str) -> str:
    with session_scope(settings) as s:
        return get_job(s, job_id).job.state
