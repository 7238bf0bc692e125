"""The worker as a process tree: `lorafleet worker` → its Celery worker → the prefork pool and
the embedded beat. Whichever of them is killed with SIGKILL, everything below it stops within
seconds (no orphan goes on claiming jobs beside the worker a supervisor restarts)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.workers import ROOT, WORKER_START_TIMEOUT_S, wait_for, worker_env

pytestmark = pytest.mark.integration

GONE_WITHIN_S = 15  # a warm shutdown of an idle worker, with a slow machine's margin


def _living() -> dict[int, int]:
    """{pid: parent pid} of every process that is not a zombie."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # ended meanwhile
            continue
        state, ppid = stat.rsplit(")", 1)[1].split()[:2]
        if state not in ("Z", "X"):
            found[int(entry.name)] = int(ppid)
    return found


def _descendants(pid: int) -> set[int]:
    living = _living()
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in living.items() if parent in frontier} - found
        found |= frontier
    return found


def _start(tmp_path: Path, name: str, started: list[set[int]]) -> tuple[subprocess.Popen, set[int]]:
    """`lorafleet worker --concurrency 2 --beat` (embedded), once ready: it and its process tree
    (every process of which is added to `started` as soon as it is seen, for the clean-up)."""
    log_path = tmp_path / f"{name}.log"
    log = open(log_path, "w")  # noqa: SIM115 (the worker writes it for its whole life)
    cli = subprocess.Popen([sys.executable, "-m", "orchestrator.cli.main", "worker", "--concurrency", "2",
                            "--beat"], env=worker_env(tmp_path / name), cwd=ROOT, stdout=log,
                           stderr=subprocess.STDOUT, start_new_session=True)
    started.append({cli.pid})
    wait_for(lambda: " ready." in log_path.read_text() or cli.poll() is not None, WORKER_START_TIMEOUT_S,
             f"{name} to start")
    assert cli.poll() is None, log_path.read_text()[-3000:]
    # The Celery worker, its two pool processes and the beat process.
    def whole_tree() -> set[int] | None:
        tree = _descendants(cli.pid)
        started[-1] |= tree
        return tree if len(tree) >= 4 else None

    return cli, wait_for(whole_tree, 30, f"{name}'s pool and beat processes")


def _assert_all_gone(pids: set[int], what: str) -> None:
    wait_for(lambda: not (pids & set(_living())), GONE_WITHIN_S, what)


def test_sigkill_of_lorafleet_worker_or_of_its_celery_worker_leaves_no_orphan(tmp_path: Path):
    started: list[set[int]] = []
    try:
        cli, tree = _start(tmp_path, "first", started)
        os.kill(cli.pid, signal.SIGKILL)
        cli.wait(timeout=10)
        _assert_all_gone(tree, "the Celery worker, its pool and beat to stop after `lorafleet worker` died")

        cli, tree = _start(tmp_path, "second", started)
        celery = {pid for pid, parent in _living().items() if parent == cli.pid}
        assert len(celery) == 1
        os.kill(celery.pop(), signal.SIGKILL)  # e.g. the kernel's OOM killer
        _assert_all_gone(tree, "the pool and beat processes to stop after their Celery worker died")
        assert cli.wait(timeout=10) != 0  # and `lorafleet worker` reports it
    finally:
        for pids in started:
            for pid in (pids | set().union(*map(_descendants, pids))) & set(_living()):
                os.kill(pid, signal.SIGKILL)
