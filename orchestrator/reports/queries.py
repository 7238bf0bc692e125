"""The reports' SQL: every aggregation is a GROUP BY in the database, every "latest / best" pick a
window function; Python only receives grouped rows. Portable SQL (SQLite and PostgreSQL):
`row_number()`/`count()` windows, CASE, no GROUPING SETS, no percentile functions — the median is
the mean of the middle one or two rows of a window ordered by the value.

Scope (`Filters`): tenants by slug, task, base model, and `jobs.created_at` in [since, until).
Only what the registry records is read: jobs, adapters, metrics, usage, tenants.

Conventions the queries rely on (written by orchestrator.services.leases and the job kinds):
- a job's usage rows are one per attempt; the attempt that produced the result is the job's last
  (`usage.attempt = jobs.attempts`) of a succeeded job — every other attempt is device time
  "spent, no adapter";
- a job's own metrics are `source = 'job'`; the quality figure is split 'validation';
- an untuned baseline is a succeeded job of kind 'evaluate', method 'none', its metrics with no
  adapter; re-evaluations are metric rows of source 'reevaluation' carrying the adapter scored.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import (
    Float,
    and_,
    case,
    cast,
    func,
    literal,
    null,
    or_,
    select,
)
from sqlalchemy.orm import Session
from sqlalchemy.sql import ColumnElement, Select

from lora_engine.catalog import GLUE_TASKS, TASKS
from orchestrator.registry.models import Adapter, Job, Metric, Tenant, Usage
from orchestrator.reports.model import BASE_DTYPE, BYTES_PER_PARAM, Filters
from orchestrator.reports.references import FRACTION_METRICS

QUALITY_SPLIT = "validation"
# Inline SQL literals, not bound parameters: the planner can then use the partial indexes on
# metrics (WHERE source = 'job' / 'reevaluation') even in a generic plan.
JOB_SOURCE = literal("job", literal_execute=True)
REEVALUATION_SOURCE = literal("reevaluation", literal_execute=True)
j, t, a, m, u = (x.__table__ for x in (Job, Tenant, Adapter, Metric, Usage))


# ---- shared expressions ----------------------------------------------------------------------


def primary_metric(task_col: ColumnElement[Any]) -> ColumnElement[str]:
    """The task's primary metric name, from the catalog, as SQL."""
    return case(
        {name: info.primary_metric for name, info in TASKS.items()}, value=task_col, else_=literal("accuracy")
    )


def points_scale(metric_col: ColumnElement[Any]) -> ColumnElement[float]:
    """100 for a fraction metric (a point is 0.01 of it), 1 otherwise."""
    return case((metric_col.in_(sorted(FRACTION_METRICS)), 100.0), else_=1.0)


def price_per_hour(device_col: ColumnElement[Any], prices: Mapping[str, float]) -> ColumnElement[Any]:
    """The configured price of a device: the longest matching prefix wins ("cuda" prices every
    "cuda:NVIDIA H100 ..."); NULL when none matches."""
    whens = [
        (device_col.startswith(prefix, autoescape=True), literal(float(price), Float))
        for prefix, price in sorted(prices.items(), key=lambda kv: (-len(kv[0]), kv[0]))
    ]
    return case(*whens, else_=null()) if whens else cast(null(), Float)


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


def rows(session: Session, stmt: Select[Any]) -> list[dict[str, Any]]:
    return [dict(r) for r in session.execute(stmt).mappings()]


def known_tenants(slugs: tuple[str, ...]) -> Select[Any]:
    return select(t.c.slug).where(t.c.slug.in_(slugs))


# ---- benchmark -------------------------------------------------------------------------------


