"""What jobs measured, for people and reports: each job's headline score (for `job list`), its
training curves (metric history: every step's loss and lr, repeated evaluations), and the
checkpoints it saved."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, insert, select
from sqlalchemy.orm import Session

from lora_engine.catalog import TASKS
from orchestrator.errors import InvalidInput
from orchestrator.registry.models import Job, JobEvent, Metric, MetricPoint
from orchestrator.services._tx import readonly, transactional
from orchestrator.services.jobs import job_or_404
from orchestrator.services.leases import owned_job

SERIES_NAME_MAX = 64


@dataclass(frozen=True)
class Point:
    """One point of a curve: series `name` (loss, lr, validation/accuracy, ...) at `step`."""

    name: str
    step: int
    epoch: float
    value: float


@dataclass(frozen=True)
class CheckpointInfo:
    step: int
    saved_at: datetime
    path: str | None


def headline_metrics(session: Session, jobs: Iterable[Job]) -> dict[str, tuple[str, float]]:
    """Inside a service: {job id: (metric name, value)}, the task's primary validation metric,
    in one query."""
    wanted = {j.id: TASKS[j.task].primary_metric if j.task in TASKS else "" for j in jobs}
    if not wanted:
        return {}
    stmt = select(Metric.job_id, Metric.name, Metric.value).where(
        Metric.job_id.in_(list(wanted)), Metric.source == "job", Metric.split == "validation"
    )
    return {job_id: (name, value) for job_id, name, value in session.execute(stmt) if name == wanted[job_id]}


@transactional
def record_points(session: Session, job_id: str, worker_id: str, points: Sequence[Point]) -> int:
    """Append points to the job's curves (the worker, between heartbeats). Points at a step the
    job already has (an attempt that resumed and redid steps) replace the old ones. LeaseLost if
    the job is no longer this worker's."""
    if not points:
        return 0
    job = owned_job(session, job_id, worker_id)
    for p in points:
        if not p.name or len(p.name) > SERIES_NAME_MAX:
            raise InvalidInput(f"metric series name must be 1..{SERIES_NAME_MAX} characters, got {p.name!r}")
    names = sorted({p.name for p in points})
    steps = [p.step for p in points]
    session.execute(delete(MetricPoint).where(
        MetricPoint.job_id == job.id, MetricPoint.name.in_(names),
        MetricPoint.step >= min(steps), MetricPoint.step <= max(steps)))
    latest = {(p.name, p.step): p for p in points}  # the last value of a repeated step wins
    session.execute(insert(MetricPoint), [
        {"job_id": job.id, "tenant_id": job.tenant_id, "name": p.name, "step": p.step,
         "epoch": float(p.epoch), "value": float(p.value)} for p in latest.values()
    ])
    return len(latest)


@readonly
def metric_history(session: Session, job_id: str, tenant: str | None = None,
                   names: Sequence[str] | None = None) -> list[Point]:
    """The job's curves, by series name then step (id prefixes accepted)."""
    job = job_or_404(session, job_id, tenant)
    stmt = select(MetricPoint).where(MetricPoint.job_id == job.id)
    if names:
        stmt = stmt.where(MetricPoint.name.in_(list(names)))
    rows = session.scalars(stmt.order_by(MetricPoint.name, MetricPoint.step))
    return [Point(r.name, r.step, r.epoch, r.value) for r in rows]


@readonly
def job_checkpoints(session: Session, job_id: str, tenant: str | None = None) -> list[CheckpointInfo]:
    """The checkpoints the job reported saving, oldest first (the newest is what a retry resumes
    from; older folders may have been pruned)."""
    job = job_or_404(session, job_id, tenant)
    rows = session.scalars(select(JobEvent).where(JobEvent.job_id == job.id, JobEvent.kind == "checkpoint")
                           .order_by(JobEvent.id))
    return [CheckpointInfo(int((e.data or {}).get("step", 0)), e.ts, (e.data or {}).get("path"))
            for e in rows]
