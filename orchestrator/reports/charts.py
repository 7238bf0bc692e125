"""The HTML report's charts: matplotlib on the Agg backend (no display), each returned as PNG bytes.

Every chart reads the report model only, so what it shows is what the tables say.

Labels are data (tenants, base model folder names, devices): each goes through `printable`, and
every chart is drawn with matplotlib's mathtext off (`text.parse_math`), so `$...$` in a folder
name is drawn as the characters it is, never parsed as TeX (an unbalanced `$\\x$` crashed it).
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

from orchestrator.reports.benchmark import BenchmarkReport
from orchestrator.reports.compare import METHOD_ORDER, CompareReport
from orchestrator.reports.cost import CostReport
from orchestrator.reports.references import points
from orchestrator.text import printable

MAX_TENANTS = 25  # the cost chart shows the most expensive ones, the rest as one bar
MAX_POINTS = 20_000  # quality vs cost: a larger registry is sampled evenly


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _figure(width: float = 8.0, height: float = 4.2) -> tuple[Any, Any]:
    fig, ax = _pyplot().subplots(figsize=(width, height), dpi=100)
    return fig, ax


def _png(fig: Any) -> bytes:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def _grouped_bars(
    ax: Any, groups: list[str], series: dict[str, dict[str, float]], colours: dict[str, str]
) -> None:
    """Bars per group, only for the series the group has (no gaps); the legend in series order."""
    handles: dict[str, Any] = {}
    widest = max(sum(1 for values in series.values() if g in values) for g in groups)
    width = 0.8 / max(widest, 1)
    for x, group in enumerate(groups):
        present = [name for name, values in series.items() if group in values]
        for i, name in enumerate(present):
            offset = (i - (len(present) - 1) / 2) * width
            handles[name] = ax.bar(x + offset, series[name][group], width, color=colours[name])
    ax.set_xticks(range(len(groups)), groups)
    ax.legend([handles[n] for n in series if n in handles], [n for n in series if n in handles], fontsize=8)


def _task_base(row: Any) -> str:
    """A compare group's tick label: its task over its base model."""
    return f"{printable(row.task)}\n{printable(row.base_model)}"


def _method_series(rows: list[Any]) -> list[Any]:
    """Rows in the order the legend should read: untuned, then the methods as the compare table
    orders them (the method table's order: lora by rank, rslora, dora, loraplus, ..., full)."""
    return sorted(rows, key=lambda r: (METHOD_ORDER.get(r.method, len(METHOD_ORDER)), r.rank or 0))


def _colours(report: CompareReport) -> dict[str, str]:
    """One colour per method label across every chart of the report."""
    labels = dict.fromkeys(printable(r.label) for r in _method_series(report.rows))
    return {label: f"C{i % 10}" for i, label in enumerate(labels)}


def benchmark_quality(report: BenchmarkReport) -> bytes | None:
    """Per task: the mean primary metric across tenants, min–max as the error bar, the published
    reference as a marker."""
    stats = [s for s in report.task_stats if s.mean is not None]
    if not stats:
        return None
    fig, ax = _figure()
    xs = range(len(stats))
    means = [points(s.metric, s.mean) for s in stats]
    low = [m - points(s.metric, s.min) for m, s in zip(means, stats, strict=True)]
    high = [points(s.metric, s.max) - m for m, s in zip(means, stats, strict=True)]
    ax.bar(xs, means, 0.6, yerr=[low, high], capsize=4, label="mean across tenants (min–max)")
    refs = [(i, s.reference["published"]) for i, s in enumerate(stats) if s.reference]
    if refs:
        ax.scatter(
            [i for i, _ in refs],
            [v for _, v in refs],
            marker="D",
            color="black",
            zorder=3,
            label="published (other base model and eval set)",
        )
    ax.set_xticks(list(xs), [f"{printable(s.task)}\n({printable(s.metric)}, n={s.count})" for s in stats])
    ax.set_ylabel("primary metric (points)")
    ax.set_title(f"Benchmark: primary metric per task ({report.pick} adapter per tenant)")
    ax.legend(loc="lower right", fontsize=8)
    return _png(fig)


def training_curves(report: BenchmarkReport) -> bytes | None:
    """Per picked adapter (the first few): its training loss by epoch, and beside it the held-out
    primary metric of the evaluations during training when there were any."""
    curves = [c for c in report.curves if c.loss or c.holdout]
    if not curves:
        return None
    with_holdout = any(c.holdout for c in curves)
    fig, axes = _pyplot().subplots(1, 2 if with_holdout else 1, figsize=(10.0 if with_holdout else 8.0, 4.2),
                             dpi=100, squeeze=False)
    loss_ax = axes[0][0]
    for i, c in enumerate(curves):
        label = printable(f"{c.tenant} {c.task}")
        if c.loss:
            loss_ax.plot([e for _, e, _ in c.loss], [v for _, _, v in c.loss], color=f"C{i % 10}",
                         linewidth=1.2, label=label)
        if c.holdout:
            axes[0][1].plot([e for _, e, _ in c.holdout], [points(c.metric, v) for _, _, v in c.holdout],
                            color=f"C{i % 10}", marker="o", markersize=3,
                            label=f"{label} ({printable(c.metric)})")
    loss_ax.set_xlabel("epoch")
    loss_ax.set_ylabel("training loss")
    loss_ax.set_title("Training loss")
    loss_ax.legend(fontsize=7)
    if with_holdout:
        axes[0][1].set_xlabel("epoch")
        axes[0][1].set_ylabel("primary metric, held-out rows (points)")
        axes[0][1].set_title("Evaluations during training")
        axes[0][1].legend(fontsize=7)
    return _png(fig)


