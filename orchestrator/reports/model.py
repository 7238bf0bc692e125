"""The report model: plain dataclasses, filled from SQL results, read by every renderer.

Each report has three views, all derived from the same fields:
- `to_dict()`: everything, raw registry values (metrics on the registry's scale, seconds, bytes),
  stable keys — what `--json` prints;
- `records()`: the same figures in long form with fixed columns (RECORD_COLUMNS) — the CSV;
- `tables()`: what a person reads (terminal, Markdown, HTML), numbers with a format per column.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime
from typing import Any, Generic, TypeVar

from orchestrator.reports.references import points

# The medians a compare row carries per (task, base model, method, rank): the query computes
# them, the records name them.
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

# Every base model trains in float32 here (lora_engine loads them so), so a full checkpoint of a
# model with P parameters takes P × 4 bytes.
BASE_DTYPE = "float32"
BYTES_PER_PARAM = {"float32": 4, "bfloat16": 2, "float16": 2}
FULL_SIZE_RULE = (
    "full-checkpoint size = total_params × 4 bytes (float32, the dtype every base trains in) for "
    "adapter jobs; the measured checkpoint size for full fine-tuning jobs"
)
RECORD_COLUMNS = ("section", "tenant", "task", "base_model", "method", "rank", "device", "name", "value")
GB = 1e9
R = TypeVar("R")


@dataclass(frozen=True)
class Filters:
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
            "since": _iso(self.since),
            "until": _iso(self.until),
        }


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


# ---- human tables ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Column(Generic[R]):
    """One column of a table, declared on one line: its header, how its value is read from a row,
    and its kind (a key of FORMATS: how the value is shown; "name" is text aligned left)."""

    header: str
    get: Callable[[R], Any]
    kind: str = "text"

    @property
    def align(self) -> str:
        return "left" if self.kind == "name" else "right"


def _money(v: float) -> str:
    """4 decimals; below a cent, 3 significant digits (CPU minutes cost fractions of a cent)."""
    if v == 0 or abs(v) >= 0.01:
        return f"${v:,.4f}"
    return f"${v:.{2 - math.floor(math.log10(abs(v)))}f}"


def _ratio(v: float) -> str:
    return f"{v:.1f}×" if v < 100 else f"{v:,.0f}×"


FORMATS = {
    "text": str,
    "name": str,
    "int": lambda v: f"{int(v):,}",
    "points": lambda v: f"{points('accuracy', v):.1f}",  # a fraction metric, in points
    "num": lambda v: f"{v:.2f}",
    "pp": lambda v: f"{v:+.1f} pp",
    "delta": lambda v: f"{v:+.1f}",
    "money": lambda v: _money(v),
    "hours": lambda v: f"{v:,.4f}",
    "seconds": lambda v: f"{v:,.1f}",
    "mb": lambda v: f"{v / 1e6:,.2f}",
    "mb0": lambda v: f"{v / 1e6:,.0f}",
    "gb": lambda v: f"{v / GB:,.4f}",
    "percent": lambda v: f"{100 * v:.2f}%",
    "ratio": _ratio,
    "rate": lambda v: f"{v:,.1f}",
}


def fmt(value: Any, kind: str) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    return FORMATS[kind](value)


# A terminal table stops after this many rows (the other formats carry every row).
TERMINAL_ROWS = 100


@dataclass
class Table(Generic[R]):
    """What every renderer reads: rows of any type, each cell read from its row by its column."""

    key: str
    title: str
    columns: list[Column[R]]
    rows: list[R]
    notes: list[str] = field(default_factory=list)
    keep_last: int = 0  # trailing rows (totals, references) a shortened terminal table still shows

    def text_rows(self) -> list[list[str]]:
        return [[fmt(c.get(row), c.kind) for c in self.columns] for row in self.rows]


def _record(section: str, name: str, value: Any, **keys: Any) -> dict[str, Any]:
    out = {c: keys.get(c) for c in RECORD_COLUMNS}
    out.update(section=section, name=name, value=value)
    return out


# ---- benchmark -------------------------------------------------------------------------------


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
        out["created_at"] = _iso(self.created_at)
        out["reevaluated_at"] = _iso(self.reevaluated_at)
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
            out.append(_record("pick", "candidates", c.candidates, **keys))
            out += [_record("metric", name, value, **keys) for name, value in sorted(c.metrics.items())]
            if c.reevaluated is not None:
                out.append(_record("reevaluation", c.metric, c.reevaluated, **keys))
                out.append(_record("drift", c.metric, c.drift, **keys))
        for s in self.task_stats:
            for name in ("count", "mean", "min", "max"):
                out.append(_record("task_stats", f"{s.metric}_{name}", getattr(s, name), task=s.task))
        for g in self.glue:
            out.append(_record("glue_average", "mean", g.mean, tenant=g.tenant))
            out.append(_record("glue_average", "tasks", g.tasks, tenant=g.tenant))
        return out

    def tables(self) -> list[Table[Any]]:
        by_cell = {(c.tenant, c.task): c for c in self.cells}
        glue = {g.tenant: g for g in self.glue}
        rows = []
        for tenant in self.tenants:
            cells = {t: _cell_text(by_cell[tenant, t]) for t in self.tasks if (tenant, t) in by_cell}
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


def _cell_text(c: BenchmarkCell) -> str:
    if c.value is None:
        return f"- [{c.candidates}]"
    text = f"{points(c.metric, c.value):.1f} [{c.candidates}]"
    if c.at_trivial:
        text += " = trivial"
    if c.drift is not None:
        text += f" re {points(c.metric, c.drift):+.1f}"
    return text


# ---- cost ------------------------------------------------------------------------------------


@dataclass
class DeviceCost:
    device: str
    price_per_hour: float | None  # None: no configured price matches this device
    device_seconds: float
    spent_no_adapter_seconds: float  # failed, cancelled or repeated attempts
    money: float | None

    @property
    def device_hours(self) -> float:
        return self.device_seconds / 3600.0

    @property
    def spent_no_adapter_hours(self) -> float:
        return self.spent_no_adapter_seconds / 3600.0

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["device_hours"] = self.device_hours
        out["spent_no_adapter_hours"] = self.spent_no_adapter_hours
        return out


@dataclass
class CostLine:
    """One tenant's cost (tenant None: the total over the report's tenants)."""

    tenant: str | None
    jobs: dict[str, int]  # by state, every state
    devices: list[DeviceCost]
    money: float
    unpriced_seconds: float
    examples: int
    adapters: int
    adapter_bytes: int
    full_checkpoint_bytes: int
    quality_money: float | None = None  # money of the jobs with an untuned baseline
    quality_gain_points: float | None = None  # their summed gain over it (points)

    def name(self) -> str:
        return self.tenant if self.tenant is not None else "TOTAL"

    @property
    def succeeded(self) -> int:
        return self.jobs.get("succeeded", 0)

    @property
    def cost_per_job(self) -> float | None:
        return self.money / self.succeeded if self.succeeded else None

    @property
    def cost_per_1k_examples(self) -> float | None:
        return self.money / (self.examples / 1000.0) if self.examples else None

    @property
    def cost_per_quality_point(self) -> float | None:
        if self.quality_money is None or not self.quality_gain_points or self.quality_gain_points <= 0:
            return None
        return self.quality_money / self.quality_gain_points

    def storage_month(self, price_gb_month: float) -> float:
        return self.adapter_bytes / GB * price_gb_month

    def full_storage_month(self, price_gb_month: float) -> float:
        return self.full_checkpoint_bytes / GB * price_gb_month

    def to_dict(self, price_gb_month: float) -> dict[str, Any]:
        return {
            "tenant": self.tenant,
            "jobs": dict(self.jobs),
            "devices": [d.to_dict() for d in self.devices],
            "device_seconds": sum(d.device_seconds for d in self.devices),
            "spent_no_adapter_seconds": sum(d.spent_no_adapter_seconds for d in self.devices),
            "money": self.money,
            "unpriced_device_seconds": self.unpriced_seconds,
            "examples": self.examples,
            "adapters": self.adapters,
            "adapter_bytes": self.adapter_bytes,
            "full_checkpoint_bytes": self.full_checkpoint_bytes,
            "storage_month": self.storage_month(price_gb_month),
            "full_storage_month": self.full_storage_month(price_gb_month),
            "cost_per_job": self.cost_per_job,
            "cost_per_1k_examples": self.cost_per_1k_examples,
            "quality_money": self.quality_money,
            "quality_gain_points": self.quality_gain_points,
            "cost_per_quality_point": self.cost_per_quality_point,
        }


@dataclass
class AdapterPoint:
    """One adapter for the quality-vs-cost chart: its job's money and its primary metric."""

    tenant: str
    task: str
    method: str
    rank: int
    money: float
    quality: float | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class CostReport:
    filters: Filters
    prices: dict[str, float]
    storage_price_gb_month: float
    tenants: list[CostLine]
    total: CostLine
    points: list[AdapterPoint] = field(default_factory=list)  # filled only for charts

    def to_dict(self) -> dict[str, Any]:
        p = self.storage_price_gb_month
        return {
            "report": "cost",
            "filters": self.filters.to_dict(),
            "prices": dict(sorted(self.prices.items())),
            "storage_price_gb_month": p,
            "full_size_rule": FULL_SIZE_RULE,
            "tenants": [t.to_dict(p) for t in self.tenants],
            "total": self.total.to_dict(p),
        }

    def records(self) -> list[dict[str, Any]]:
        out = []
        p = self.storage_price_gb_month
        for line in [*self.tenants, self.total]:
            tenant = line.name()
            d = line.to_dict(p)
            for state, n in d["jobs"].items():
                out.append(_record("jobs", state, n, tenant=tenant))
            for dev in line.devices:
                for name in ("device_seconds", "spent_no_adapter_seconds", "price_per_hour", "money"):
                    out.append(_record("device", name, getattr(dev, name), tenant=tenant, device=dev.device))
            for name in (
                "money",
                "unpriced_device_seconds",
                "examples",
                "adapters",
                "adapter_bytes",
                "full_checkpoint_bytes",
                "storage_month",
                "full_storage_month",
                "cost_per_job",
                "cost_per_1k_examples",
                "cost_per_quality_point",
            ):
                out.append(_record("tenant", name, d[name], tenant=tenant))
        return out

    def tables(self) -> list[Table[Any]]:
        from orchestrator.registry.models import JOB_STATES

        p = self.storage_price_gb_month
        lines = [*self.tenants, self.total]
        jobs = Table(
            "cost_jobs",
            "Jobs by state",
            [Column("tenant", CostLine.name, "name"),
             *(Column(s, lambda t, s=s: t.jobs.get(s, 0), "int") for s in JOB_STATES)],
            lines,
        )
        prices = ", ".join(f"{k}={v:g}" for k, v in sorted(self.prices.items()))
        device_columns: list[Column[tuple[CostLine, DeviceCost]]] = [
            Column("tenant", lambda td: td[0].name(), "name"),
            Column("device", lambda td: td[1].device, "name"),
            Column("device-h", lambda td: td[1].device_hours, "hours"),
            Column("of which spent, no adapter", lambda td: td[1].spent_no_adapter_hours, "hours"),
            Column("price/h", lambda td: td[1].price_per_hour, "money"),
            Column("money", lambda td: td[1].money, "money"),
        ]
        devices = Table(
            "cost_devices",
            "Device-hours and money by device type",
            device_columns,
            [(t, d) for t in lines for d in t.devices],
            [
                f"Prices per device-hour (longest prefix of the device name wins): {prices}.",
                "'Spent, no adapter': attempts that failed, were cancelled or were repeated after a lost "
                "lease; included in the money.",
            ],
        )
        summary_columns: list[Column[CostLine]] = [
            Column("tenant", CostLine.name, "name"),
            Column("money", lambda t: t.money, "money"),
            Column("adapters", lambda t: t.adapters, "int"),
            Column("adapter GB", lambda t: t.adapter_bytes, "gb"),
            Column("full ckpt GB", lambda t: t.full_checkpoint_bytes, "gb"),
            Column("storage/month", lambda t: t.storage_month(p), "money"),
            Column("full storage/month", lambda t: t.full_storage_month(p), "money"),
            Column("per job", lambda t: t.cost_per_job, "money"),
            Column("per 1k examples", lambda t: t.cost_per_1k_examples, "money"),
            Column("per quality pt", lambda t: t.cost_per_quality_point, "money"),
        ]
        summary = Table(
            "cost_summary",
            "Money, storage and unit costs",
            summary_columns,
            lines,
            [
                f"Storage at {p:g} per GB-month; {FULL_SIZE_RULE}.",
                "Per job: money ÷ succeeded jobs (waste included). Per 1k examples: money ÷ examples "
                "trained in every attempt × 1000. Per quality point: money of the adapter jobs whose task "
                "and base have an untuned baseline ÷ their summed gain of the primary metric over it (pp).",
            ],
        )
        if any(t.unpriced_seconds for t in lines):
            summary.notes.append("Some device time matched no price and is left out of the money.")
        jobs.keep_last = summary.keep_last = 1  # the TOTAL row
        devices.keep_last = len(self.total.devices)
        return [jobs, devices, summary]



