"""The Celery app of the GPU workers: configuration and lifecycle signals only.

Settings for long GPU jobs come from `orchestrator.dispatch.celery_config` (shared with the
sending client): acks late, prefetch 1, reject on worker lost, a Redis visibility timeout above
the longest job, the `gpu` queue. Here:

- the embedded broker (`sqla+sqlite`) is consumed through a transport polling every 0.1 s
  (`worker.transport`: the interval cannot be a transport option, it would reach create_engine);
- after a fork (prefork pool) each child drops the registry engines it inherited, so no two
  processes share a socket or SQLite handle, and forgets any warm model;
- the parent never touches CUDA: torch is imported by the task, inside the process that runs it
  (the solo pool runs tasks in the worker process itself; `lorafleet worker --gpus N` starts one
  such process per GPU);
- on shutdown the running job checkpoints and goes back to the queue (see `_shutting_down`);
- a worker owning K devices (`LORAFLEET_WORKER_DEVICES`) also consumes the queues of jobs of
  2..K devices, and a CUDA worker (`lora_engine.device.device_kind`, `LORAFLEET_DEVICE`) those of
  jobs that need CUDA (`orchestrator.dispatch.worker_queues`), whatever `-Q` named: the messages
  of the jobs it can claim, and no others;
- a worker whose own environment failed `unhealthy_after` jobs in a row stops consuming its
  queues (`worker.health`);
- an embedded worker runs the reconciler in a thread (`worker.reconciler`); a cluster runs
  `lorafleet reconcile --every` (its own container), or a beat schedule (`… worker --beat`);
- the process that runs the tasks registers in the `workers` table and heartbeats there, idle
  too (`worker.presence`): the solo worker at ready, each prefork child after its fork;
- every process dies with its parent (`orchestrator.lifeline`): the worker with `lorafleet
  worker` (set there), an embedded beat with the worker (here), prefork children (Celery's own).

Start a worker: `celery -A worker.celery_app worker -Q gpu --pool solo` or `lorafleet worker`.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from celery import Celery
from celery.signals import (
    beat_embedded_init,
    celeryd_after_setup,
    worker_init,
    worker_process_init,
    worker_process_shutdown,
    worker_ready,
    worker_shutdown,
    worker_shutting_down,
)

from orchestrator.config import get_settings
from orchestrator.dispatch import RECONCILE, celery_config, ensure_broker_dir, worker_queues
from worker import exporter, health, logs, preflight, presence  # noqa: F401 (they connect their signal handlers)
from worker.transport import consumer_broker_url

settings = get_settings()
ensure_broker_dir(settings.broker_url)
app = Celery("lorafleet", include=["worker.tasks"])
app.conf.update(celery_config(settings))
app.conf.update(
    broker_url=consumer_broker_url(settings.broker_url),
    beat_schedule={
        "reconcile": {
            "task": RECONCILE, "schedule": settings.reconcile_every_s, "options": {"queue": settings.queue}
        }
    },
    # Beat's schedule file goes under LORAFLEET_HOME, not the current directory.
    beat_schedule_filename=str(settings.home / "celerybeat-schedule"),
)


_worker_pid: int | None = None  # the worker process (the parent of its pool and embedded beat)


@worker_init.connect
def _remember_worker(**_: Any) -> None:
    global _worker_pid
    _worker_pid = os.getpid()


def consumed_queues() -> list[str]:
    """The queues this worker consumes: those of the jobs its devices can take, `-Q`'s first. Their
    kind comes from `device_kind` (fork-safe: the parent of a prefork pool asks too); the claim
    asks `pick_device`, the same rule."""
    from lora_engine.device import device_kind

    return worker_queues(settings.queue, settings.worker_devices, cuda=device_kind() == "cuda")


@celeryd_after_setup.connect
def _consume_device_queues(instance: Any = None, **_: Any) -> None:
    """The queues of the jobs this worker's devices can take (Celery's documented way to add
    queues a worker always consumes, beside its `-Q`)."""
    for queue in consumed_queues()[1:]:
        instance.app.amqp.queues.select_add(queue)


@beat_embedded_init.connect
def _beat_dies_with_worker(**_: Any) -> None:
    """`--beat` runs the scheduler in a child process: it stops when the worker dies, however
    it dies, instead of scheduling on for a worker that is gone."""
    from orchestrator.lifeline import die_with_parent

    if _worker_pid is not None:
        die_with_parent(_worker_pid)


@worker_process_init.connect
def _after_fork(**_: Any) -> None:
    """A forked pool child: drop inherited registry connections and any inherited warm model."""
    from orchestrator.registry.db import dispose_engines
    from worker.runner import reset_model_cache

    dispose_engines()
    reset_model_cache()
    health.reset()
    presence.start(get_settings())  # after the disposal: its beats use the child's own connections


@worker_shutting_down.connect
def _shutting_down(**_: Any) -> None:
    """SIGTERM/SIGINT: the running job checkpoints at its next step and is requeued, so a deploy
    or a scale-down costs at most one step of work, not the rest of the job."""
    from worker.attempt import request_shutdown

    request_shutdown()


@worker_shutdown.connect
@worker_process_shutdown.connect
def _tracking_flushed(**_: Any) -> None:
    """The MLflow sink's last pass (the worker's, or a prefork child's own): the runs of the jobs
    that just ended, within a request's timeout."""
    from worker import tracking

    tracking.close(timeout_s=get_settings().mlflow_timeout_s)


@worker_ready.connect
def _ready(sender: Any = None, **_: Any) -> None:
    """Create/migrate the embedded registry once, before the first job (not inside a job), and
    start the embedded reconciler."""
    from lora_engine.atomic import private_dir
    from orchestrator.registry.db import ensure_schema
    from worker.reconciler import ReconcilerThread

    private_dir(settings.home)
    ensure_schema(settings)
    # Import the engine (torch, transformers, their model-loading machinery) now, not inside the
    # first job: loading those libraries holds the GIL for seconds, during which the job's
    # keep-alive thread cannot renew its lease, and the tenant waits for them before the first
    # step. Importing is not initialising CUDA, so this is safe before a fork too.
    import lora_engine.recipe  # noqa: F401
    from lora_engine.models import import_loaders

    import_loaders()

    if not presence.is_prefork(getattr(sender, "controller", None)):
        presence.start(settings)  # this process runs the tasks (a prefork child registers itself)
        # Unhealthy, it takes no more messages: they go to healthy workers. (The task runs in
        # this consumer's own thread, so it may cancel the consumer. A prefork child cannot
        # reach its parent's consumer: it refuses each message it is given, see `tasks.run_job`.)
        def stop_consuming(_reason: str) -> None:
            for queue in consumed_queues():
                sender.cancel_task_queue(queue)

        health.on_unhealthy(stop_consuming)
    embedded = settings.database_url.startswith("sqlite")
    if embedded:
        ReconcilerThread(settings).start()
    logging.getLogger(__name__).info(
        "lorafleet worker ready: registry %s, queue %s, lease %ss, heartbeat %ss%s",
        settings.database_url.split("@")[-1],
        ",".join(consumed_queues()), settings.lease_seconds,
        settings.heartbeat_seconds,
        f", reconciling every {settings.reconcile_every_s}s" if embedded else "",
    )
