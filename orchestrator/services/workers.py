"""Worker presence: each worker process registers when it starts, renews `last_seen` on every
heartbeat (idle or not), names the job it is on, and marks itself stopped when it shuts down
gracefully (`worker.presence` calls these). `lorafleet status` reads them back: a worker is
alive while its beats arrive, lost once it missed `MISSED_BEATS_LOST` of them in a row (killed,
its machine gone, cut off from the registry), stopped when it said so, and unhealthy while it
beats but took itself out of service (its own environment failed its jobs: `worker.health`),
with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Select, func, select, update
from sqlalchemy.orm import Session

from orchestrator.registry.models import Worker, utcnow
from orchestrator.services._tx import transactional

MISSED_BEATS_LOST = 3
# Stopped and lost workers stay listed this long after their last beat, then drop out of the
# status (their rows stay: a lease or a log line may still name them).
GONE_SHOWN_S = 3600.0


@dataclass(frozen=True)
class WorkerInfo:
    """What a worker process says about itself when it registers."""

    id: str  # the worker id its leases carry
    hostname: str
    pid: int
    queue: str
    device_kind: str
    device_name: str
    beat_seconds: float
    devices: int = 1  # it owns: it claims jobs asking for at most as many


def worker_state(row: Worker, now: datetime) -> str:
    """alive, unhealthy (beating, but out of service: `row.unhealthy_reason` says why), lost (no
    beat for MISSED_BEATS_LOST intervals) or stopped."""
    if row.stopped_at is not None:
        return "stopped"
    if (now - row.last_seen).total_seconds() > MISSED_BEATS_LOST * row.beat_seconds:
        return "lost"
    return "unhealthy" if row.unhealthy_reason is not None else "alive"


@transactional
def register_worker(session: Session, info: WorkerInfo, now: datetime | None = None) -> Worker:
    """Insert the worker's row, or take over the row of an earlier process with the same id (a
    pid reused on the same node after a restart): a fresh start, no job, not stopped."""
    now = now or utcnow()
    row = session.get(Worker, info.id)
    if row is None:
        row = Worker(id=info.id)
        session.add(row)
    row.hostname, row.pid, row.queue = info.hostname, info.pid, info.queue
    row.device_kind, row.device_name, row.beat_seconds = info.device_kind, info.device_name, info.beat_seconds
    row.devices = info.devices
    row.started_at = row.last_seen = now
    row.stopped_at = row.current_job_id = row.unhealthy_reason = row.unhealthy_since = None
    return row


@transactional
def worker_beat(session: Session, worker_id: str, job_id: str | None,
                now: datetime | None = None, *, unhealthy: str | None = None) -> bool:
    """Renew `last_seen`, name the job the worker is on (None: idle) and why it is out of
    service (None: it is not; the first beat that says so sets `unhealthy_since`). False when
    the worker has no row (never registered, or stopped: a stopped worker does not come back)."""
    now = now or utcnow()
    since = func.coalesce(Worker.unhealthy_since, now) if unhealthy is not None else None
    result = session.execute(
        update(Worker).where(Worker.id == worker_id, Worker.stopped_at.is_(None))
        .values(last_seen=now, current_job_id=job_id, unhealthy_reason=unhealthy, unhealthy_since=since)
    )
    return result.rowcount == 1


@transactional
def mark_worker_stopped(session: Session, worker_id: str, now: datetime | None = None) -> None:
    """The worker shut down gracefully: stopped now, on no job."""
    now = now or utcnow()
    session.execute(update(Worker).where(Worker.id == worker_id)
                    .values(stopped_at=now, last_seen=now, current_job_id=None))


def recent_workers(now: datetime) -> Select[tuple[Worker]]:
    """The workers heard from within GONE_SHOWN_S (every live one among them), by id: a query
    for the status to run inside its own read."""
    recent = now - timedelta(seconds=GONE_SHOWN_S)
    return select(Worker).where(Worker.last_seen >= recent).order_by(Worker.id)
