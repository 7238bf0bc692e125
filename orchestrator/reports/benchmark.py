"""The benchmark report: tenants × tasks, each tenant's picked adapter per task with its metrics,
per-task statistics and GLUE averages across tenants, published reference numbers beside them,
and the picks' training curves. Its model, its tables, its SQL and the service that fills it."""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime
from typing import Any

from sqlalchemy import and_, case, func, select
from sqlalchemy.orm import Session
from sqlalchemy.sql import Select

from lora_engine.catalog import ALL_TASKS, GLUE_TASKS
from orchestrator.config import get_settings
from orchestrator.errors import InvalidInput
from orchestrator.registry.models import Adapter, Metric, MetricPoint
from orchestrator.reports.references import E2E_REFERENCES, GLUE_AVERAGE_REFERENCE, GLUE_REFERENCES, points
from orchestrator.reports.scope import (
    JOB_SOURCE,
    QUALITY_SPLIT,
    REEVALUATION_SOURCE,
    Filters,
    fetch_rows,
    iso,
    join_primary_metric,
    prepare,
    scoped_jobs,
)
from orchestrator.reports.tables import Column, Table, record
from orchestrator.services._tx import readonly

PICKS = ("latest", "best")
# The benchmark's training curves: the first MAX_CURVES picks (table order), CURVE_POINTS a series.
MAX_CURVES = 12
CURVE_POINTS = 200
a, m, mh = (x.__table__ for x in (Adapter, Metric, MetricPoint))


# ---- model -----------------------------------------------------------------------------------


@dataclass
class BenchmarkCell:
    tenant: str
    task: str
    metric: str  # the task's primary metric
    value: float | None
    adapter_id: str
    job_id: str
    method: str
    rank: int
    base_model: str
    created_at: datetime
    candidates: int  # how many live adapters the pick chose among
    metrics: dict[str, float] = field(default_factory=dict)  # every validation metric of the pick
    reevaluated: float | None = None  # the latest re-evaluation of the primary metric
    reevaluated_at: datetime | None = None
    trivial: float | None = None  # the task's trivial baseline (best constant prediction), if known

    @property
    def at_trivial(self) -> bool:
        """The score is no result: within lora_engine.baseline.MARGIN of the trivial baseline."""
        from lora_engine.baseline import at_baseline

        return self.value is not None and self.trivial is not None and at_baseline(self.value, self.trivial)

    @property
    def drift(self) -> float | None:
        if self.reevaluated is None or self.value is None:
            return None
        return self.reevaluated - self.value

    def to_dict(self) -> dict[str, Any]:
        # Built by hand, not dataclasses.asdict (a deep copy: 10x slower over 100k cells).
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["created_at"] = iso(self.created_at)
        out["reevaluated_at"] = iso(self.reevaluated_at)
        out["metrics"] = dict(sorted(self.metrics.items()))
        out["drift"] = self.drift
        out["at_trivial"] = self.at_trivial
        return out


@dataclass
class TaskStats:
    task: str
    metric: str
    count: int
    mean: float | None
    min: float | None
    max: float | None
    reference: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class GlueAverage:
    tenant: str
    tasks: int
    mean: float

    @property
    def label(self) -> str:
        return "GLUE avg (8 of 8)" if self.tasks == 8 else f"partial avg ({self.tasks} of 8)"

    def to_dict(self) -> dict[str, Any]:
        return {
            "tenant": self.tenant,
            "tasks": self.tasks,
            "mean": self.mean,
            "complete": self.tasks == 8,
            "label": self.label,
        }


@dataclass
class TrainingCurve:
    """A picked adapter's training curves from the metric history: the loss, and the held-out
    primary metric (`holdout/<metric>`) when its job evaluated during training. Long runs come
    back bucketed (at most CURVE_POINTS points a series, bucket means)."""

    tenant: str
    task: str
    job_id: str
    metric: str  # the task's primary metric
    loss: list[tuple[int, float, float]]  # (step, epoch, value)
    holdout: list[tuple[int, float, float]]

    def to_dict(self) -> dict[str, Any]:
        def pts(series: list[tuple[int, float, float]]) -> list[dict[str, Any]]:
            return [{"step": s, "epoch": e, "value": v} for s, e, v in series]

        return {"tenant": self.tenant, "task": self.task, "job_id": self.job_id, "metric": self.metric,
                "loss": pts(self.loss), "holdout": pts(self.holdout)}