def _picked(f: Filters, pick: str) -> Any:
    """Per (tenant, task): the picked live adapter of a succeeded training job, with its primary
    metric, and how many candidates there were (`row_number` / `count` windows)."""
    sj = scoped_jobs(f, kinds=("train",))
    metric = primary_metric(a.c.task)
    pm = m.alias("pm")
    part = (a.c.tenant_id, a.c.task)
    if pick == "best":
        order = (pm.c.value.is_(None), pm.c.value.desc(), a.c.created_at.desc(), a.c.id.desc())
    else:
        order = (a.c.created_at.desc(), a.c.id.desc())
    cand = (
        select(
            a.c.id.label("adapter_id"),
            a.c.job_id,
            sj.c.tenant,
            a.c.task,
            a.c.method,
            a.c.rank,
            a.c.base_model,
            a.c.created_at,
            metric.label("metric"),
            pm.c.value,
            func.row_number().over(partition_by=part, order_by=order).label("rn"),
            func.count().over(partition_by=part).label("candidates"),
        )
        .select_from(a.join(sj, sj.c.job_id == a.c.job_id))
        .outerjoin(
            pm,
            and_(
                pm.c.job_id == a.c.job_id,
                pm.c.source == JOB_SOURCE,
                pm.c.split == QUALITY_SPLIT,
                pm.c.name == metric,
            ),
        )
        .where(a.c.deleted_at.is_(None), sj.c.state == "succeeded")
        .subquery("candidates")
    )
    return select(cand).where(cand.c.rn == 1).cte("picked")


def benchmark_cells(f: Filters, pick: str) -> Select[Any]:
    """One row per (tenant, task): the pick, its primary metric, and its latest re-evaluation."""
    picked = _picked(f, pick)
    re = (
        select(
            m.c.adapter_id,
            m.c.name,
            m.c.value,
            m.c.created_at,
            func.row_number()
            .over(partition_by=(m.c.adapter_id, m.c.name), order_by=(m.c.created_at.desc(), m.c.id.desc()))
            .label("rn"),
        )
        .where(
            m.c.source == REEVALUATION_SOURCE,
            m.c.split == QUALITY_SPLIT,
            m.c.adapter_id.in_(select(picked.c.adapter_id)),
        )
        .subquery("reevaluated")
    )
    stmt = (
        select(
            picked.c.tenant,
            picked.c.task,
            picked.c.metric,
            picked.c.value,
            picked.c.adapter_id,
            picked.c.job_id,
            picked.c.method,
            picked.c.rank,
            picked.c.base_model,
            picked.c.created_at,
            picked.c.candidates,
            re.c.value.label("reevaluated"),
            re.c.created_at.label("reevaluated_at"),
        )
        .outerjoin(
            re, and_(re.c.adapter_id == picked.c.adapter_id, re.c.name == picked.c.metric, re.c.rn == 1)
        )
        .order_by(picked.c.tenant, picked.c.task)
    )
    return stmt


def benchmark_metrics(f: Filters, pick: str) -> Select[Any]:
    """Every validation metric of every picked adapter (long form: tenant, task, name, value)."""
    picked = _picked(f, pick)
    stmt = (
        select(picked.c.tenant, picked.c.task, m.c.name, m.c.value)
        .join(m, and_(m.c.job_id == picked.c.job_id, m.c.source == JOB_SOURCE, m.c.split == QUALITY_SPLIT))
        .order_by(picked.c.tenant, picked.c.task, m.c.name)
    )
    return stmt


def benchmark_task_stats(f: Filters, pick: str) -> Select[Any]:
    """Per task across tenants: count, mean, min, max of the picked primary metric."""
    picked = _picked(f, pick)
    stmt = (
        select(
            picked.c.task,
            picked.c.metric,
            func.count(picked.c.value).label("count"),
            func.avg(picked.c.value).label("mean"),
            func.min(picked.c.value).label("min"),
            func.max(picked.c.value).label("max"),
        )
        .group_by(picked.c.task, picked.c.metric)
        .order_by(picked.c.task)
    )
    return stmt


def benchmark_glue_average(f: Filters, pick: str) -> Select[Any]:
    """Per tenant: the mean primary metric over the GLUE tasks it has, and how many it has."""
    picked = _picked(f, pick)
    stmt = (
        select(picked.c.tenant, func.count().label("tasks"), func.avg(picked.c.value).label("mean"))
        .where(picked.c.task.in_(GLUE_TASKS), picked.c.value.is_not(None))
        .group_by(picked.c.tenant)
        .order_by(picked.c.tenant)
    )
    return stmt


