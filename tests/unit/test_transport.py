"""The embedded broker: kombu's SQL transport polling every 0.1 s, on a real SQLite file."""

from __future__ import annotations

import json
import sqlite3
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from kombu import Connection

from worker.transport import POLLING_INTERVAL, PollingSQLAlchemyTransport, consumer_broker_url


def test_consumer_url_maps_only_the_sql_transport():
    assert consumer_broker_url("sqla+sqlite:////tmp/b.db") == "lorafleet-sqla+sqlite:////tmp/b.db"
    assert consumer_broker_url("redis://localhost:6379/0") == "redis://localhost:6379/0"


def test_polling_transport_roundtrip_with_a_sender_on_the_stock_transport(tmp_path: Path):
    url = f"sqla+sqlite:///{tmp_path / 'broker.db'}"
    with Connection(consumer_broker_url(url)) as consumer, Connection(url) as sender:
        assert isinstance(consumer.transport, PollingSQLAlchemyTransport)
        assert consumer.transport.polling_interval == POLLING_INTERVAL == 0.1
        inbox = consumer.SimpleQueue("gpu")
        sender.SimpleQueue("gpu").put({"job_id": "j-1"})
        t0 = time.monotonic()
        message = inbox.get(timeout=5)
        assert message.payload == {"job_id": "j-1"}
        message.ack()
        assert time.monotonic() - t0 < 1.0


def test_polling_interval_as_a_transport_option_reaches_create_engine(tmp_path: Path):
    """Why the subclass exists: the stock channel passes unknown options to SQLAlchemy."""
    url = f"sqla+sqlite:///{tmp_path / 'other.db'}"
    with Connection(url, transport_options={"polling_interval": 0.1}) as conn, pytest.raises(TypeError):
        conn.SimpleQueue("gpu").put({"x": 1})


