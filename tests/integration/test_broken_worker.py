"""A worker with a broken environment (its data folder missing) does not eat the queue: the jobs
it claims go back with their attempts unchanged, after `unhealthy_after` of them it takes itself
out of service (`lorafleet status` says so, and why), and a healthy worker then runs them all.
Real worker processes on the embedded registry and broker, tiny jobs."""

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
    start_worker,
    stop_worker,
    wait_for,
    worker_env,
)

pytestmark = pytest.mark.integration

TINY = {"task": "sst2", "method": "lora", "rank": 4, "base_model": "tiny-bert", "max_steps": 2,
        "batch_size": 4, "eval_size": 8}
TENANTS = ("north", "south", "west")  # one job each: fair share hands each to the broken worker once


def _status_workers(env: dict[str, str]) -> dict[str, dict]:
    out = subprocess.run([sys.executable, "-m", "orchestrator.cli.main", "status", "--json"], env=env,
                         cwd=ROOT, capture_output=True, text=True, timeout=60, check=True)
    return {w["worker"]: w for w in json.loads(out.stdout)["workers"]}


def _start(env: dict[str, str], home: Path, name: str) -> tuple[subprocess.Popen, str]:
    log = home / f"{name}.log"
    proc = start_worker(env, log, name=name)
    wait_for(lambda: " ready." in log.read_text() or proc.poll() is not None, WORKER_START_TIMEOUT_S,
             f"{name} to start")
    assert proc.poll() is None, log.read_text()[-3000:]
    return proc, f"{name}-{os.getpid()}@{socket.gethostname()}:{proc.pid}"


def test_a_worker_without_its_data_folder_takes_itself_out_of_service(tmp_path: Path):
    env = worker_env(tmp_path)
    missing = tmp_path / "no-data"
    settings = load_settings(env)
    procs = []
    try:
        sick, sick_id = _start({**env, "LORAFLEET_DATA_DIR": str(missing)}, tmp_path, "sick")
        procs.append(sick)
        jobs = []
        with session_scope(settings) as s:
            for slug in TENANTS:
                create_tenant(s, slug)
                jobs.append(submit_job(s, slug, TINY, settings=settings).id)
        announce_jobs(jobs, settings=settings)

        def sick_state() -> str | None:
            with session_scope(settings) as s:
                workers = fleet_status(s, lease_seconds=settings.lease_seconds).workers
            return next(w.state for w in workers if w.worker == sick_id)

        wait_for(lambda: sick_state() == "unhealthy", 120, "the broken worker to take itself out of service")
        # A fresh message too: it waits in the queue (with those the faults re-sent) for a healthy worker.
        announce_jobs(jobs[:1], settings=settings)
        healthy, healthy_id = _start(env, tmp_path, "healthy")
        procs.append(healthy)
        with session_scope(settings) as s:
            handed_back = {j: [e for e in job_events(s, j) if e.kind == "requeued"] for j in jobs}
        for job_id, requeued in handed_back.items():
            assert len(requeued) == 1 and requeued[0].data == {
                "attempt": 0, "released": False, "worker_fault": True, "worker": sick_id, "step": None}
            assert f"data folder {missing} is missing (LORAFLEET_DATA_DIR)" in requeued[0].message, job_id

        def finished() -> list | None:
            with session_scope(settings) as s:
                found = [get_job(s, j).job for j in jobs]
            return found if all(j.state in ("succeeded", "failed", "cancelled") for j in found) else None

        for job in wait_for(finished, 120, "the healthy worker to run the jobs"):
            # The broken worker's claims used no attempt: the healthy worker's was the first.
            assert (job.state, job.attempts, job.lease_owner) == ("succeeded", 1, None)
        with session_scope(settings) as s:
            claims = [e.data["worker"] for j in jobs for e in job_events(s, j) if e.kind == "claimed"]
        # Three claims by the broken worker, then none while messages waited; one each by the healthy one.
        assert sorted(claims) == sorted([sick_id] * 3 + [healthy_id] * 3)
        seen = _status_workers(env)
        assert (seen[sick_id]["state"], seen[sick_id]["alive"]) == ("unhealthy", False)
        assert f"data folder {missing} is missing" in seen[sick_id]["reason"]
        assert seen[healthy_id]["state"] == "alive" and seen[healthy_id]["reason"] is None
    finally:
        for proc in procs:
            stop_worker(proc)
        close_clients()
        db.forget_engine(settings.database_url)
