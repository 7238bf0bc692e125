"""The worker app with the embedded transport's old wait (the baseline of bench_worker_stop.py):
the same 0.1 s polling, but each idle wait sits out Celery's full 2 s before a shutdown is seen."""

from __future__ import annotations

from kombu.transport import TRANSPORT_ALIASES
from kombu.transport.sqlalchemy import Transport as SQLAlchemyTransport

from worker.celery_app import app, settings
from worker.transport import PollingSQLAlchemyTransport


class WaitsOutTheTimeout(PollingSQLAlchemyTransport):
    drain_events = SQLAlchemyTransport.drain_events


TRANSPORT_ALIASES["bench-sqla"] = f"{__name__}:WaitsOutTheTimeout"
app.conf.broker_url = "bench-" + settings.broker_url