# ---- cost ------------------------------------------------------------------------------------


def _usage_priced(sj: Any, prices: Mapping[str, float]) -> Any:
    """Every usage row of the jobs `sj` with its price and the device-seconds that produced no result."""
    productive = and_(sj.c.state == "succeeded", u.c.attempt == sj.c.attempts)
    return (
        select(
            sj.c.tenant,
            sj.c.job_id,
            u.c.device,
            u.c.device_seconds,
            u.c.examples,
            case((productive, 0.0), else_=u.c.device_seconds).label("wasted_seconds"),
            price_per_hour(u.c.device, prices).label("price"),
        )
        .select_from(u.join(sj, sj.c.job_id == u.c.job_id))
        .cte("usage_priced")
    )


def _by_tenant(cols: list[Any], tenant_col: Any, per_tenant: bool) -> list[Any]:
    return [tenant_col.label("tenant"), *cols] if per_tenant else [literal(None).label("tenant"), *cols]


def cost_jobs_by_state(f: Filters, *, per_tenant: bool) -> Select[Any]:
    sj = scoped_jobs(f)
    group = [sj.c.tenant, sj.c.state] if per_tenant else [sj.c.state]
    stmt = select(*_by_tenant([sj.c.state, func.count().label("n")], sj.c.tenant, per_tenant)).group_by(
        *group
    )
    return stmt


def cost_by_device(f: Filters, prices: Mapping[str, float], *, per_tenant: bool) -> Select[Any]:
    """Device-seconds, wasted device-seconds and money per (tenant,) device."""
    up = _usage_priced(scoped_jobs(f), prices)
    group = [up.c.tenant, up.c.device] if per_tenant else [up.c.device]
    cols = [
        up.c.device,
        func.max(up.c.price).label("price"),
        func.sum(up.c.device_seconds).label("device_seconds"),
        func.sum(up.c.wasted_seconds).label("wasted_seconds"),
        (func.sum(up.c.device_seconds * up.c.price) / 3600.0).label("money"),
    ]
    return select(*_by_tenant(cols, up.c.tenant, per_tenant)).group_by(*group).order_by(*group)


def cost_totals(f: Filters, prices: Mapping[str, float], *, per_tenant: bool) -> Select[Any]:
    """Money, unpriced device-seconds and examples trained per tenant (or in total)."""
    up = _usage_priced(scoped_jobs(f), prices)
    cols = [
        func.coalesce(func.sum(up.c.device_seconds * up.c.price), 0.0).label("money_seconds"),
        func.coalesce(func.sum(case((up.c.price.is_(None), up.c.device_seconds), else_=0.0)), 0.0).label(
            "unpriced_seconds"
        ),
        func.coalesce(func.sum(up.c.examples), 0).label("examples"),
    ]
    stmt = select(*_by_tenant(cols, up.c.tenant, per_tenant))
    if per_tenant:
        stmt = stmt.group_by(up.c.tenant)
    return stmt


def cost_storage(f: Filters, *, per_tenant: bool) -> Select[Any]:
    """Live adapters of the report's jobs: count, bytes, and what full checkpoints would take."""
    sj = scoped_jobs(f)
    full_bytes = case((a.c.method == "full", a.c.bytes), else_=a.c.total_params * BYTES_PER_PARAM[BASE_DTYPE])
    cols = [
        func.count().label("adapters"),
        func.coalesce(func.sum(a.c.bytes), 0).label("adapter_bytes"),
        func.coalesce(func.sum(full_bytes), 0).label("full_bytes"),
    ]
    stmt = (
        select(*_by_tenant(cols, sj.c.tenant, per_tenant))
        .select_from(a.join(sj, sj.c.job_id == a.c.job_id))
        .where(a.c.deleted_at.is_(None))
    )
    if per_tenant:
        stmt = stmt.group_by(sj.c.tenant)
    return stmt


