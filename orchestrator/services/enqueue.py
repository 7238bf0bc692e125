"""Messages to send, recorded in the transaction that queued their jobs and sent only after it
committed (the idea of polar's `worker/_enqueue.py`):

    a service, inside its transaction:  enqueue_job(session, job_id, countdown)
    the transaction commits             → the job is ready to send on that session
    the transaction rolls back          → it is forgotten: a job that was never queued gets none
    the edge, once its session is done  → `orchestrator.announce.sending_session` / `send_enqueued`
                                           sends what is ready (the CLI, the worker, quickstart)

No caller announces by hand. A message lost between the commit and the send (a crash, a broker
down) is re-sent by the reconciler, which re-dispatches queued jobs whose message is old.
"""

from __future__ import annotations

from sqlalchemy import event
from sqlalchemy.orm import Session, SessionTransaction

_PENDING = "lorafleet.enqueue.pending"  # this transaction's, not yet committed
_READY = "lorafleet.enqueue.ready"  # committed, not yet sent


def enqueue_job(session: Session, job_id: str, countdown: float | None = None) -> None:
    """Send a message for `job_id` (after `countdown` seconds) once this transaction commits."""
    if not session.in_transaction():  # its rollback must be seen, even before any SQL ran
        session.begin()
    session.info.setdefault(_PENDING, []).append((job_id, countdown))


def take_ready(session: Session) -> list[tuple[str, float | None]]:
    """The (job id, countdown) pairs committed on `session` and not yet taken, in order; taken
    once (the caller sends them)."""
    return session.info.pop(_READY, [])


@event.listens_for(Session, "after_commit")
def _committed(session: Session) -> None:
    pending = session.info.pop(_PENDING, None)
    if pending:
        session.info.setdefault(_READY, []).extend(pending)


@event.listens_for(Session, "after_soft_rollback")
def _rolled_back(session: Session, previous_transaction: SessionTransaction) -> None:
    if not previous_transaction.nested:  # a savepoint's rollback leaves the transaction's own
        session.info.pop(_PENDING, None)