@dataclass
class BenchmarkReport:
    filters: Filters
    pick: str  # "latest" | "best"
    tenants: list[str]
    tasks: list[str]
    cells: list[BenchmarkCell]
    task_stats: list[TaskStats]
    glue: list[GlueAverage]
    references: dict[str, Any]
    curves: list[TrainingCurve] = field(default_factory=list)  # the first MAX_CURVES picks' jobs

    def to_dict(self) -> dict[str, Any]:
        return {
            "report": "benchmark",
            "filters": self.filters.to_dict(),
            "pick": self.pick,
            "tenants": self.tenants,
            "tasks": self.tasks,
            "cells": [c.to_dict() for c in self.cells],
            "task_stats": [s.to_dict() for s in self.task_stats],
            "glue_average": [g.to_dict() for g in self.glue],
            "references": self.references,
            "curves": [c.to_dict() for c in self.curves],
        }

    def records(self) -> list[dict[str, Any]]:
        out = []
        for c in self.cells:
            keys = dict(tenant=c.tenant, task=c.task, base_model=c.base_model, method=c.method, rank=c.rank)
            out.append(record("pick", "candidates", c.candidates, **keys))
            out += [record("metric", name, value, **keys) for name, value in sorted(c.metrics.items())]
            if c.reevaluated is not None:
                out.append(record("reevaluation", c.metric, c.reevaluated, **keys))
                out.append(record("drift", c.metric, c.drift, **keys))
        for s in self.task_stats:
            for name in ("count", "mean", "min", "max"):
                out.append(record("task_stats", f"{s.metric}_{name}", getattr(s, name), task=s.task))
        for g in self.glue:
            out.append(record("glue_average", "mean", g.mean, tenant=g.tenant))
            out.append(record("glue_average", "tasks", g.tasks, tenant=g.tenant))
        return out

    def tables(self) -> list[Table[Any]]:
        by_cell = {(c.tenant, c.task): c for c in self.cells}
        glue = {g.tenant: g for g in self.glue}
        rows = []
        for tenant in self.tenants:
            cells = {t: cell_text(by_cell[tenant, t]) for t in self.tasks if (tenant, t) in by_cell}
            g = glue.get(tenant)
            average = None if g is None else f"{points('accuracy', g.mean):.1f} ({g.tasks} of 8)"
            rows.append(GridRow(tenant, cells, average))
        if rows:
            rows.append(self._published_row())
        grid: list[Column[GridRow]] = [
            Column("tenant", lambda r: r.label, "name"),
            *(Column(task, lambda r, task=task: r.cells.get(task)) for task in self.tasks),
            Column("GLUE average", lambda r: r.average),
        ]
        notes = [
            f"Each cell: the primary metric (points) of the tenant's {self.pick} adapter for the task "
            f"(pick `{self.pick}`: "
            + ("newest adapter" if self.pick == "latest" else "highest primary metric, newest on ties")
            + "), then [n] = how many live adapters it was picked from.",
            "GLUE average: mean of the primary metrics over the GLUE tasks the tenant has; "
            "labelled 'n of 8' unless all 8 are there.",
        ]
        if any(c.at_trivial for c in self.cells):
            notes.append("'= trivial': no better than always predicting one class (MCC/correlation 0, "
                         "the validation rows' majority rate), within 2 points: the model learned nothing.")
        if any(c.reevaluated is not None for c in self.cells):
            notes.append("'re' = the latest re-evaluation of the same adapter, as drift in pp.")
        out: list[Table[Any]] = [
            Table("benchmark", "Benchmark: tenants × tasks", grid, rows, notes, keep_last=1 if rows else 0)
        ]
        stats: list[Column[TaskStats]] = [
            Column("task", lambda s: s.task, "name"),
            Column("metric", lambda s: s.metric, "name"),
            Column("count", lambda s: s.count, "int"),
            Column("mean", lambda s: s.mean, "points"),
            Column("min", lambda s: s.min, "points"),
            Column("max", lambda s: s.max, "points"),
            Column("published", lambda s: s.reference and s.reference["value"], "points"),
            Column("published for", lambda s: s.reference and s.reference["label"], "name"),
        ]
        out.append(
            Table(
                "benchmark_tasks",
                "Per task across tenants",
                stats,
                self.task_stats,
                [
                    "Published numbers are other base models on other evaluation sets: a horizon, not a "
                    "like-for-like comparison."
                ],
            )
        )
        e2e = [E2ERow(c.tenant, f"{c.method} r={c.rank}", c.metrics) for c in self.cells if c.task == "e2e"]
        if e2e:
            refs = self.references.get("e2e", {})
            if refs:
                label = next(iter(refs.values()))["label"]
                e2e.append(E2ERow(label, "published", {n: ref["value"] for n, ref in refs.items()}))
            e2e_columns: list[Column[E2ERow]] = [
                Column("tenant", lambda r: r.label, "name"),
                Column("adapter", lambda r: r.adapter, "name"),
                *(Column(n, lambda r, n=n: r.metrics.get(n), kind) for n, kind in E2E_METRICS.items()),
            ]
            out.append(Table("benchmark_e2e", "E2E: the five metrics", e2e_columns, e2e))
        return out

    def _published_row(self) -> GridRow:
        """The published numbers on a row of their own, labelled: a horizon, not our run."""
        glue_refs = self.references.get("glue", {})
        e2e_bleu = self.references.get("e2e", {}).get("bleu")
        cells = {}
        for task in self.tasks:
            ref = glue_refs.get(task) or (e2e_bleu if task == "e2e" else None)
            if ref is not None:
                cells[task] = f"{ref['published']:.1f}"
        avg = self.references.get("glue_average")
        return GridRow(
            _published_label(glue_refs, e2e_bleu if "e2e" in self.tasks else None),
            cells,
            None if avg is None else f"{avg['published']:.1f} (8 of 8)",
        )