def baselines() -> Any:
    """Per (task, base model): the primary metric of the latest succeeded untuned-baseline job."""
    metric = primary_metric(j.c.task)
    ranked = (
        select(
            j.c.task,
            j.c.base_model,
            m.c.value,
            func.row_number()
            .over(partition_by=(j.c.task, j.c.base_model), order_by=(m.c.created_at.desc(), m.c.id.desc()))
            .label("rn"),
        )
        .select_from(m.join(j, j.c.id == m.c.job_id))
        .where(
            j.c.kind == "evaluate",
            j.c.method == "none",
            j.c.state == "succeeded",
            m.c.adapter_id.is_(None),
            m.c.source == JOB_SOURCE,
            m.c.split == QUALITY_SPLIT,
            m.c.name == metric,
        )
        .subquery("ranked_baselines")
    )
    return select(ranked.c.task, ranked.c.base_model, ranked.c.value).where(ranked.c.rn == 1).cte("baselines")


def _job_money(sj: Any, prices: Mapping[str, float]) -> Any:
    up = _usage_priced(sj, prices)
    return (
        select(up.c.job_id, (func.sum(up.c.device_seconds * up.c.price) / 3600.0).label("money"))
        .group_by(up.c.job_id)
        .cte("job_money")
    )


def cost_quality(f: Filters, prices: Mapping[str, float], *, per_tenant: bool) -> Select[Any]:
    """Money of succeeded training jobs whose (task, base) has an untuned baseline, and their summed
    gain of the primary metric over it, in points."""
    sj = scoped_jobs(f)
    jm, bl = _job_money(sj, prices), baselines()
    metric = primary_metric(sj.c.task)
    pm = m.alias("pm")
    cols = [
        func.sum(jm.c.money).label("money"),
        func.sum((pm.c.value - bl.c.value) * points_scale(metric)).label("gain_points"),
    ]
    stmt = (
        select(*_by_tenant(cols, sj.c.tenant, per_tenant))
        .select_from(
            sj.join(jm, jm.c.job_id == sj.c.job_id)
            .join(bl, and_(bl.c.task == sj.c.task, bl.c.base_model == sj.c.base_model))
            .join(
                pm,
                and_(
                    pm.c.job_id == sj.c.job_id,
                    pm.c.source == JOB_SOURCE,
                    pm.c.split == QUALITY_SPLIT,
                    pm.c.name == metric,
                ),
            )
        )
        .where(sj.c.kind == "train", sj.c.state == "succeeded")
    )
    if per_tenant:
        stmt = stmt.group_by(sj.c.tenant)
    return stmt


def adapter_points(f: Filters, prices: Mapping[str, float]) -> Select[Any]:
    """One row per live adapter: its job's money (every attempt) and its primary metric."""
    sj = scoped_jobs(f, kinds=("train",))
    jm = _job_money(sj, prices)
    metric = primary_metric(sj.c.task)
    pm = m.alias("pm")
    stmt = (
        select(sj.c.tenant, sj.c.task, sj.c.method, sj.c.rank, jm.c.money, pm.c.value.label("quality"))
        .select_from(sj.join(a, a.c.job_id == sj.c.job_id).join(jm, jm.c.job_id == sj.c.job_id))
        .outerjoin(
            pm,
            and_(
                pm.c.job_id == sj.c.job_id,
                pm.c.source == JOB_SOURCE,
                pm.c.split == QUALITY_SPLIT,
                pm.c.name == metric,
            ),
        )
        .where(a.c.deleted_at.is_(None))
        .order_by(sj.c.tenant, sj.c.task, a.c.created_at)
    )
    return stmt


# ---- compare ---------------------------------------------------------------------------------

COMPARE_VALUES = (
    "quality",
    "trainable_params",
    "trainable_fraction",
    "checkpoint_bytes",
    "device_seconds",
    "examples_per_second",
    "peak_memory_bytes",
    "majority_class_rate",
)


def _method_order(method_col: Any) -> Any:
    return case({"none": 0, "lora": 1, "rslora": 2, "dora": 3, "full": 4}, value=method_col, else_=5)


