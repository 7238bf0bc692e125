"""What jobs measured, for people: each job's headline score (the task's primary metric on the
validation split), for `job list`."""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import select
from sqlalchemy.orm import Session

from lora_engine.catalog import TASKS
from orchestrator.registry.models import Job, Metric
from orchestrator.services._tx import readonly


@readonly
def headline_metrics(session: Session, jobs: Iterable[Job]) -> dict[str, tuple[str, float]]:
    """{job id: (metric name, value)}: the task's primary validation metric, in one query."""
    wanted = {j.id: TASKS[j.task].primary_metric if j.task in TASKS else "" for j in jobs}
    if not wanted:
        return {}
    stmt = select(Metric.job_id, Metric.name, Metric.value).where(
        Metric.job_id.in_(list(wanted)), Metric.source == "job", Metric.split == "validation"
    )
    return {job_id: (name, value) for job_id, name, value in session.execute(stmt) if name == wanted[job_id]}
