"""The reports' SQL: every aggregation is a GROUP BY in the database, every "latest / best" pick a
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

from collections.abc import Mapping
from typing import Any, NamedTuple

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
    union_all,
)
from sqlalchemy.orm import Session
from sqlalchemy.sql import ColumnElement, Select

from lora_engine.catalog import GLUE_TASKS, TASKS
from orchestrator.registry.models import Adapter, Job, Metric, MetricPoint, Tenant, Usage
from orchestrator.reports.model import BASE_DTYPE, BYTES_PER_PARAM, COMPARE_VALUES, Filters
from orchestrator.reports.references import FRACTION_METRICS

QUALITY_SPLIT = "validation"
# Inline SQL literals, not bound parameters: the planner can then use the partial indexes on
# metrics (WHERE source = 'job' / 'reevaluation') even in a generic plan.
JOB_SOURCE = literal("job", literal_execute=True)
REEVALUATION_SOURCE = literal("reevaluation", literal_execute=True)
j, t, a, m, u, mh = (x.__table__ for x in (Job, Tenant, Adapter, Metric, Usage, MetricPoint))


# ---- shared expressions ----------------------------------------------------------------------


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


def _picked(f: Filters, pick: str) -> Any:
    """Per (tenant, task): the picked live adapter of a succeeded training job, with its primary
    metric, and how many candidates there were (`row_number` / `count` windows)."""
    sj = scoped_jobs(f, kinds=("train",))
    pm = join_primary_metric(a.join(sj, sj.c.job_id == a.c.job_id), a.c.job_id, a.c.task)
    value = pm.value
    part = (a.c.tenant_id, a.c.task)
    if pick == "best":
        order = (value.is_(None), value.desc(), a.c.created_at.desc(), a.c.id.desc())
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
            pm.metric,
            value,
            func.row_number().over(partition_by=part, order_by=order).label("rn"),
            func.count().over(partition_by=part).label("candidates"),
        )
        .select_from(pm.from_)
        .where(a.c.deleted_at.is_(None), sj.c.state == "succeeded")
        .subquery("candidates")
    )
    return select(cand).where(cand.c.rn == 1).cte("picked")


def benchmark_rows(f: Filters, pick: str) -> Select[Any]:
    """One row per (tenant, task, metric name) of the picked adapters: the pick, its primary
    metric, its latest re-evaluation and — as window aggregates over the picks — the per-task
    count/mean/min/max across tenants and the tenant's GLUE average (mean over the GLUE tasks it
    has, and how many); then `name`/`metric_value`, each validation metric of the pick."""
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
        .where(m.c.source == REEVALUATION_SOURCE, m.c.split == QUALITY_SPLIT)
        .subquery("reevaluated")
    )
    by_task = {"partition_by": picked.c.task}
    glue_value = case((picked.c.task.in_(GLUE_TASKS), picked.c.value))
    cells = (
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
            func.count(picked.c.value).over(**by_task).label("task_count"),
            func.avg(picked.c.value).over(**by_task).label("task_mean"),
            func.min(picked.c.value).over(**by_task).label("task_min"),
            func.max(picked.c.value).over(**by_task).label("task_max"),
            func.count(glue_value).over(partition_by=picked.c.tenant).label("glue_tasks"),
            func.avg(glue_value).over(partition_by=picked.c.tenant).label("glue_mean"),
        )
        .outerjoin(
            re, and_(re.c.adapter_id == picked.c.adapter_id, re.c.name == picked.c.metric, re.c.rn == 1)
        )
        .subquery("cells")
    )
    return (
        select(cells, m.c.name, m.c.value.label("metric_value"))
        .select_from(cells)
        .outerjoin(
            m, and_(m.c.job_id == cells.c.job_id, m.c.source == JOB_SOURCE, m.c.split == QUALITY_SPLIT)
        )
        .order_by(cells.c.tenant, cells.c.task, m.c.name)
    )



def curve_points(job_ids: list[str], names: list[str], buckets: int) -> Select[Any]:
    """The training curves of `job_ids` (series `names`), each series cut into at most `buckets`
    equal step ranges: per range its first step, mean epoch and mean value (a 10,000-step loss
    comes back as `buckets` points, not 10,000 rows)."""
    last = (select(mh.c.job_id, mh.c.name, func.max(mh.c.step).label("last"))
            .where(mh.c.job_id.in_(job_ids), mh.c.name.in_(names))
            .group_by(mh.c.job_id, mh.c.name).subquery("last_step"))
    # Floor division of integers: steps 1..last map onto buckets 0..buckets-1.
    bucket = ((mh.c.step - 1) * buckets // case((last.c.last > 0, last.c.last), else_=1)).label("bucket")
    return (
        select(mh.c.job_id, mh.c.name, func.min(mh.c.step).label("step"),
               func.avg(mh.c.epoch).label("epoch"), func.avg(mh.c.value).label("value"))
        .join(last, and_(last.c.job_id == mh.c.job_id, last.c.name == mh.c.name))
        .group_by(mh.c.job_id, mh.c.name, bucket)
        .order_by(mh.c.job_id, mh.c.name, func.min(mh.c.step))
    )


# ---- cost ------------------------------------------------------------------------------------
# Each cost query groups once per (tenant[, device]) in a CTE and adds the report's total rows
# (tenant NULL) in the same statement by grouping that CTE again (`_rollup`, UNION ALL): one scan
# of the registry per query, and no GROUPING SETS (SQLite has none).


def _rollup(per: Any, keys: list[str], sums: list[str], *, over_keys: bool = False) -> Select[Any]:
    """`per` (grouped by tenant and `keys`) plus its totals, as NULLs in the grouping columns:
    tenant NULL = over the report's tenants; with `over_keys`, also the keys NULL = over them."""

    def level(tenant: bool, keep_keys: bool) -> Select[Any]:
        group = ([per.c.tenant] if tenant else []) + ([per.c[k] for k in keys] if keep_keys else [])
        cols = [per.c.tenant if tenant else literal(None).label("tenant")]
        cols += [per.c[k] if keep_keys else literal(None).label(k) for k in keys]
        stmt = select(*cols, *(func.sum(per.c[name]).label(name) for name in sums))
        return stmt.group_by(*group) if group else stmt

    levels = [
        select(per.c.tenant, *(per.c[k] for k in keys), *(per.c[name] for name in sums)),
        level(False, True),
    ]
    if over_keys and keys:
        levels += [level(True, False), level(False, False)]
    return union_all(*levels)


