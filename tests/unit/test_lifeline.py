"""`orchestrator.lifeline`: a child asks for a signal when its parent dies, and covers the race
where the parent died before it asked (real processes, Linux)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from orchestrator import lifeline

WAIT = "import time; time.sleep(30)"


def test_a_parent_that_died_before_the_prctl_is_noticed_at_once() -> None:
    assert lifeline.supported()
    # The expected parent is not our parent (as if it had died and we were reparented).
    code = f"from orchestrator.lifeline import die_with_parent; die_with_parent(1); {WAIT}"
    done = subprocess.run([sys.executable, "-c", code], timeout=20)
    assert done.returncode == -signal.SIGTERM


def test_a_child_started_with_the_lifeline_stops_when_its_parent_is_killed() -> None:
    # parent: starts the child with the lifeline, prints its pid, then waits to be killed.
    parent_code = (
        "import subprocess, sys; from orchestrator.lifeline import child_dies_with_me\n"
        f"child = subprocess.Popen([sys.executable, '-c', {WAIT!r}], preexec_fn=child_dies_with_me())\n"
        f"print(child.pid, flush=True); {WAIT}")
    parent = subprocess.Popen([sys.executable, "-c", parent_code], stdout=subprocess.PIPE, text=True)
    child_pid = int(parent.stdout.readline())
    try:
        assert _alive(child_pid)
        parent.kill()
        parent.wait(timeout=10)
        deadline = time.monotonic() + 10
        while _alive(child_pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(child_pid)
    finally:
        if _alive(child_pid):
            os.kill(child_pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    """Running (not gone, not a zombie waiting for its new parent to reap it)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False
