"""A small Celery client that tells the workers a job is waiting.

The orchestrator never imports `worker`: it sends `lorafleet.run_job` by name to the `gpu` queue.
This module is only the broker side (no registry): recording a dispatch and the reconciler's
passes live in `orchestrator.announce`.
The message carries only the job id; the registry is the source of truth, so a lost or duplicated
message costs nothing (the reconciler re-sends, a second claim finds nothing).

One queue per class of job, what the job needs of a worker (`job_class`: its device count, and
CUDA for a quantised base; `job_queue`): a job asking for one device is announced on `gpu`, as
always; one asking for N > 1 on `gpu.devices-N`, which only a worker owning N or more devices
consumes; an nf4 job on `gpu.cuda` (`gpu.cuda.devices-N`), which only a CUDA worker consumes (a
worker of K devices consumes the queues of 1..K, a CUDA worker those of CPU jobs too:
`worker_queues`). A message is taken only by a worker that can claim its job, so a `devices: 2`
job is heard at once by a worker of two, instead of being dropped by a worker of one (or an nf4
job by a CPU worker) and waiting for the reconciler's re-send (which backs off to 64 x
`redispatch_after`). The worker woken by a message claims a job of the same class
(`services.leases.claim_next(message=…)`), so every queued job keeps a message on its own
queue. Handing a message back (a reject) was the other way: on a fleet of small workers it would
circle between them until a big one is free, a busy loop on the broker.

The sender is not a Celery app: `lorafleet job submit` is a short process, and importing and
configuring Celery to send one message cost it more than the rest of the send (bench/RESULTS.md,
"The submit path"). The message is Celery's task message, protocol 2 (headers, properties, body as
Celery's documentation specifies them), published straight to the queue, so the worker's Celery
app consumes it like any task it sent itself. On a broker server (Redis) kombu publishes it. On the
embedded broker (kombu's SQL transport over a SQLite file) the row kombu would store is inserted
with the standard library's sqlite3: kombu's transport builds an ORM session, its declarative
models and MySQL's dialect on every process's first send, a tenth of a `job submit`
(`tests/unit/test_transport.py` checks the row against the one kombu itself stores). kombu is
imported inside the functions so that the CLI starts without it.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import sqlite3
import sys
import threading
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from kombu import Connection

    from orchestrator.config import Settings

RUN_JOB = "lorafleet.run_job"
RECONCILE = "lorafleet.reconcile"
# Celery's own default publish retry (task_publish_retry_policy): a broker that is down fails the
# send within about a second, and the reconciler sends again later.
PUBLISH_RETRY_POLICY = {"max_retries": 3, "interval_start": 0, "interval_max": 1, "interval_step": 0.2}

_connections: dict[str, Connection] = {}
# A kombu connection (its channel and producer) is not thread-safe, and the API sends from every
# thread of its pool at once: unserialised, concurrent sends failed ("'NoneType' object has no
# attribute 'hostname'") and left 1 job in 8 to the reconciler (bench/bench_api.py). A publish on
# Redis is one LPUSH, so one sender at a time costs nothing measurable.
_send_lock = threading.Lock()


class BrokerSQLiteConnection(sqlite3.Connection):
    """A connection to the embedded broker's SQLite file in WAL mode with synchronous=NORMAL, as
    the registry's: kombu's SQL transport commits once per message, and with SQLite's defaults
    (a rollback journal, a full fsync per commit) a `submit-batch` of 1,000 jobs spent most of its
    time in those fsyncs, while a sender and a polling worker blocked each other. A message lost to
    a power cut costs nothing: the registry is the source of truth and the reconciler re-sends."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.execute("PRAGMA journal_mode = WAL")
        self.execute("PRAGMA synchronous = NORMAL")


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
    # Only Redis redelivers by timeout; the SQL transport hands its options to create_engine, so it
    # gets engine arguments only (see worker.transport).
    options: dict[str, Any] = {"visibility_timeout": settings.visibility_timeout} if redis else {}
    if settings.broker_url.startswith("sqla+sqlite:"):
        options["connect_args"] = {"factory": BrokerSQLiteConnection}
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


def embedded_broker_file(broker_url: str) -> Path | None:
    """The SQLite file of an embedded broker URL (None: a broker server, or an in-memory one)."""
    prefix = "sqla+sqlite:///"
    if broker_url.startswith(prefix) and broker_url != prefix + ":memory:":
        return Path(broker_url.removeprefix(prefix))
    return None


def ensure_broker_dir(broker_url: str) -> None:
    """Create an embedded SQLite broker file, owner-only (SQLite creates files, not folders, and
    gives new files the umask's mode)."""
    from lora_engine.atomic import private_file

    path = embedded_broker_file(broker_url)
    if path is not None:
        private_file(path)


def broker_connection(settings: Settings | None = None) -> Connection:
    """The sending connection to this broker URL (one per process and URL, opened on first use)."""
    settings = settings or get_settings()
    connection = _connections.get(settings.broker_url)
    if connection is None:
        from kombu import Connection

        ensure_broker_dir(settings.broker_url)
        connection = Connection(settings.broker_url,
                                transport_options=celery_config(settings)["broker_transport_options"])
        _connections[settings.broker_url] = connection
    return connection