def cost_jobs_by_state(f: Filters) -> Select[Any]:
    """(tenant, state, n) per tenant, then (NULL, state, n) for the total."""
    sj = scoped_jobs(f)
    per = (
        select(sj.c.tenant, sj.c.state, func.count().label("n"))
        .group_by(sj.c.tenant, sj.c.state)
        .cte("jobs_by_state")
    )
    return _rollup(per, ["state"], ["n"])


def cost_by_device(f: Filters, prices: Mapping[str, float]) -> Select[Any]:
    """Per (tenant, device): device-seconds, the part spent with no adapter, money × 3600,
    device-seconds without a price, examples trained; then the same summed per device over the
    tenants (tenant NULL), per tenant over its devices (device NULL), and in all (both NULL)."""
    sj = scoped_jobs(f)
    bl = baselines()
    productive = and_(sj.c.state == "succeeded", u.c.attempt == sj.c.attempts)
    price = price_per_hour(u.c.device, prices)
    # Money of the succeeded training jobs whose task and base have an untuned baseline (the
    # numerator of "cost per quality point"; cost_quality sums their gains).
    with_baseline = and_(bl.c.value.is_not(None), sj.c.kind == "train", sj.c.state == "succeeded")
    per = (
        select(
            sj.c.tenant,
            u.c.device,
            price.label("price"),
            func.sum(u.c.device_seconds).label("device_seconds"),
            func.sum(case((productive, 0.0), else_=u.c.device_seconds)).label("wasted_seconds"),
            func.sum(u.c.device_seconds * price).label("money_seconds"),
            func.sum(case((price.is_(None), u.c.device_seconds), else_=0.0)).label("unpriced_seconds"),
            func.sum(u.c.examples).label("examples"),
            func.sum(case((with_baseline, u.c.device_seconds * price))).label("baseline_money_seconds"),
        )
        .select_from(u.join(sj, sj.c.job_id == u.c.job_id))
        .outerjoin(bl, and_(bl.c.task == sj.c.task, bl.c.base_model == sj.c.base_model))
        .group_by(sj.c.tenant, u.c.device, price)  # the price is the device's: no finer groups
        .cte("cost_by_device")
    )
    sums = [
        "device_seconds",
        "wasted_seconds",
        "money_seconds",
        "unpriced_seconds",
        "examples",
        "baseline_money_seconds",
    ]
    return _rollup(per, ["device", "price"], sums, over_keys=True)


def cost_storage(f: Filters) -> Select[Any]:
    """Live adapters of the report's jobs: count, bytes, and what full checkpoints would take."""
    sj = scoped_jobs(f)
    full_bytes = case((a.c.method == "full", a.c.bytes), else_=a.c.total_params * BYTES_PER_PARAM[BASE_DTYPE])
    per = (
        select(
            sj.c.tenant,
            func.count().label("adapters"),
            func.sum(a.c.bytes).label("adapter_bytes"),
            func.sum(full_bytes).label("full_bytes"),
        )
        .select_from(a.join(sj, sj.c.job_id == a.c.job_id))
        .where(a.c.deleted_at.is_(None))
        .group_by(sj.c.tenant)
        .cte("cost_storage")
    )
    return _rollup(per, [], ["adapters", "adapter_bytes", "full_bytes"])