@dataclass
class GridRow:
    """A row of the tenants × tasks table: a tenant (or the published numbers) and its cells' text."""

    label: str
    cells: dict[str, str]  # by task
    average: str | None


@dataclass
class E2ERow:
    """A row of the E2E table: a tenant's pick (or the published numbers) and its five metrics."""

    label: str
    adapter: str
    metrics: dict[str, float]


# The E2E table's metrics and how each is shown (NIST and CIDEr are not fractions).
E2E_METRICS = {"bleu": "points", "nist": "num", "meteor": "points", "rouge_l": "points", "cider": "num"}


def _published_label(glue: dict[str, Any], e2e: dict[str, Any] | None) -> str:
    first = next(iter(glue.values()))
    text = f"published: {first['base_model']} on {first['eval_set']}"
    if e2e is not None:
        text += f"; {e2e['base_model']} on {e2e['eval_set']}"
    return text + " (LoRA paper)"


def cell_text(c: BenchmarkCell) -> str:
    """A tenants × tasks cell: the primary metric in points, [candidates], '= trivial' when the
    score is no result, and the drift of the latest re-evaluation."""
    if c.value is None:
        return f"- [{c.candidates}]"
    text = f"{points(c.metric, c.value):.1f} [{c.candidates}]"
    if c.at_trivial:
        text += " = trivial"
    if c.drift is not None:
        text += f" re {points(c.metric, c.drift):+.1f}"
    return text


# ---- SQL -------------------------------------------------------------------------------------


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


# ---- the service -----------------------------------------------------------------------------


def _trivial(task: str, metric: str) -> float | None:
    """The task's trivial baseline for `metric` from its data files (a constant per task, not a
    registry aggregate)."""
    return _trivial_in(task, metric, str(get_settings().data_dir))


@functools.lru_cache(maxsize=64)
def _trivial_in(task: str, metric: str, data_dir: str) -> float | None:
    from lora_engine.baseline import trivial_score

    return trivial_score(task, metric, data_dir=data_dir)


