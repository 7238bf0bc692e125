"""Appending to a job's history (job_events is append-only: rows are never updated)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from orchestrator.registry.models import Job, JobEvent, utcnow


def add_event(
    session: Session,
    job: Job,
    kind: str,
    message: str = "",
    data: dict[str, Any] | None = None,
    ts: datetime | None = None,
) -> JobEvent:
    """Stage an event for `job` (committed with the caller's transaction)."""
    event = JobEvent(
        job_id=job.id, tenant_id=job.tenant_id, kind=kind, message=message, data=data, ts=ts or utcnow()
    )
    session.add(event)
    return event
