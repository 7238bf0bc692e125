"""The compare report: LoRA vs full fine-tuning (and the other methods, and the untuned base) per
task and base model — medians of quality, size, time and memory, ratios to full, and a
recommendation per row. Its model, its tables, its SQL and the service."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import Float, and_, case, cast, func, or_, select
from sqlalchemy.orm import Session
from sqlalchemy.sql import Select

from lora_engine.catalog import TASKS
from lora_engine.methods import NAMES
from orchestrator.registry.models import Adapter, Metric, Usage
from orchestrator.reports.references import points
from orchestrator.reports.scope import (
    JOB_SOURCE,
    QUALITY_SPLIT,
    Filters,
    fetch_rows,
    join_primary_metric,
    prepare,
    scoped_jobs,
)
from orchestrator.reports.tables import Column, Table, record
from orchestrator.services._tx import readonly

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
    "activation_memory_bytes",
    "step_seconds",
    "majority_class_rate",
)
# A trained row within this many points of the best quality counts as "as good".
TRADE_OFF_PP = 1.0
a, m, u = (x.__table__ for x in (Adapter, Metric, Usage))


# ---- model -----------------------------------------------------------------------------------


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
    activation_memory_bytes: float | None = None  # peak minus the memory once the model was loaded
    step_seconds: float | None = None  # device time per optimizer step
    majority_class_rate: float | None = None
    gradient_checkpointing: bool = False
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
        label = self.method if self.rank is None else f"{self.method} r={self.rank}"
        return f"{label} +grad ckpt" if self.gradient_checkpointing else label

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
            record(
                "compare",
                name,
                getattr(r, name),
                task=r.task,
                base_model=r.base_model,
                method=f"{r.method}+grad_ckpt" if r.gradient_checkpointing else r.method,
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
            Column("act MB", lambda r: r.activation_memory_bytes, "mb0"),
            Column("s/step", lambda r: r.step_seconds, "num"),
            Column("smaller", lambda r: r.size_ratio, "ratio"),
            Column("less time", lambda r: r.time_ratio, "ratio"),
            Column("less mem", lambda r: r.memory_ratio, "ratio"),
            Column("Δ full pp", lambda r: r.delta_vs_full, "delta"),
            Column("Δ untuned pp", lambda r: r.delta_vs_untuned, "delta"),
        ]
        notes = [
            "One row per task, base model, method and rank; medians over the n succeeded runs. Quality: "
            "the task's primary metric on validation data (points). Device-seconds, examples/s and peak "
            "memory are the successful attempt's; act MB is its peak minus its memory once the model was "
            "loaded (the activations and optimizer state), s/step its device time per optimizer step. "
            "+grad ckpt: runs with gradient_checkpointing (activations recomputed in the backward pass).",
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


# ---- SQL -------------------------------------------------------------------------------------


# The untuned base first, then the methods in the order of their table (methods.py): every method
# the table has gets its place, beside lora, rslora, dora and full.
METHOD_ORDER = {"none": 0, **{name: i for i, name in enumerate((n for n in NAMES if n != "none"), start=1)}}


def _method_order(method_col: Any) -> Any:
    return case(METHOD_ORDER, value=method_col, else_=len(METHOD_ORDER))


def compare_rows(f: Filters) -> Select[Any]:
    """Per (task, base model, method, rank): n succeeded runs and the median of each figure.

    Training runs contribute their adapter's size/params and the successful attempt's usage; the
    untuned baseline (kind 'evaluate', method 'none') contributes its quality and majority rate.
    Full fine-tuning and the untuned base have no meaningful rank: they are grouped with rank 0.
    """
    sj = scoped_jobs(f, kinds=("train", "evaluate"))
    pm, mm = join_primary_metric(sj, sj.c.job_id, sj.c.task), m.alias("mm")
    rank_key = case((sj.c.method.in_(("full", "none")), 0), else_=sj.c.rank).label("rank_key")
    recomputes = sj.c.gradient_checkpointing
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
        "activation_memory_bytes": case((is_train, u.c.activation_memory_bytes)),
        "step_seconds": case((is_train, u.c.step_seconds)),
        "majority_class_rate": mm.c.value,
    }
    keys = [sj.c.task, sj.c.base_model, sj.c.method, rank_key, recomputes]
    part = (sj.c.task, sj.c.base_model, sj.c.method, rank_key, recomputes)
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

    group = [runs.c.task, runs.c.base_model, runs.c.method, runs.c.rank_key, runs.c.gradient_checkpointing]
    stmt = (
        select(
            runs.c.task,
            runs.c.base_model,
            runs.c.method,
            runs.c.rank_key.label("rank"),
            runs.c.gradient_checkpointing,
            func.count().label("n"),
            *(median(name) for name in COMPARE_VALUES),
        )
        .group_by(*group)
        .order_by(runs.c.task, runs.c.base_model, _method_order(runs.c.method), runs.c.rank_key,
                  runs.c.gradient_checkpointing)
    )
    return stmt


# ---- the service -----------------------------------------------------------------------------


def _ratio(reference: float | None, value: float | None) -> float | None:
    return reference / value if reference and value else None


def _times(ratio: float | None, what: str, less: str, more: str) -> str | None:
    if ratio is None:
        return None
    if ratio >= 1:
        return f"{ratio:.1f}× {less} {what}" if ratio < 100 else f"{ratio:,.0f}× {less} {what}".rstrip()
    return f"{1 / ratio:.1f}× {more} {what}"


def _recommend(row: CompareRow, best: CompareRow | None) -> str:
    if row.method == "none":
        text = "untuned base: the floor training must beat"
        if row.majority_class_rate is not None:
            text += f"; majority-class rate {points('accuracy', row.majority_class_rate):.1f}"
        return text
    parts = []
    if row.method == "full":
        parts.append("the reference for the ratios")
    else:
        if row.delta_vs_full is not None:
            parts.append(f"{row.delta_vs_full:+.1f} pp vs full")
        for ratio, what, less, more in (
            (row.time_ratio, "device time", "less", "more"),
            (row.size_ratio, "", "smaller", "larger"),
        ):
            phrase = _times(ratio, what, less, more)
            if phrase:
                parts.append(phrase.replace("  ", " ").strip())
    if row.delta_vs_untuned is not None:
        parts.append(f"{row.delta_vs_untuned:+.1f} pp over untuned")
    text = f"{row.label}: " + ", ".join(parts) if parts else row.label
    if best is row:
        text = "best trade-off — " + text
    return text


@readonly
def compare_report(session: Session, filters: Filters) -> CompareReport:
    prepare(session, filters)
    rows = [
        CompareRow(
            task=r["task"],
            base_model=r["base_model"],
            method=r["method"],
            rank=None if r["method"] in ("full", "none") else int(r["rank"]),
            n=int(r["n"]),
            gradient_checkpointing=bool(r["gradient_checkpointing"]),
            metric=TASKS[r["task"]].primary_metric if r["task"] in TASKS else "accuracy",
            **{name: r[name] for name in COMPARE_VALUES},
        )
        for r in fetch_rows(session, compare_rows(filters))
    ]
    groups: dict[tuple[str, str], list[CompareRow]] = {}
    for row in rows:
        groups.setdefault((row.task, row.base_model), []).append(row)
    for group in groups.values():
        # The reference is full fine-tuning as it usually runs (without gradient checkpointing).
        full = min((r for r in group if r.method == "full"), key=lambda r: r.gradient_checkpointing,
                   default=None)
        untuned = next((r for r in group if r.method == "none"), None)
        for row in group:
            if row.method == "none":
                row.trainable_params, row.trainable_fraction = 0, 0.0
                continue
            if full is not None and row is not full:
                row.size_ratio = _ratio(full.checkpoint_bytes, row.checkpoint_bytes)
                row.time_ratio = _ratio(full.device_seconds, row.device_seconds)
                row.memory_ratio = _ratio(full.peak_memory_bytes, row.peak_memory_bytes)
                if full.quality is not None and row.quality is not None:
                    row.delta_vs_full = points(row.metric, row.quality - full.quality)
            if untuned is not None and untuned.quality is not None and row.quality is not None:
                row.delta_vs_untuned = points(row.metric, row.quality - untuned.quality)
        trained = [r for r in group if r.method != "none" and r.quality is not None]
        best = None
        if trained:
            top = max(points(r.metric, r.quality) for r in trained)  # type: ignore[arg-type]
            close = [r for r in trained if points(r.metric, r.quality) >= top - TRADE_OFF_PP]  # type: ignore[arg-type]
            best = min(close, key=lambda r: (r.checkpoint_bytes or float("inf"), r.label))
        for row in group:
            row.recommendation = _recommend(row, best)
    return CompareReport(filters=filters, rows=rows)
