"""The embedded broker: kombu's SQL transport polling every 0.1 s, on a real SQLite file."""

from __future__ import annotations

import time
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