def baselines() -> Any:
    """Per (task, base model): the primary metric of the latest succeeded untuned-baseline job."""
    pm = join_primary_metric(j, j.c.id, j.c.task, outer=False)
    r = pm.row
    ranked = (
        select(
            j.c.task,
            j.c.base_model,
            r.c.value,
            func.row_number()
            .over(partition_by=(j.c.task, j.c.base_model), order_by=(r.c.created_at.desc(), r.c.id.desc()))
            .label("rn"),
        )
        .select_from(pm.from_)
        .where(
            j.c.kind == "evaluate",
            j.c.method == "none",
            j.c.state == "succeeded",
            r.c.adapter_id.is_(None),
        )
        .subquery("ranked_baselines")
    )
    return (
        select(ranked.c.task, ranked.c.base_model, ranked.c.value)
        .where(ranked.c.rn == 1)
        .subquery("baselines")
    )


def _job_money(prices: Mapping[str, float]) -> Any:
    """Money × 3600 per job over all its attempts. Straight from `usage` (the caller's join to its
    jobs scopes it): a second reference to the scoped-jobs CTE would make PostgreSQL materialise
    it, and a join between materialised CTEs has no index and a poor row estimate."""
    return (
        select(
            u.c.job_id,
            func.sum(u.c.device_seconds * price_per_hour(u.c.device, prices)).label("money_seconds"),
        )
        .group_by(u.c.job_id)
        .subquery("job_money")
    )


def cost_quality(f: Filters) -> Select[Any]:
    """Per tenant, then the total: the summed gain (points) of the primary metric of succeeded
    training jobs over the untuned baseline of their task and base (the denominator of "cost per
    quality point"; the money is cost_by_device's baseline_money_seconds)."""
    sj = scoped_jobs(f, kinds=("train",))
    bl = baselines()
    pm = join_primary_metric(
        sj.join(bl, and_(bl.c.task == sj.c.task, bl.c.base_model == sj.c.base_model)),
        sj.c.job_id,
        sj.c.task,
        outer=False,
    )
    per = (
        select(sj.c.tenant, func.sum((pm.value - bl.c.value) * points_scale(pm.metric)).label("gain_points"))
        .select_from(pm.from_)
        .where(sj.c.state == "succeeded")
        .group_by(sj.c.tenant)
        .cte("cost_quality")
    )
    return _rollup(per, [], ["gain_points"])


def adapter_points(f: Filters, prices: Mapping[str, float]) -> Select[Any]:
    """One row per live adapter: its job's money × 3600 (every attempt) and its primary metric."""
    sj = scoped_jobs(f, kinds=("train",))
    jm = _job_money(prices)
    pm = join_primary_metric(
        sj.join(a, a.c.job_id == sj.c.job_id).join(jm, jm.c.job_id == sj.c.job_id), sj.c.job_id, sj.c.task
    )
    return (
        select(
            sj.c.tenant, sj.c.task, sj.c.method, sj.c.rank, jm.c.money_seconds, pm.value.label("quality")
        )
        .select_from(pm.from_)
        .where(a.c.deleted_at.is_(None))
        .order_by(sj.c.tenant, sj.c.task, a.c.created_at)
    )


# ---- compare ---------------------------------------------------------------------------------



def _method_order(method_col: Any) -> Any:
    return case({"none": 0, "lora": 1, "rslora": 2, "dora": 3, "full": 4}, value=method_col, else_=5)


def compare_rows(f: Filters) -> Select[Any]:
    """Per (task, base model, method, rank): n succeeded runs and the median of each figure.

    Training runs contribute their adapter's size/params and the successful attempt's usage; the
    untuned baseline (kind 'evaluate', method 'none') contributes its quality and majority rate.
    Full fine-tuning and the untuned base have no meaningful rank: they are grouped with rank 0.
    """
    sj = scoped_jobs(f, kinds=("train", "evaluate"))
    pm, mm = join_primary_metric(sj, sj.c.job_id, sj.c.task), m.alias("mm")
    rank_key = case((sj.c.method.in_(("full", "none")), 0), else_=sj.c.rank).label("rank_key")
    is_train = sj.c.kind == "train"
    dev_s = case((is_train, u.c.device_seconds))
    values = {
        "quality": pm.value,
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
        .select_from(pm.from_)
        .outerjoin(a, a.c.job_id == sj.c.job_id)
        .outerjoin(u, and_(u.c.job_id == sj.c.job_id, u.c.attempt == sj.c.attempts))
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