# ---- compare ---------------------------------------------------------------------------------


@dataclass
class CompareRow:
    task: str
    base_model: str
    method: str  # "none" is the untuned base
    rank: int | None  # None for full / none
    n: int  # runs summarised (medians over them)
    metric: str
    quality: float | None
    trainable_params: float | None
    trainable_fraction: float | None
    checkpoint_bytes: float | None
    device_seconds: float | None
    examples_per_second: float | None
    peak_memory_bytes: float | None
    majority_class_rate: float | None = None
    size_ratio: float | None = None  # full's checkpoint ÷ this one's
    time_ratio: float | None = None  # full's device-seconds ÷ this one's
    memory_ratio: float | None = None  # full's peak memory ÷ this one's
    delta_vs_full: float | None = None  # points
    delta_vs_untuned: float | None = None  # points
    recommendation: str = ""

    @property
    def label(self) -> str:
        if self.method == "none":
            return "untuned base"
        return self.method if self.rank is None else f"{self.method} r={self.rank}"

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["label"] = self.label
        return out


@dataclass
class CompareReport:
    filters: Filters
    rows: list[CompareRow]

    def to_dict(self) -> dict[str, Any]:
        return {
            "report": "compare",
            "filters": self.filters.to_dict(),
            "rows": [r.to_dict() for r in self.rows],
        }

    def records(self) -> list[dict[str, Any]]:
        names = (
            "n",
            *COMPARE_VALUES,
            "size_ratio",
            "time_ratio",
            "memory_ratio",
            "delta_vs_full",
            "delta_vs_untuned",
            "recommendation",
        )
        return [
            _record(
                "compare",
                name,
                getattr(r, name),
                task=r.task,
                base_model=r.base_model,
                method=r.method,
                rank=r.rank,
            )
            for r in self.rows
            for name in names
        ]

    def tables(self) -> list[Table[CompareRow]]:
        columns: list[Column[CompareRow]] = [
            Column("task", lambda r: r.task, "name"),
            Column("base model", lambda r: r.base_model, "name"),
            Column("method", lambda r: r.label, "name"),
            Column("n", lambda r: r.n, "int"),
            Column("quality", lambda r: r.quality, "points"),
            Column("trainable", lambda r: r.trainable_params, "int"),
            Column("% of total", lambda r: r.trainable_fraction, "percent"),
            Column("ckpt MB", lambda r: r.checkpoint_bytes, "mb"),
            Column("train dev-s", lambda r: r.device_seconds, "seconds"),
            Column("ex/s", lambda r: r.examples_per_second, "rate"),
            Column("peak MB", lambda r: r.peak_memory_bytes, "mb0"),
            Column("smaller", lambda r: r.size_ratio, "ratio"),
            Column("less time", lambda r: r.time_ratio, "ratio"),
            Column("less mem", lambda r: r.memory_ratio, "ratio"),
            Column("Δ full pp", lambda r: r.delta_vs_full, "delta"),
            Column("Δ untuned pp", lambda r: r.delta_vs_untuned, "delta"),
        ]
        notes = [
            "One row per task, base model, method and rank; medians over the n succeeded runs. Quality: "
            "the task's primary metric on validation data (points). Device-seconds, examples/s and peak "
            "memory are the successful attempt's.",
            "smaller / less time / less mem: full's checkpoint size, device-seconds, peak memory ÷ this "
            "row's. Δ: this row's quality minus full's (or the untuned base's), in points (pp).",
            "Best trade-off: of the trained rows within 1 pp of the best quality, the smallest checkpoint.",
        ]
        advice: list[Column[CompareRow]] = [
            Column("task", lambda r: r.task, "name"),
            Column("base model", lambda r: r.base_model, "name"),
            Column("recommendation", lambda r: r.recommendation, "name"),
        ]
        return [
            Table("compare", "Methods compared (per task and base model)", columns, self.rows, notes),
            Table("compare_recommendations", "Recommendations (from the numbers above)", advice, self.rows),
        ]
