"""A child process dies with its parent: Linux's `PR_SET_PDEATHSIG`, and the race it leaves.

`lorafleet worker` starts the Celery worker in a session of its own (a terminal's Ctrl-C must
reach it once, forwarded, not twice). Killed with SIGKILL, it forwards nothing: without a
lifeline its Celery worker lives on, orphaned, claiming jobs where nobody sees it, and a
supervisor that restarts `lorafleet worker` ends up with two. So every process of a worker asks
the kernel for a signal when its parent dies:

    lorafleet worker ──(SIGTERM: warm shutdown, the running job checkpoints and is requeued)──▶
      celery worker ──(SIGTERM)──▶ embedded beat (`--beat`)
                    ──(SIGKILL, set by Celery's prefork pool itself)──▶ pool children

The race: a parent that died before the child's `prctl` leaves nothing for the kernel to send,
so after the `prctl` the child compares `getppid()` with the parent it expects and, if they
differ, sends itself the signal. The signal is sent when the *thread* that forked the child
ends; the callers fork from their main thread, which lives as long as its children.

Elsewhere than Linux there is no lifeline (`supported()` is False).
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1


def _load_prctl():
    """libc's prctl, looked up once in the parent: a forked child only calls it."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # a libc without prctl (not glibc or musl)
        return None
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    return prctl


_prctl = _load_prctl()


def supported() -> bool:
    return _prctl is not None


def die_with_parent(parent_pid: int, sig: int = signal.SIGTERM) -> None:
    """In a child: receive `sig` when the parent (`parent_pid`) dies, or now if it already has.

    Safe between fork and exec (`subprocess.Popen(preexec_fn=...)`): one system call, no
    allocation, no lock; the setting survives `exec` (of anything but a set-user-ID program).
    """
    if _prctl is None:
        return
    if _prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
        return  # the kernel refused: nothing to hold on to; the parent's own signals still reach us
    if os.getppid() != parent_pid:  # the parent died before the prctl: the kernel will not tell us
        os.kill(os.getpid(), sig)


def child_dies_with_me(sig: int = signal.SIGTERM):
    """A `preexec_fn` for `subprocess.Popen`: the child gets `sig` when this process dies."""
    parent = os.getpid()

    def preexec() -> None:
        die_with_parent(parent, sig)

    return preexec