def _embedded_settings(tmp_path: Path, monkeypatch):
    from orchestrator.config import get_settings

    monkeypatch.setenv("LORAFLEET_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("LORAFLEET_BROKER_URL", raising=False)
    get_settings.cache_clear()
    settings = get_settings()
    get_settings.cache_clear()
    return settings


def test_the_job_message_is_the_one_celery_itself_would_send(tmp_path: Path, monkeypatch):
    """`send_run_jobs` speaks Celery's protocol 2 without a Celery app: the message on the broker
    has exactly the headers, properties and body `celery.app.amqp.as_task_v2` builds, the first
    one (sent by kombu, which creates the embedded broker's tables) and the next (inserted into
    them directly) alike."""
    from celery import Celery

    from orchestrator.dispatch import RUN_JOB, close_clients, send_run_jobs

    settings = _embedded_settings(tmp_path, monkeypatch)
    try:
        send_run_jobs(["job-1"], settings=settings, countdown=30)
        send_run_jobs(["job-2", "job-3"], settings=settings, countdown=30)
    finally:
        close_clients()
    celery = Celery("reference", set_as_current=False, broker=settings.broker_url)
    with Connection(settings.broker_url) as conn:
        queue = conn.SimpleQueue(settings.queue)
        for job_id in ("job-1", "job-2", "job-3"):
            received = queue.get(timeout=5)
            received.ack()
            headers, properties = received.headers, received.properties
            reference = celery.amqp.as_task_v2(headers["id"], RUN_JOB, args=[job_id], eta=headers["eta"],
                                               ignore_result=True, origin=headers["origin"])
            assert headers == reference.headers
            assert received.decode() == [list(a) if isinstance(a, tuple) else a for a in reference.body]
            assert properties["correlation_id"] == headers["id"] and properties["reply_to"] == ""
            assert received.content_type == "application/json" and properties["delivery_mode"] == 2
            assert headers["eta"] > datetime.now(UTC).isoformat()  # the countdown became an ETA, in UTC
    # The embedded broker's file is in WAL mode (one commit per message, without a full fsync).
    with sqlite3.connect(settings.broker_url.removeprefix("sqla+sqlite:///")) as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_the_embedded_broker_row_is_the_one_kombu_stores(tmp_path: Path, monkeypatch):
    """The embedded broker's message is inserted with sqlite3, not through kombu's transport: the
    row must be the one kombu's own publish stores (columns, and the payload but for the
    per-publish delivery tag), so kombu's consumer cannot tell them apart."""
    from orchestrator.dispatch import RUN_JOB, ensure_broker_dir, send_run_jobs, task_message

    settings = _embedded_settings(tmp_path, monkeypatch)
    ensure_broker_dir(settings.broker_url)
    message = task_message(RUN_JOB, ["job-1"], countdown=5)
    body, headers, properties = message
    with Connection(settings.broker_url) as conn:  # kombu's row; it creates the tables and the queue
        conn.Producer(serializer="json").publish(body, exchange="", routing_key=settings.queue,
                                                 headers=headers, delivery_mode=2, **properties)
    monkeypatch.setattr("orchestrator.dispatch.task_message", lambda *a: message)
    send_run_jobs(["job-1"], settings=settings)
    with sqlite3.connect(settings.broker_url.removeprefix("sqla+sqlite:///")) as raw:
        rows = raw.execute("SELECT visible, timestamp, version, queue_id, payload FROM kombu_message "
                           "ORDER BY id").fetchall()
    (*theirs, their_payload), (*ours, our_payload) = rows
    assert ours == theirs
    stored = [json.loads(their_payload), json.loads(our_payload)]
    tags = [p["properties"].pop("delivery_tag") for p in stored]
    assert stored[0] == stored[1] and tags[0] != tags[1]  # a fresh tag per message, as kombu's
    with Connection(consumer_broker_url(settings.broker_url)) as consumer:
        inbox = consumer.SimpleQueue(settings.queue)
        delivered = [inbox.get(timeout=5) for _ in range(2)]
    assert [(m.headers, m.properties["delivery_info"], m.decode()) for m in delivered] == \
        [(headers, {"exchange": "", "routing_key": settings.queue}, json.loads(json.dumps(body)))] * 2


def test_no_message_reaches_a_broker_file_without_the_queue(tmp_path: Path, monkeypatch):
    """A broker file kombu has not set up (no tables, or no row for the queue) is left to kombu."""
    from orchestrator.dispatch import _insert_embedded, task_message

    settings = _embedded_settings(tmp_path, monkeypatch)
    path = Path(settings.broker_url.removeprefix("sqla+sqlite:///"))
    path.parent.mkdir(parents=True)
    sqlite3.connect(path).close()
    assert not _insert_embedded(settings.broker_url, settings.queue, [task_message("t", [])])
    with Connection(settings.broker_url) as conn:
        conn.SimpleQueue("another-queue").put({"x": 1})
    assert not _insert_embedded(settings.broker_url, settings.queue, [task_message("t", [])])
    with sqlite3.connect(path) as raw:
        assert raw.execute("SELECT count(*) FROM kombu_message").fetchone() == (1,)


def test_an_idle_wait_ends_at_a_shutdown_request(tmp_path: Path, monkeypatch):
    """Celery's solo loop waits 2 s at a time in drain_events; a warm shutdown (SIGTERM, Ctrl-C)
    sets `state.should_stop`, and the transport stops waiting at its next look instead of
    sitting out the wait. Without the request a wait lasts its timeout and still delivers."""
    from celery.worker import state

    url = f"sqla+sqlite:///{tmp_path / 'broker.db'}"
    with Connection(consumer_broker_url(url)) as consumer, Connection(url) as sender:
        inbox = consumer.SimpleQueue("gpu")
        t0 = time.monotonic()
        with pytest.raises(inbox.Empty):
            inbox.get(timeout=0.6)
        assert time.monotonic() - t0 >= 0.6
        sender.SimpleQueue("gpu").put({"job_id": "j-2"})
        inbox.get(timeout=5).ack()

        monkeypatch.setattr(state, "should_stop", 0)  # what the warm-shutdown handler sets (EX_OK)
        t0 = time.monotonic()
        with pytest.raises(inbox.Empty):
            inbox.get(timeout=30)
        assert time.monotonic() - t0 < 10  # not the 30 s it asked for
