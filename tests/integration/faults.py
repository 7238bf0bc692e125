"""A small fleet for the fault tests: two real workers on one registry and broker, short leases,
and (cluster) a real reconciler process, plus the exactly-once check every fault test ends with.

Leases, heartbeats and reconciler passes are seconds here (set through the environment, as an
operator would), so a killed worker is noticed in seconds instead of the production minute.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lora_engine.adapters.io import adapter_files_digest
from orchestrator.config import Settings, load_settings
from orchestrator.registry.db import session_scope
from orchestrator.registry.models import Adapter, Job, Usage
from tests.integration.workers import (
    ROOT,
    WORKER_START_TIMEOUT_S,
    LiveWorker,
    start_worker,
    stop_worker,
    wait_for,
)

TERMINAL = {"succeeded", "failed", "cancelled"}
# How long a folder published by another job of the tenant may wait for its registry row.
ORPHAN_GRACE_S = 10.0
SHORT_LEASES = {
    "LORAFLEET_LEASE_SECONDS": "8",
    "LORAFLEET_HEARTBEAT_SECONDS": "1",
    "LORAFLEET_RECONCILE_EVERY_S": "1",
    "LORAFLEET_CHECKPOINT_EVERY": "5",
    "LORAFLEET_DIVERGENCE_FACTOR": "3",
    "LORAFLEET_DIVERGENCE_PATIENCE": "3",
    "LORAFLEET_TENANT_MAX_RUNNING": "2",
}
# A bound on noticing a dead worker with SHORT_LEASES: lease + grace + one reconciler pass, with
# room for a loaded 2-core machine.
NOTICE_BOUND_S = 8 + 5 + 1 + 20


@dataclass
class Fleet:
    settings: Settings
    env: dict[str, str]
    home: Path
    mode: str
    workers: dict[str, LiveWorker] = field(default_factory=dict)
    reconciler: subprocess.Popen | None = None

    def start(self, name: str) -> LiveWorker:
        log_path = self.home / f"{name}-{len([p for p in self.home.glob(f'{name}*.log')])}.log"
        proc = start_worker(self.env, log_path, name=name)
        worker = LiveWorker(self.settings, self.env, proc, log_path, self.mode)
        self.workers[name] = worker
        return worker

    def wait_ready(self, *names: str) -> None:
        for name in names or tuple(self.workers):
            worker = self.workers[name]
            wait_for(lambda w=worker: " ready." in w.log(), WORKER_START_TIMEOUT_S, f"{name} to start",
                     worker)

    def ensure_running(self) -> None:
        """Both workers up (restart the one a test killed)."""
        dead = [n for n, w in self.workers.items() if not w.alive()]
        for name in dead:
            self.start(name)
        if dead:
            self.wait_ready(*dead)

    def owner(self, job_id: str) -> tuple[str, LiveWorker] | None:
        """The worker process holding the job's lease (the lease owner is `<hostname>:<pid>`)."""
        with session_scope(self.settings) as s:
            owner = s.get(Job, job_id).lease_owner
        if not owner:
            return None
        pid = int(owner.rsplit(":", 1)[1])
        return next(((n, w) for n, w in self.workers.items() if w.proc.pid == pid), None)

    def log(self) -> str:
        return "\n".join(f"--- {n}\n{w.log()[-3000:]}" for n, w in self.workers.items())


def start_reconciler(env: dict[str, str], log_path: Path, every: float = 1.0) -> subprocess.Popen:
    """`lorafleet reconcile --every N` as its own process: the cluster's reconciler container."""
    argv = [sys.executable, "-m", "orchestrator.cli.main", "reconcile", "--every", str(every),
            "--redispatch-after", "2"]
    log = open(log_path, "w")  # noqa: SIM115 (the process writes it for its whole life)
    return subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)


def stop_process(proc: subprocess.Popen | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def stop_fleet(fleet: Fleet) -> None:
    for worker in fleet.workers.values():
        stop_worker(worker.proc)
    stop_process(fleet.reconciler)


def fleet_env(base: dict[str, str], **extra: str) -> dict[str, str]:
    return {**base, **SHORT_LEASES, **extra}


def make_fleet(env: dict[str, str], home: Path, mode: str, names: tuple[str, ...] = ("fa", "fb")) -> Fleet:
    fleet = Fleet(load_settings(env), env, home, mode)
    for name in names:
        fleet.start(name)
    if mode == "cluster":
        fleet.reconciler = start_reconciler(env, home / "reconciler.log")
    fleet.wait_ready()
    return fleet


def iter_rows(settings: Settings, model: Any, job_id: str) -> Iterator[Any]:
    from sqlalchemy import select

    with session_scope(settings) as s:
        yield from s.scalars(select(model).where(model.job_id == job_id)).all()


def assert_exactly_once(settings: Settings, job_id: str) -> dict[str, Any]:
    """One succeeded job row, one adapter row, the adapter's files on disk hashing to the
    registry's sha256, one usage row per attempt; returns the job's detail."""
    from orchestrator.services.jobs import get_job

    with session_scope(settings) as s:
        detail = get_job(s, job_id).to_dict()
    assert detail["state"] == "succeeded", detail
    adapters = list(iter_rows(settings, Adapter, job_id))
    assert len(adapters) == 1, adapters
    path = Path(adapters[0].path)
    assert adapter_files_digest(path) == (adapters[0].sha256, adapters[0].bytes)
    attempts = sorted(u.attempt for u in iter_rows(settings, Usage, job_id))
    assert attempts == sorted(set(attempts)) and attempts[-1] == detail["attempts"], attempts
    # No other adapter folder of this job's tenant was left behind (an orphan of a lost attempt).
    # Another job of the tenant may be between publishing its folder (a rename) and committing its
    # row: that folder is registered within moments, an orphan never is.
    tenant_root = settings.artifacts / detail["tenant_id"]

    def unregistered() -> set[str]:
        folders = {p.name for p in tenant_root.iterdir() if p.is_dir() and not p.name.startswith(".")}
        known = {Path(a.path).name for a in _tenant_adapters(settings, detail["tenant_id"])}
        return folders - {"checkpoints"} - known

    deadline = time.monotonic() + ORPHAN_GRACE_S
    while unregistered() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not unregistered(), unregistered()
    return detail


def _tenant_adapters(settings: Settings, tenant_id: str) -> list[Adapter]:
    from sqlalchemy import select

    with session_scope(settings) as s:
        return list(s.scalars(select(Adapter).where(Adapter.tenant_id == tenant_id)).all())


def sigkill(worker: LiveWorker) -> None:
    os.killpg(worker.proc.pid, signal.SIGKILL)
    worker.proc.wait(timeout=10)
