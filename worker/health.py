"""This worker process's health: how many jobs in a row its own environment failed, and whether
it still takes jobs.

A job whose attempt failed because the worker's own environment is broken (a worker fault in
`orchestrator.retries`: its working folder, data folder, model cache or artifacts root missing
or unreadable) goes back to the queue with its attempt given back. `worker.attempt` reports
every attempt here: a worker fault counts, any attempt its environment did not fail resets the
count.
At `Settings.unhealthy_after` faults in a row the process is unhealthy until it is restarted (a
black hole taken out of service): it claims nothing more, the listeners registered with
`on_unhealthy` run once (its presence writes the reason to its `workers` row, so `lorafleet
status` shows it `unhealthy`; the worker that consumes the queue stops taking messages from it,
so they go to healthy workers).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)

_lock = threading.Lock()
_faults = 0
_reason: str | None = None
_listeners: list[Callable[[str], None]] = []


def record_fault(fault: str, unhealthy_after: int) -> bool:
    """One more job handed back for `fault`; True when that made this process unhealthy."""
    global _faults, _reason
    with _lock:
        _faults += 1
        if _reason is not None or _faults < unhealthy_after:
            return False
        _reason = (f"its own environment failed {_faults} job(s) in a row; it claims no more until it "
                   f"is restarted; the last: {fault}")
        listeners = list(_listeners)
    log.error("worker unhealthy: %s", _reason)
    for listener in listeners:
        try:
            listener(_reason)
        except Exception:  # one listener failing must not keep the others from running
            log.exception("worker unhealthy: a listener failed")
    return True


def record_ok() -> None:
    """An attempt this worker's environment did not fail: the count starts again."""
    global _faults
    with _lock:
        _faults = 0


def unhealthy() -> str | None:
    """Why this process takes no more jobs (None: it does)."""
    return _reason


def on_unhealthy(listener: Callable[[str], None]) -> None:
    """Call `listener(reason)` once, when this process becomes unhealthy."""
    with _lock:
        _listeners.append(listener)


def reset() -> None:
    """Healthy again, no listeners (a forked child starts afresh; tests)."""
    global _faults, _reason
    with _lock:
        _faults, _reason = 0, None
        _listeners.clear()
