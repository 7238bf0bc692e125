"""The reports' service functions: validate the request, run the queries, fill the report model.

Only grouped rows come back from SQL (see queries.py); what happens here is arranging them into
the model and the per-row arithmetic between already-aggregated figures (ratios, unit costs).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

from lora_engine.catalog import ALL_TASKS
from orchestrator.config import get_settings
from orchestrator.errors import InvalidInput, NotFound
from orchestrator.registry.models import JOB_STATES
from orchestrator.reports import queries as q
from orchestrator.reports.model import (
    COMPARE_VALUES,
    AdapterPoint,
    BenchmarkCell,
    BenchmarkReport,
    CompareReport,
    CompareRow,
    CostLine,
    CostReport,
    DeviceCost,
    Filters,
    GlueAverage,
    TaskStats,
    TrainingCurve,
)
from orchestrator.reports.references import (
    E2E_REFERENCES,
    GLUE_AVERAGE_REFERENCE,
    GLUE_REFERENCES,
    points,
)
from orchestrator.services._tx import readonly

PICKS = ("latest", "best")
REPORT_WORK_MEM = "64MB"
# A trained row within this many points of the best quality counts as "as good" (compare).
TRADE_OFF_PP = 1.0
# The benchmark's training curves: the first MAX_CURVES picks (table order), CURVE_POINTS a series.
MAX_CURVES = 12
CURVE_POINTS = 200


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


def _prepare(session: Session, f: Filters) -> None:
    """Check the tenants, and give PostgreSQL room for the reports' sorts and hashes: with the
    default 4 MB work_mem a 100k-adapter window sort spills to disk (SET LOCAL: this read-only
    transaction only)."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text(f"SET LOCAL work_mem = '{REPORT_WORK_MEM}'"))
    _check_tenants(session, f)


def _check_tenants(session: Session, f: Filters) -> None:
    if not f.tenants:
        return
    known = set(session.scalars(q.known_tenants(f.tenants)))
    missing = [s for s in f.tenants if s not in known]
    if missing:
        raise NotFound(f"no tenant {', '.join(map(repr, missing))}: see `lorafleet tenant list`")


def check_prices(prices: Mapping[str, float]) -> dict[str, float]:
    out = {}
    for device, price in prices.items():
        if not device or price < 0:
            raise InvalidInput(f"price {device!r}={price}: need a device prefix and a price >= 0")
        out[device] = float(price)
    return out


# ---- benchmark -------------------------------------------------------------------------------


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
    _prepare(session, filters)
    rows = q.rows(session, q.benchmark_rows(filters, pick))
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
    for r in q.rows(session, q.curve_points([c.job_id for c in shown], names, CURVE_POINTS)):
        series.setdefault((r["job_id"], r["name"]), []).append((int(r["step"]), float(r["epoch"]),
                                                                float(r["value"])))
    curves = []
    for c in shown:
        loss, holdout = series.get((c.job_id, "loss"), []), series.get((c.job_id, f"holdout/{c.metric}"), [])
        if loss or holdout:
            curves.append(TrainingCurve(c.tenant, c.task, c.job_id, c.metric, loss, holdout))
    return curves


# ---- cost ------------------------------------------------------------------------------------


def _by_tenant(rows: list[dict[str, Any]]) -> dict[str | None, dict[str, Any]]:
    return {r["tenant"]: r for r in rows}


@readonly
def cost_report(
    session: Session,
    filters: Filters,
    prices: Mapping[str, float],
    storage_price_gb_month: float,
    *,
    with_points: bool = False,
) -> CostReport:
    """Per tenant and in total. `with_points`: also one (money, quality) point per adapter (charts).

    Every figure is a SQL aggregate: each query returns its per-tenant rows and, as rows with a
    NULL tenant, the same aggregated over the report's tenants (see queries._rollup).
    """
    prices = check_prices(prices)
    if storage_price_gb_month < 0:
        raise InvalidInput(f"storage price {storage_price_gb_month} per GB-month: must be >= 0")
    _prepare(session, filters)
    jobs: dict[str | None, dict[str, int]] = {}
    for r in q.rows(session, q.cost_jobs_by_state(filters)):
        jobs.setdefault(r["tenant"], {})[r["state"]] = int(r["n"])
    devices: dict[str | None, list[DeviceCost]] = {}
    usage: dict[str | None, dict[str, Any]] = {}
    for r in q.rows(session, q.cost_by_device(filters, prices)):
        if r["device"] is None:  # the tenant's (or the total's) sum over its devices
            usage[r["tenant"]] = r
            continue
        devices.setdefault(r["tenant"], []).append(
            DeviceCost(
                device=r["device"],
                price_per_hour=r["price"],
                device_seconds=float(r["device_seconds"]),
                spent_no_adapter_seconds=float(r["wasted_seconds"]),
                money=None if r["money_seconds"] is None else float(r["money_seconds"]) / 3600.0,
            )
        )
    storage = _by_tenant(q.rows(session, q.cost_storage(filters)))
    quality = _by_tenant(q.rows(session, q.cost_quality(filters)))

    def line(tenant: str | None) -> CostLine:
        use, store, gain = usage.get(tenant, {}), storage.get(tenant, {}), quality.get(tenant, {})
        return CostLine(
            tenant=tenant,
            jobs={s: jobs.get(tenant, {}).get(s, 0) for s in JOB_STATES},
            devices=sorted(devices.get(tenant, []), key=lambda d: d.device),
            money=float(use.get("money_seconds") or 0.0) / 3600.0,
            unpriced_seconds=float(use.get("unpriced_seconds") or 0.0),
            examples=int(use.get("examples") or 0),
            adapters=int(store.get("adapters") or 0),
            adapter_bytes=int(store.get("adapter_bytes") or 0),
            full_checkpoint_bytes=int(store.get("full_bytes") or 0),
            quality_money=None
            if use.get("baseline_money_seconds") is None
            else float(use["baseline_money_seconds"]) / 3600.0,
            quality_gain_points=gain.get("gain_points"),
        )

    names = sorted({t for t in jobs if t is not None} | set(filters.tenants))
    points_ = []
    if with_points:
        points_ = [
            AdapterPoint(
                tenant=r["tenant"],
                task=r["task"],
                method=r["method"],
                rank=r["rank"],
                money=float(r["money_seconds"] or 0.0) / 3600.0,
                quality=r["quality"],
            )
            for r in q.rows(session, q.adapter_points(filters, prices))
        ]
    return CostReport(
        filters=filters,
        prices=prices,
        storage_price_gb_month=storage_price_gb_month,
        tenants=[line(n) for n in names],
        total=line(None),
        points=points_,
    )


# ---- compare ---------------------------------------------------------------------------------


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
    _prepare(session, filters)
    rows = [
        CompareRow(
            task=r["task"],
            base_model=r["base_model"],
            method=r["method"],
            rank=None if r["method"] in ("full", "none") else int(r["rank"]),
            n=int(r["n"]),
            metric=q.TASKS[r["task"]].primary_metric if r["task"] in q.TASKS else "accuracy",
            **{name: r[name] for name in COMPARE_VALUES},
        )
        for r in q.rows(session, q.compare_rows(filters))
    ]
    groups: dict[tuple[str, str], list[CompareRow]] = {}
    for row in rows:
        groups.setdefault((row.task, row.base_model), []).append(row)
    for group in groups.values():
        full = next((r for r in group if r.method == "full"), None)
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
