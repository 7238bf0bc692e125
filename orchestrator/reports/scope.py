"""What every report shares: its scope (Filters, checked), the scoped jobs, and a job's quality —
the primary-metric join, written here once.

The reports' SQL: every aggregation is a GROUP BY in the database, every "latest / best" pick a
window function; Python only receives grouped rows. Portable SQL (SQLite and PostgreSQL):
`row_number()`/`count()` windows, CASE, no GROUPING SETS, no percentile functions — the median is
the mean of the middle one or two rows of a window ordered by the value.

Scope (`Filters`): tenants by slug, task, base model, and `jobs.created_at` in [since, until).
Only what the registry records is read: jobs, adapters, metrics, metric history, usage, tenants.

Conventions the queries rely on (written by orchestrator.services.leases and the job kinds):
- a job's usage rows are one per attempt; the attempt that produced the result is the job's last
  (`usage.attempt = jobs.attempts`) of a succeeded job — every other attempt is device time
  "spent, no adapter";
- a job's own metrics are `source = 'job'`; the quality figure is split 'validation';
- an untuned baseline is a succeeded job of kind 'evaluate', method 'none', its metrics with no
  adapter; re-evaluations are metric rows of source 'reevaluation' carrying the adapter scored.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import and_, literal, select, text, union_all
from sqlalchemy.orm import Session
from sqlalchemy.sql import ColumnElement, Select

from lora_engine.catalog import ALL_TASKS, TASKS
from orchestrator.errors import InvalidInput, NotFound
from orchestrator.registry.models import Job, Metric, Tenant

QUALITY_SPLIT = "validation"
# Inline SQL literals, not bound parameters: the planner can then use the partial indexes on
# metrics (WHERE source = 'job' / 'reevaluation') even in a generic plan.
JOB_SOURCE = literal("job", literal_execute=True)
REEVALUATION_SOURCE = literal("reevaluation", literal_execute=True)
REPORT_WORK_MEM = "64MB"
j, t, m = (x.__table__ for x in (Job, Tenant, Metric))


@dataclass(frozen=True)
class Filters:
    """A report's scope; `make_filters` builds it checked."""

    tenants: tuple[str, ...] = ()
    task: str | None = None
    base_model: str | None = None
    since: datetime | None = None  # on jobs.created_at, inclusive
    until: datetime | None = None  # exclusive

    def to_dict(self) -> dict[str, Any]:
        return {
            "tenants": list(self.tenants),
            "task": self.task,
            "base_model": self.base_model,
            "since": iso(self.since),
            "until": iso(self.until),
        }


def iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def make_filters(
    tenants: tuple[str, ...] | list[str] = (),
    task: str | None = None,
    base_model: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> Filters:
    """Filters, checked: a known task, tz-aware times, since before until."""
    if task is not None and task not in ALL_TASKS:
        raise InvalidInput(f"unknown task {task!r}; allowed: {', '.join(ALL_TASKS)}")
    for name, value in (("since", since), ("until", until)):
        if value is not None and value.tzinfo is None:
            raise InvalidInput(
                f"--{name} {value.isoformat()} has no time zone; give UTC, e.g. 2026-12-01T00:00Z"
            )
    if since is not None and until is not None and since >= until:
        raise InvalidInput(f"--since {since.isoformat()} is not before --until {until.isoformat()}")
    return Filters(tuple(dict.fromkeys(tenants)), task, base_model, since, until)


def prepare(session: Session, f: Filters) -> None:
    """Check the tenants, and give PostgreSQL room for the reports' sorts and hashes: with the
    default 4 MB work_mem a 100k-adapter window sort spills to disk (SET LOCAL: this read-only
    transaction only)."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text(f"SET LOCAL work_mem = '{REPORT_WORK_MEM}'"))
    _check_tenants(session, f)


def _check_tenants(session: Session, f: Filters) -> None:
    if not f.tenants:
        return
    known = set(session.scalars(known_tenants(f.tenants)))
    missing = [s for s in f.tenants if s not in known]
    if missing:
        raise NotFound(f"no tenant {', '.join(map(repr, missing))}: see `lorafleet tenant list`")


def scoped_jobs(f: Filters, *, kinds: tuple[str, ...] | None = None) -> Any:
    """The report's jobs with their tenant's slug, as a CTE."""
    stmt = select(
        j.c.id.label("job_id"),
        j.c.tenant_id,
        t.c.slug.label("tenant"),
        j.c.kind,
        j.c.state,
        j.c.task,
        j.c.method,
        j.c.rank,
        j.c.base_model,
        j.c.gradient_checkpointing,
        j.c.attempts,
        j.c.created_at,
    ).join(t, t.c.id == j.c.tenant_id)
    if f.tenants:
        stmt = stmt.where(t.c.slug.in_(f.tenants))
    if f.task is not None:
        stmt = stmt.where(j.c.task == f.task)
    if f.base_model is not None:
        stmt = stmt.where(j.c.base_model == f.base_model)
    if f.since is not None:
        stmt = stmt.where(j.c.created_at >= f.since)
    if f.until is not None:
        stmt = stmt.where(j.c.created_at < f.until)
    if kinds is not None:
        stmt = stmt.where(j.c.kind.in_(kinds))
    return stmt.cte("scoped_jobs")


def fetch_rows(session: Session, stmt: Select[Any]) -> list[dict[str, Any]]:
    return [dict(r) for r in session.execute(stmt).mappings()]


def known_tenants(slugs: tuple[str, ...]) -> Select[Any]:
    return select(t.c.slug).where(t.c.slug.in_(slugs))


def primary_metrics() -> Any:
    """(task, metric): every catalog task's primary metric, as a small table to join on. A join on
    a CASE expression instead leaves the planner guessing its selectivity (nested loops)."""
    return union_all(
        *(
            select(literal(name).label("task"), literal(info.primary_metric).label("metric"))
            for name, info in TASKS.items()
        )
    ).subquery("primary_metrics")


class PrimaryMetric(NamedTuple):
    """`join_primary_metric`'s result: the joined FROM clause, the task's primary metric's name
    (`metric`) and the job's validation row of it (`row`: value, created_at, id, adapter_id)."""

    from_: Any
    metric: ColumnElement[str]
    row: Any

    @property
    def value(self) -> ColumnElement[float]:
        return self.row.c.value


def join_primary_metric(from_: Any, job_id: Any, task: Any, *, outer: bool = True) -> PrimaryMetric:
    """`from_` joined with each job's task's primary metric (inner: catalog tasks only) and the
    job's own validation metric of that name (`outer`: NULL when it has none; else only jobs that
    have one). The one place that says what "the job's quality" is; every report reads it here."""
    pmt, pm = primary_metrics(), m.alias("pm")
    on = and_(
        pm.c.job_id == job_id,
        pm.c.source == JOB_SOURCE,
        pm.c.split == QUALITY_SPLIT,
        pm.c.name == pmt.c.metric,
    )
    joined = from_.join(pmt, pmt.c.task == task)
    return PrimaryMetric(joined.outerjoin(pm, on) if outer else joined.join(pm, on), pmt.c.metric, pm)


def explain(session: Session, stmt: Select[Any]) -> str:
    """The database's query plan for `stmt` (EXPLAIN QUERY PLAN on SQLite, EXPLAIN on PostgreSQL)."""
    bind = session.get_bind()
    compiled = stmt.compile(bind, compile_kwargs={"literal_binds": True})
    prefix = "EXPLAIN QUERY PLAN " if bind.dialect.name == "sqlite" else "EXPLAIN "
    rows = session.connection().exec_driver_sql(prefix + str(compiled)).all()
    if bind.dialect.name == "sqlite":
        return "\n".join(" ".join(str(c) for c in r[1:]) for r in rows)
    return "\n".join(r[0] for r in rows)