@readonly
def benchmark_report(session: Session, filters: Filters, pick: str = "latest") -> BenchmarkReport:
    if pick not in PICKS:
        raise InvalidInput(f"unknown pick {pick!r}; allowed: {', '.join(PICKS)}")
    prepare(session, filters)
    rows = fetch_rows(session, benchmark_rows(filters, pick))
    first: dict[tuple[str, str], dict[str, Any]] = {}  # one row per metric: the cell is on each
    for r in rows:
        first.setdefault((r["tenant"], r["task"]), r)
    cell_rows = list(first.values())
    cells = {
        (r["tenant"], r["task"]): BenchmarkCell(
            tenant=r["tenant"],
            task=r["task"],
            metric=r["metric"],
            value=r["value"],
            adapter_id=r["adapter_id"],
            job_id=r["job_id"],
            method=r["method"],
            rank=r["rank"],
            base_model=r["base_model"],
            created_at=r["created_at"],
            candidates=int(r["candidates"]),
            reevaluated=r["reevaluated"],
            reevaluated_at=r["reevaluated_at"],
        )
        for r in cell_rows
    }
    for r in rows:
        if r["name"] is not None:
            cells[(r["tenant"], r["task"])].metrics[r["name"]] = r["metric_value"]
    for c in cells.values():
        c.trivial = _trivial(c.task, c.metric)
    # The per-task and per-tenant aggregates come with every cell (window aggregates in SQL):
    # read them from the first cell of each task / tenant.
    stats: dict[str, TaskStats] = {}
    glue: dict[str, GlueAverage] = {}
    for r in cell_rows:
        if r["task"] not in stats:
            ref = GLUE_REFERENCES.get(r["task"]) or (E2E_REFERENCES["bleu"] if r["task"] == "e2e" else None)
            stats[r["task"]] = TaskStats(
                task=r["task"],
                metric=r["metric"],
                count=int(r["task_count"]),
                mean=r["task_mean"],
                min=r["task_min"],
                max=r["task_max"],
                reference=ref.to_dict() if ref else None,
            )
        if r["tenant"] not in glue and r["glue_tasks"]:
            glue[r["tenant"]] = GlueAverage(
                tenant=r["tenant"], tasks=int(r["glue_tasks"]), mean=r["glue_mean"]
            )
    tenants = sorted({c.tenant for c in cells.values()} | set(filters.tenants))
    tasks = sorted({c.task for c in cells.values()}, key=ALL_TASKS.index)
    references = {
        "glue": {task: ref.to_dict() for task, ref in GLUE_REFERENCES.items()},
        "glue_average": {
            "published": GLUE_AVERAGE_REFERENCE,
            "value": GLUE_AVERAGE_REFERENCE / 100.0,
            "label": next(iter(GLUE_REFERENCES.values())).label,
        },
        "e2e": {metric: ref.to_dict() for metric, ref in E2E_REFERENCES.items()},
    }
    return BenchmarkReport(
        filters=filters,
        pick=pick,
        tenants=tenants,
        tasks=tasks,
        cells=list(cells.values()),
        task_stats=sorted(stats.values(), key=lambda x: x.task),
        glue=sorted(glue.values(), key=lambda g: g.tenant),
        references=references,
        curves=_curves(session, list(cells.values())),
    )


def _curves(session: Session, cells: list[BenchmarkCell]) -> list[TrainingCurve]:
    """The loss and held-out primary metric of the first MAX_CURVES picks that have a history."""
    shown = sorted(cells, key=lambda c: (c.tenant, ALL_TASKS.index(c.task)))[:MAX_CURVES]
    if not shown:
        return []
    names = sorted({"loss", *(f"holdout/{c.metric}" for c in shown)})
    series: dict[tuple[str, str], list[tuple[int, float, float]]] = {}
    for r in fetch_rows(session, curve_points([c.job_id for c in shown], names, CURVE_POINTS)):
        series.setdefault((r["job_id"], r["name"]), []).append((int(r["step"]), float(r["epoch"]),
                                                                float(r["value"])))
    curves = []
    for c in shown:
        loss, holdout = series.get((c.job_id, "loss"), []), series.get((c.job_id, f"holdout/{c.metric}"), [])
        if loss or holdout:
            curves.append(TrainingCurve(c.tenant, c.task, c.job_id, c.metric, loss, holdout))
    return curves