def compare_rows(f: Filters) -> Select[Any]:
    """Per (task, base model, method, rank): n succeeded runs and the median of each figure.

    Training runs contribute their adapter's size/params and the successful attempt's usage; the
    untuned baseline (kind 'evaluate', method 'none') contributes its quality and majority rate.
    Full fine-tuning and the untuned base have no meaningful rank: they are grouped with rank 0.
    """
    sj = scoped_jobs(f, kinds=("train", "evaluate"))
    metric = primary_metric(sj.c.task)
    pm, mm = m.alias("pm"), m.alias("mm")
    rank_key = case((sj.c.method.in_(("full", "none")), 0), else_=sj.c.rank).label("rank_key")
    is_train = sj.c.kind == "train"
    dev_s = case((is_train, u.c.device_seconds))
    values = {
        "quality": pm.c.value,
        "trainable_params": a.c.trainable_params,
        "trainable_fraction": cast(a.c.trainable_params, Float) / func.nullif(a.c.total_params, 0),
        "checkpoint_bytes": a.c.bytes,
        "device_seconds": dev_s,
        "examples_per_second": cast(case((is_train, u.c.examples)), Float) / func.nullif(dev_s, 0.0),
        "peak_memory_bytes": case((is_train, u.c.peak_memory_bytes)),
        "majority_class_rate": mm.c.value,
    }
    keys = [sj.c.task, sj.c.base_model, sj.c.method, rank_key]
    part = (sj.c.task, sj.c.base_model, sj.c.method, rank_key)
    cols: list[Any] = [*keys]
    for name, expr in values.items():
        cols += [
            expr.label(name),
            func.row_number().over(partition_by=part, order_by=(expr.is_(None), expr)).label(f"rn_{name}"),
            func.count(expr).over(partition_by=part).label(f"n_{name}"),
        ]
    runs = (
        select(*cols)
        .select_from(sj)
        .outerjoin(a, a.c.job_id == sj.c.job_id)
        .outerjoin(u, and_(u.c.job_id == sj.c.job_id, u.c.attempt == sj.c.attempts))
        .outerjoin(
            pm,
            and_(
                pm.c.job_id == sj.c.job_id,
                pm.c.source == JOB_SOURCE,
                pm.c.split == QUALITY_SPLIT,
                pm.c.name == metric,
            ),
        )
        .outerjoin(
            mm,
            and_(
                mm.c.job_id == sj.c.job_id,
                mm.c.source == JOB_SOURCE,
                mm.c.split == QUALITY_SPLIT,
                mm.c.name == "majority_class_rate",
            ),
        )
        .where(
            sj.c.state == "succeeded",
            or_(and_(is_train, a.c.id.is_not(None)), and_(sj.c.kind == "evaluate", sj.c.method == "none")),
        )
        .subquery("runs")
    )

    def median(name: str) -> Any:
        rn, n, v = runs.c[f"rn_{name}"], runs.c[f"n_{name}"], runs.c[name]
        middle = or_(rn == (n + 1) // 2, rn == (n + 2) // 2)
        return func.avg(case((and_(v.is_not(None), middle), cast(v, Float)))).label(name)

    group = [runs.c.task, runs.c.base_model, runs.c.method, runs.c.rank_key]
    stmt = (
        select(
            runs.c.task,
            runs.c.base_model,
            runs.c.method,
            runs.c.rank_key.label("rank"),
            func.count().label("n"),
            *(median(name) for name in COMPARE_VALUES),
        )
        .group_by(*group)
        .order_by(runs.c.task, runs.c.base_model, _method_order(runs.c.method), runs.c.rank_key)
    )
    return stmt


# ---- plans (bench/) --------------------------------------------------------------------------


def explain(session: Session, stmt: Select[Any]) -> str:
    """The database's query plan for `stmt` (EXPLAIN QUERY PLAN on SQLite, EXPLAIN on PostgreSQL)."""
    bind = session.get_bind()
    compiled = stmt.compile(bind, compile_kwargs={"literal_binds": True})
    prefix = "EXPLAIN QUERY PLAN " if bind.dialect.name == "sqlite" else "EXPLAIN "
    rows = session.connection().exec_driver_sql(prefix + str(compiled)).all()
    if bind.dialect.name == "sqlite":
        return "\n".join(" ".join(str(c) for c in r[1:]) for r in rows)
    return "\n".join(r[0] for r in rows)