def compare_quality(report: CompareReport) -> bytes | None:
    """Quality per task (and base model) and method: grouped bars."""
    rows = [r for r in report.rows if r.quality is not None]
    if not rows:
        return None
    groups = list(dict.fromkeys(_task_base(r) for r in rows))
    series: dict[str, dict[str, float]] = {}
    for r in _method_series(rows):
        series.setdefault(printable(r.label), {})[_task_base(r)] = points(r.metric, r.quality)
    fig, ax = _figure()
    _grouped_bars(ax, groups, series, _colours(report))
    ax.set_ylabel("primary metric, validation (points)")
    ax.set_title("Quality per task and method (median over runs)")
    return _png(fig)


def compare_size(report: CompareReport) -> bytes | None:
    """Checkpoint size per method, log scale (the untuned base has none)."""
    rows = [r for r in report.rows if r.checkpoint_bytes]
    if not rows:
        return None
    groups = list(dict.fromkeys(_task_base(r) for r in rows))
    series: dict[str, dict[str, float]] = {}
    for r in _method_series(rows):
        series.setdefault(printable(r.label), {})[_task_base(r)] = r.checkpoint_bytes / 1e6
    fig, ax = _figure()
    _grouped_bars(ax, groups, series, _colours(report))
    ax.set_yscale("log")
    ax.set_ylabel("checkpoint size (MB, log scale)")
    ax.set_title("Checkpoint size per method (median over runs)")
    return _png(fig)


def cost_by_tenant(report: CostReport) -> bytes | None:
    """Money per tenant stacked by device type; the hatched part of each device's block is device
    time spent with no adapter to show for it (the most expensive MAX_TENANTS, then 'others')."""
    lines = sorted(report.tenants, key=lambda t: -t.money)
    if not lines or not any(d.money for t in lines for d in t.devices):
        return None
    shown, rest = lines[:MAX_TENANTS], lines[MAX_TENANTS:]
    names = [printable(t.tenant or "") for t in shown] + ([f"{len(rest)} others"] if rest else [])
    devices = sorted({d.device for t in lines for d in t.devices})
    groups = [[t] for t in shown] + ([rest] if rest else [])

    def money(group: list[Any], device: str, wasted: bool) -> float:
        total = 0.0
        for t in group:
            for d in t.devices:
                if d.device == device and d.money:
                    share = d.spent_no_adapter_seconds / d.device_seconds if d.device_seconds else 0.0
                    total += d.money * (share if wasted else 1.0 - share)
        return total

    fig, ax = _figure()
    bottom = [0.0] * len(names)
    for i, device in enumerate(devices):
        for wasted in (False, True):
            values = [money(g, device, wasted) for g in groups]
            label = printable(f"{device}, spent with no adapter" if wasted else device)
            ax.bar(
                range(len(names)),
                values,
                0.6,
                bottom=bottom,
                color=f"C{i % 10}",
                label=label,
                hatch="//" if wasted else None,
                edgecolor="white" if wasted else None,
                alpha=0.55 if wasted else 1.0,
            )
            bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    ax.set_xticks(
        range(len(names)),
        names,
        rotation=30 if len(names) > 6 else 0,
        ha="right" if len(names) > 6 else "center",
    )
    ax.set_ylabel("money (device-hours × price)")
    ax.set_title("Cost per tenant, stacked by device type")
    ax.legend(fontsize=8)
    return _png(fig)


def quality_vs_cost(report: CostReport) -> bytes | None:
    """One point per adapter: its job's money (every attempt) against its primary metric."""
    pts = [p for p in report.points if p.quality is not None]
    if not pts:
        return None
    if len(pts) > MAX_POINTS:
        pts = pts[:: len(pts) // MAX_POINTS + 1]
    fig, ax = _figure()
    methods = sorted({p.method for p in pts})
    for method in methods:
        mine = [p for p in pts if p.method == method]
        ax.scatter(
            [p.money for p in mine],
            [points("accuracy", p.quality) for p in mine],
            s=18,
            alpha=0.7,
            label=printable(method),
        )
    ax.set_xlabel("money of the job (every attempt)")
    ax.set_ylabel("primary metric (points)")
    ax.set_title("Quality vs cost, one point per adapter")
    ax.legend(fontsize=8)
    return _png(fig)


CHARTS: dict[type, list[tuple[str, Callable[[Any], bytes | None]]]] = {
    BenchmarkReport: [("Primary metric per task", benchmark_quality), ("Training curves", training_curves)],
    CostReport: [("Cost per tenant by device type", cost_by_tenant), ("Quality vs cost", quality_vs_cost)],
    CompareReport: [
        ("Quality per task and method", compare_quality),
        ("Checkpoint size per method (log scale)", compare_size),
    ],
}


def charts_for(report: Any) -> list[tuple[str, bytes]]:
    """(title, PNG) of every chart of `report` that has data."""
    import matplotlib

    out = []
    for title, make in CHARTS[type(report)]:
        with matplotlib.rc_context({"text.parse_math": False}):
            png = make(report)
        if png is not None:
            out.append((title, png))
    return out