def task_message(task: str, args: list[Any], countdown: float | None = None,
                 now: datetime | None = None) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """(body, headers, properties) of a Celery protocol-2 message calling `task(*args)`, as
    `celery.app.amqp.AMQP.as_task_v2` builds it; `countdown` becomes the ETA (UTC, ISO 8601)."""
    task_id = str(uuid.uuid4())
    eta = None
    if countdown:
        eta = ((now or datetime.now(UTC)) + timedelta(seconds=countdown)).isoformat()
    headers = {
        "lang": "py", "task": task, "id": task_id, "shadow": None, "eta": eta, "expires": None,
        "group": None, "group_index": None, "retries": 0, "timelimit": [None, None],
        "root_id": task_id, "parent_id": None, "argsrepr": repr(args), "kwargsrepr": "{}",
        "origin": f"gen{os.getpid()}@{socket.gethostname()}",  # Celery's anonymous sender name
        "ignore_result": True, "replaced_task_nesting": 0, "stamped_headers": None, "stamps": {},
    }
    body = (args, {}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None})
    return body, headers, {"correlation_id": task_id, "reply_to": ""}


class JobClass(NamedTuple):
    """What a job needs of a worker, which names its message's queue (`job_queue`)."""

    devices: int = 1
    cuda: bool = False


def job_class(devices: int | None, quantize: str | None) -> JobClass:
    """The class of a job from its registry columns: the one decision of a message's queue (submit,
    re-dispatch and the reconciler all send through it). A quantised base needs CUDA, as the
    claim's `registry.repositories.runs_on` says."""
    return JobClass(max(devices or 1, 1), quantize is not None)


def job_queue(queue: str, job: JobClass = JobClass()) -> str:
    """The queue of the messages of jobs of this class: `queue` itself for one device and no CUDA
    (every worker consumes it), `<queue>.devices-N` for N > 1 (workers owning N or more),
    `<queue>.cuda[.devices-N]` for a job that needs CUDA (CUDA workers only)."""
    base = f"{queue}.cuda" if job.cuda else queue
    return base if job.devices <= 1 else f"{base}.devices-{job.devices}"


def worker_queues(queue: str, devices: int, cuda: bool = False) -> list[str]:
    """The queues a worker owning `devices` devices (of CUDA or not) consumes: those of every job it
    can claim, `queue` first."""
    return [job_queue(queue, JobClass(n, needs)) for needs in ((False, True) if cuda else (False,))
            for n in range(1, devices + 1)]


def send_run_jobs(job_ids: list[str], *, settings: Settings | None = None,
                  countdown: float | None = None, job: JobClass = JobClass()) -> None:
    """Queue one `lorafleet.run_job(job_id)` message per id on the queue of jobs of class `job`:
    the one function that sends job messages (submit, the runner's re-dispatch after a back-off
    and the reconciler all call it through `orchestrator.announce`)."""
    settings = settings or get_settings()
    queue = job_queue(settings.queue, job)
    messages = [task_message(RUN_JOB, [str(job_id)], countdown) for job_id in job_ids]
    if messages and not _insert_embedded(settings.broker_url, queue, messages):
        with _send_lock:
            connection = broker_connection(settings)
            producer = connection.Producer(serializer="json")
            for body, headers, properties in messages:
                # The default exchange routes by queue name, on every transport, with nothing to declare.
                producer.publish(body, exchange="", routing_key=queue, headers=headers,
                                 delivery_mode=2, retry=True, retry_policy=PUBLISH_RETRY_POLICY, **properties)


def stored_message(body: Any, headers: dict[str, Any], properties: dict[str, Any], queue: str) -> str:
    """The `payload` column kombu's SQL transport stores for a JSON message published to the
    default exchange: kombu's virtual-transport envelope, the body base64-encoded."""
    return json.dumps({
        "body": base64.b64encode(json.dumps(body).encode()).decode(),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": headers,
        "properties": {**properties, "delivery_mode": 2,
                       "delivery_info": {"exchange": "", "routing_key": queue}, "priority": 0,
                       "body_encoding": "base64", "delivery_tag": str(uuid.uuid4())},
    })


def _insert_embedded(broker_url: str, queue: str, messages: list[tuple[Any, dict, dict]]) -> bool:
    """Insert the messages into the embedded broker's `queue` in one transaction. False (nothing
    written) when this is not an embedded broker, or its file has no such queue yet: kombu then
    sends them, creating its tables and the queue the first time."""
    path = embedded_broker_file(broker_url)
    if path is None or not path.is_file():
        return False
    # A worker's poll holds the write lock for milliseconds; a lock held longer fails the send
    # after 10 s, and the reconciler sends again.
    connection = sqlite3.connect(path, timeout=10, factory=BrokerSQLiteConnection)
    try:
        with connection:
            try:
                row = connection.execute("SELECT id FROM kombu_queue WHERE name = ?",
                                         (queue,)).fetchone()
            except sqlite3.OperationalError as exc:  # an empty file: kombu has not created its tables
                if "no such table" in str(exc):
                    return False
                raise
            if row is None:
                return False
            connection.executemany(
                "INSERT INTO kombu_message (visible, timestamp, payload, version, queue_id) "
                "VALUES (1, NULL, ?, 1, ?)",
                [(stored_message(body, headers, properties, queue), row[0])
                 for body, headers, properties in messages])
    finally:
        connection.close()
    return True


def close_clients() -> None:
    """Release broker connections (tests, and a CLI process about to exit)."""
    for connection in _connections.values():
        connection.release()
    _connections.clear()


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
