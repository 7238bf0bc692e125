"""Real worker processes for the integration tests: start, stop, wait, and their environment.

Modes:
- `embedded`: SQLite registry + Celery over SQLite (`sqla+sqlite`) in a temporary LORAFLEET_HOME;
- `cluster`: a fresh PostgreSQL database (created and dropped here, migrated to head) + Redis
  database 11 (flushed before and after; `LORAFLEET_TEST_REDIS_URL` picks another, so checkouts
  tested side by side never share a queue).

The worker is `celery -A worker.celery_app worker --pool solo`, started once per module and mode
(its start-up is the slow part), with tiny models and few steps so the whole suite stays short.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from orchestrator.config import Settings
from orchestrator.dispatch import worker_command

ROOT = Path(__file__).resolve().parents[2]
REDIS_URL = os.environ.get("LORAFLEET_TEST_REDIS_URL", "redis://127.0.0.1:6379/11")
DATA_DIR = os.environ.get("LORAFLEET_DATA_DIR", str(ROOT.parent / "shared" / "data"))
WORKER_START_TIMEOUT_S = 90
MODES = ["embedded", "cluster"]


@dataclass
class LiveWorker:
    """A running worker and the settings (same registry, broker, artifacts) to talk to it."""

    settings: Settings
    env: dict[str, str]
    proc: subprocess.Popen
    log_path: Path
    mode: str

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None


def wait_for(
    predicate: Callable[[], Any],
    timeout: float,
    what: str,
    worker: LiveWorker | None = None,
    interval: float = 0.2,
) -> Any:
    """Poll until `predicate()` is truthy; fail with the worker's log tail on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if worker is not None and not worker.alive():
            pytest.fail(
                f"worker exited ({worker.proc.returncode}) while waiting for {what}:\n{worker.log()[-4000:]}"
            )
        time.sleep(interval)
    tail = worker.log()[-4000:] if worker is not None else ""
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}\n{tail}")


def flush_redis() -> None:
    import redis

    redis.Redis.from_url(REDIS_URL).flushdb()


def start_worker(env: dict[str, str], log_path: Path, name: str | None = None) -> subprocess.Popen:
    argv = worker_command(queue="gpu", hostname=f"{name or 'it'}-{os.getpid()}@%h", without_heartbeat=True)
    log = open(log_path, "w")  # noqa: SIM115 (the worker writes it for its whole life)
    return subprocess.Popen(
        argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )


def stop_worker(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)  # warm shutdown: a running job checkpoints and is requeued
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def worker_env(home: Path) -> dict[str, str]:
    """The environment of a worker (and its test) using the embedded registry and broker in `home`."""
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "LORAFLEET_HOME": str(home),
        "LORAFLEET_ARTIFACTS": str(home / "artifacts"),
        "LORAFLEET_DATA_DIR": DATA_DIR,
        "LORAFLEET_DEVICE": "cpu",
        "LORAFLEET_CHECKPOINT_EVERY": "2",
        "LORAFLEET_LEASE_SECONDS": "60",
        "LORAFLEET_TENANT_MAX_RUNNING": "2",
        # Tests write their data files under the temporary folder.
        "LORAFLEET_DATA_ROOTS": f"{home.parent}:{ROOT}",
        "PYTHONPATH": str(ROOT),
    }
    for name in ("LORAFLEET_DATABASE_URL", "LORAFLEET_BROKER_URL"):
        env.pop(name, None)
    return env
