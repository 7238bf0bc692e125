"""What a worker's MLflow sink (`worker.tracking`) reads from the registry, and the one thing it
writes there: a `tracking` warning event when a job's run could not be written whole.

The registry is the sink's buffer: a job's curve points are read from `metric_history` by id
(`points_after`), so MLflow being down holds nothing in a worker's memory but a cursor per job.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from orchestrator.registry.models import Adapter, Job, Metric, MetricPoint, Tenant
from orchestrator.registry.states import TERMINAL_STATES
from orchestrator.services._tx import readonly, transactional
from orchestrator.services.events import add_event

TRACKING_EVENT = "tracking"


@dataclass(frozen=True)
class TrackedJob:
    """A snapshot of a job as its MLflow run shows it. `tenant_slug`, `suffix` and `metadata`
    are the tenant's own strings: the sink sends them as values, never as names or places."""

    id: str
    tenant_id: str
    tenant_slug: str
    kind: str
    state: str
    tracking: bool
    spec: dict[str, Any]
    suffix: str | None
    metadata: dict[str, str] | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    adapter_id: str | None  # once succeeded with an adapter
    # {"<split>/<name>": value}: what the job measured at its end (source 'job')
    final_metrics: dict[str, float]

    @property
    def ended(self) -> bool:
        return self.state in TERMINAL_STATES


@dataclass(frozen=True)
class CurvePoint:
    id: int  # the sink's cursor: points are sent in id order
    name: str
    step: int
    value: float


@readonly
def tracked_job(session: Session, job_id: str) -> TrackedJob | None:
    """The job's snapshot for its MLflow run (None: no such job)."""
    row = session.execute(select(Job, Tenant.slug).join(Tenant, Tenant.id == Job.tenant_id)
                          .where(Job.id == job_id)).first()
    if row is None:
        return None
    job, slug = row
    adapter_id = session.scalar(select(Adapter.id).where(Adapter.job_id == job.id)) \
        if job.state == "succeeded" else None
    finals = {}
    if job.state == "succeeded":
        rows = session.execute(select(Metric.split, Metric.name, Metric.value).where(
            Metric.job_id == job.id, Metric.source == "job"))
        finals = {f"{split}/{name}": float(value) for split, name, value in rows}
    return TrackedJob(id=job.id, tenant_id=job.tenant_id, tenant_slug=slug, kind=job.kind, state=job.state,
                      tracking=job.tracking, spec=dict(job.spec), suffix=job.suffix,
                      metadata=dict(job.metadata_) if job.metadata_ else None, created_at=job.created_at,
                      started_at=job.started_at, finished_at=job.finished_at, adapter_id=adapter_id,
                      final_metrics=finals)


@readonly
def points_after(session: Session, job_id: str, after_id: int, limit: int) -> list[CurvePoint]:
    """Up to `limit` of the job's curve points with an id above `after_id`, in id order (a resumed
    attempt's rewritten steps get new ids, so they are sent again)."""
    rows = session.execute(select(MetricPoint.id, MetricPoint.name, MetricPoint.step, MetricPoint.value)
                           .where(MetricPoint.job_id == job_id, MetricPoint.id > after_id)
                           .order_by(MetricPoint.id).limit(limit))
    return [CurvePoint(int(i), name, int(step), float(value)) for i, name, step, value in rows]


@transactional
def record_tracking_warning(session: Session, job_id: str, message: str, data: dict[str, Any] | None = None
                            ) -> None:
    """A `tracking` event (level warn) on the job: its MLflow run is incomplete, and why."""
    job = session.get(Job, job_id)
    if job is not None:
        add_event(session, job, TRACKING_EVENT, message, data)
