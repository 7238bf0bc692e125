"""The embedded broker: kombu's SQLAlchemy transport, polling every 0.1 s instead of every 1 s,
and noticing a warm shutdown at the next poll.

Why a subclass: kombu's virtual transports read `polling_interval` from the transport options,
but the SQLAlchemy channel hands every transport option it does not know straight to
`sqlalchemy.create_engine`, so `broker_transport_options={"polling_interval": 0.1}` makes the
worker crash on connect (`TypeError: Invalid argument(s) 'polling_interval'`). The interval is a
class attribute of the transport, so a subclass sets it and no option reaches the engine.

Celery's solo-pool loop waits in `drain_events(timeout=2.0)` and checks for a shutdown request
only between such waits, so an idle embedded worker took up to 2 s to react to Ctrl-C/SIGTERM.
The transport waits in slices instead and gives up its wait once a shutdown is requested (Redis
blocks on its socket, which the signal interrupts).

The worker app maps the user-facing `sqla+sqlite:///…` URL onto this transport by registering it
under its own alias (`lorafleet-sqla+sqlite:///…`); senders keep using kombu's transport, which
reads and writes the same tables.
"""

from __future__ import annotations

import time

from kombu.transport import TRANSPORT_ALIASES
from kombu.transport.sqlalchemy import Channel as SQLAlchemyChannel
from kombu.transport.sqlalchemy import Transport as SQLAlchemyTransport
from sqlalchemy.exc import IntegrityError

ALIAS = "lorafleet-sqla"
# Seconds between polls of an empty queue: the latency from submit to pick-up when idle. Each
# poll is one small indexed SELECT on a local SQLite file, so 10 polls a second cost nothing.
POLLING_INTERVAL = 0.1
# The longest an idle worker waits before it looks whether a shutdown was requested.
SHUTDOWN_CHECK_S = 0.2


class RacingSafeChannel(SQLAlchemyChannel):
    """kombu's channel, safe when several workers start on a new broker file at once.

    kombu creates a queue's row on first use and retries only an OperationalError, so the second
    of two processes creating it at the same moment dies on the UNIQUE constraint
    (`lorafleet worker --gpus 2` on a fresh embedded install). The row exists then: use it.
    """

    def _get_or_create(self, queue):
        try:
            return super()._get_or_create(queue)
        except IntegrityError:
            self.session.rollback()
            return self.session.query(self.queue_cls).filter(self.queue_cls.name == queue).one()


class PollingSQLAlchemyTransport(SQLAlchemyTransport):
    Channel = RacingSafeChannel
    polling_interval = POLLING_INTERVAL

    def drain_events(self, connection, timeout=None):
        if timeout is None:
            return super().drain_events(connection)
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            try:
                return super().drain_events(connection, timeout=max(min(SHUTDOWN_CHECK_S, left), 0.0))
            except TimeoutError:
                if left <= SHUTDOWN_CHECK_S or shutdown_requested():
                    raise


def shutdown_requested() -> bool:
    """Whether Celery's signal handler asked this worker to stop (warm or cold)."""
    from celery.worker import state

    return any(flag is not None and flag is not False for flag in (state.should_stop, state.should_terminate))


def register() -> None:
    """Make `lorafleet-sqla+<sqlalchemy url>` resolve to the transport above (idempotent)."""
    TRANSPORT_ALIASES.setdefault(ALIAS, f"{__name__}:PollingSQLAlchemyTransport")


def consumer_broker_url(url: str) -> str:
    """The URL a consuming worker uses: the polling transport for `sqla+…`, anything else unchanged."""
    if url.startswith("sqla+"):
        register()
        return f"{ALIAS}+{url.removeprefix('sqla+')}"
    return url
