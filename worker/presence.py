"""A worker process in the registry's `workers` table, so `lorafleet status` sees idle workers too.

The process that runs the tasks registers (the solo pool's worker process at `worker_ready`; with
the prefork pool each child after its fork, never the parent), then a daemon thread renews
`last_seen` every `heartbeat_seconds`, idle or training, with the job it is on and, once the
process is unhealthy (`worker.health`), why. The task names its job when it starts and ends one
(`on_job`), so the status does not wait a beat for it; an unhealthy process says so at once. A
graceful shutdown marks the row stopped once the running job has checkpointed and let go.

Registry trouble never stops a worker: a failed beat is logged and the next one tries again (and
registers anew if the row is missing). The thread opens a session per beat through the process's
engine, which a forked child drops first (`worker.celery_app._after_fork`), so no connection is
shared across a fork. `worker_id` is the one spelling of the worker id leases carry.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from celery.signals import worker_init, worker_process_shutdown, worker_shutdown

from orchestrator.config import Settings
from worker import health

log = logging.getLogger(__name__)

_node: str | None = None  # the Celery node name (`--hostname`), set before any fork
_current: Presence | None = None


def worker_id(node: str | None) -> str:
    """The id of this process as a lease owner and a `workers` row: `<celery node>:<pid>`."""
    return f"{node or 'worker'}:{os.getpid()}"


def device() -> tuple[str, str]:
    """(kind, name) of the device this process's jobs run on, named as jobs bill it."""
    from lora_engine.device import pick_device

    info = pick_device()
    return info.device.type, info.name


class Presence(threading.Thread):
    def __init__(self, settings: Settings, node: str | None):
        super().__init__(name="presence", daemon=True)
        self.settings = settings
        self.id = worker_id(node)
        self.job: str | None = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()  # one registry write at a time (thread, task, shutdown)

    def register(self) -> None:
        from orchestrator.registry.db import session_scope
        from orchestrator.services.workers import WorkerInfo, register_worker

        kind, name = device()
        info = WorkerInfo(self.id, socket.gethostname(), os.getpid(), self.settings.queue, kind, name,
                          float(self.settings.heartbeat_seconds), self.settings.worker_devices)
        with session_scope(self.settings) as session:
            register_worker(session, info)

    def beat(self) -> None:
        """Renew `last_seen` with the current job and, once unhealthy, why; register again if the
        row is gone (the next beat says it is unhealthy again)."""
        from orchestrator.registry.db import session_scope
        from orchestrator.services.workers import worker_beat

        with self._lock:
            if self._stopping.is_set():
                return
            try:
                with session_scope(self.settings) as session:
                    known = worker_beat(session, self.id, self.job, unhealthy=health.unhealthy())
                if not known:
                    self.register()
            except Exception as exc:  # the registry is briefly away: the next beat tries again
                log.warning("presence: heartbeat of worker %s failed: %s", self.id, exc)

    def run(self) -> None:
        while not self._stopping.wait(self.settings.heartbeat_seconds):
            self.beat()

    def stop(self) -> None:
        """Graceful shutdown: no more beats, the row marked stopped."""
        from orchestrator.registry.db import session_scope
        from orchestrator.services.workers import mark_worker_stopped

        with self._lock:
            self._stopping.set()
            try:
                with session_scope(self.settings) as session:
                    mark_worker_stopped(session, self.id)
            except Exception as exc:  # it will show as lost once its beats are missed
                log.warning("presence: could not mark worker %s stopped: %s", self.id, exc)


def start(settings: Settings) -> Presence | None:
    """Register this process and start its heartbeat thread (once per process)."""
    global _current
    if _current is not None and _current.id == worker_id(_node):
        return _current
    presence = Presence(settings, _node)
    try:
        presence.register()
    except Exception as exc:  # start anyway: the first beat registers it
        log.warning("presence: could not register worker %s: %s", presence.id, exc)
    presence.start()
    health.on_unhealthy(lambda _reason: presence.beat())  # the status shows it at once
    _current = presence
    log.info("presence: worker %s registered, heartbeat every %ss", presence.id, settings.heartbeat_seconds)
    return presence


def stop() -> None:
    global _current
    if _current is not None and _current.id == worker_id(_node):
        _current.stop()
    _current = None


@contextmanager
def on_job(job_id: str) -> Iterator[None]:
    """While a task runs its job: the worker's row names it (written at once, and every beat)."""
    presence = _current
    if presence is None:
        yield
        return
    presence.job = job_id
    presence.beat()
    try:
        yield
    finally:
        presence.job = None
        presence.beat()


def is_prefork(controller: Any) -> bool:
    from celery.concurrency.prefork import TaskPool

    pool_cls = getattr(controller, "pool_cls", None)
    return isinstance(pool_cls, type) and issubclass(pool_cls, TaskPool)


@worker_init.connect(weak=False)
def _remember_node(sender: Any = None, **_: Any) -> None:
    global _node
    _node = getattr(sender, "hostname", None)


@worker_shutdown.connect(weak=False)
def _on_shutdown(**_: Any) -> None:
    stop()


@worker_process_shutdown.connect(weak=False)
def _on_child_shutdown(**_: Any) -> None:
    stop()
