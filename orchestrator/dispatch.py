"""A small Celery client that tells the workers a job is waiting.

The orchestrator never imports `worker`: it sends `lorafleet.run_job` by name to the `gpu` queue.
This module is only the broker side (no registry): recording a dispatch and the reconciler's
passes live in `orchestrator.announce`.
The message carries only the job id; the registry is the source of truth, so a lost or duplicated
message costs nothing (the reconciler re-sends, a second claim finds nothing). Celery is imported
inside the functions so that the CLI starts without it.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from celery import Celery

    from orchestrator.config import Settings

RUN_JOB = "lorafleet.run_job"
RECONCILE = "lorafleet.reconcile"

_clients: dict[str, Celery] = {}


def get_settings() -> Settings:
    """The process's settings, imported on first use: the CLI imports this module at start-up."""
    from orchestrator.config import get_settings as settings

    return settings()


def celery_config(settings: Settings) -> dict[str, Any]:
    """Celery settings shared by the sending client and the worker app.

    Long GPU jobs: the message is acknowledged only after the job ends (`task_acks_late`), a
    worker takes one message at a time (`worker_prefetch_multiplier=1`), and a message whose
    worker died is returned to the queue (`task_reject_on_worker_lost`). Redis redelivers an
    unacknowledged message after `visibility_timeout`, so that must exceed the longest job.
    """
    redis = settings.broker_url.startswith(("redis://", "rediss://"))
    # Only Redis redelivers by timeout; the SQL transport rejects unknown options (see worker.transport).
    options: dict[str, Any] = {"visibility_timeout": settings.visibility_timeout} if redis else {}
    return {
        "broker_url": settings.broker_url,
        "broker_transport_options": options,
        "broker_connection_retry_on_startup": True,
        "task_default_queue": settings.queue,
        "task_routes": {RUN_JOB: {"queue": settings.queue}},
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_ignore_result": True,
        "task_serializer": "json",
        "accept_content": ["json"],
        "worker_hijack_root_logger": False,
        # Task events feed Flower; they need a broadcast exchange, which the SQL transport lacks.
        "worker_send_task_events": redis,
        "task_send_sent_event": redis,
    }


def ensure_broker_dir(broker_url: str) -> None:
    """Create the folder of an embedded SQLite broker file (SQLite creates files, not folders)."""
    prefix = "sqla+sqlite:///"
    if broker_url.startswith(prefix) and broker_url != prefix + ":memory:":
        Path(broker_url[len(prefix) :]).parent.mkdir(parents=True, exist_ok=True)


def celery_client(settings: Settings | None = None) -> Celery:
    """A sending-only Celery app for this broker URL (one per process and URL)."""
    settings = settings or get_settings()
    client = _clients.get(settings.broker_url)
    if client is None:
        from celery import Celery

        ensure_broker_dir(settings.broker_url)
        client = Celery("lorafleet-client", set_as_current=False)
        client.conf.update(celery_config(settings))
        _clients[settings.broker_url] = client
    return client


def send_run_job(job_id: str, *, settings: Settings | None = None, countdown: float | None = None) -> None:
    """Queue one `lorafleet.run_job(job_id)` message on the GPU queue: the one function that sends
    a job message (submit, the runner's re-dispatch after a back-off, the reconciler all call it
    through `orchestrator.announce`)."""
    settings = settings or get_settings()
    celery_client(settings).send_task(RUN_JOB, args=[str(job_id)], queue=settings.queue, countdown=countdown)


def close_clients() -> None:
    """Release broker connections (tests, and a CLI process about to exit)."""
    for client in _clients.values():
        client.close()
    _clients.clear()


def worker_argv(
    *, queue: str, concurrency: int = 1, loglevel: str = "info", hostname: str | None = None,
    beat: bool = False, without_heartbeat: bool = False,
) -> list[str]:
    """Arguments of `celery -A worker.celery_app worker` for one worker process.

    One job at a time per GPU: the solo pool runs the task in the worker's own process, so the
    warm base-model cache survives between jobs and nothing forks after CUDA is initialised.
    `--concurrency` > 1 (CPU-only machines) switches to the prefork pool.
    """
    pool = (
        ["--pool", "solo"] if concurrency == 1 else ["--pool", "prefork", "--concurrency", str(concurrency)]
    )
    argv = ["worker", "-Q", queue, *pool, "--loglevel", loglevel, "--without-gossip", "--without-mingle"]
    if hostname:
        argv += ["--hostname", hostname]
    if beat:
        argv.append("--beat")
    if without_heartbeat:  # short-lived local workers: nobody (Flower) watches their heartbeats
        argv.append("--without-heartbeat")
    return argv


def worker_command(**options) -> list[str]:
    """The whole command line of one worker process (`worker_argv` options)."""
    return [sys.executable, "-m", "celery", "-A", "worker.celery_app", *worker_argv(**options)]
