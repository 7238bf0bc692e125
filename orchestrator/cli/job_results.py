"""`lorafleet job metrics` and `lorafleet job checkpoints`: a job's training curves and the
checkpoints it saved (registered on the `job` group by cli.main)."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import click

from orchestrator.cli.helpers import Column, emit, json_option, open_session, print_json, print_table
from orchestrator.cli.output import print_document
from orchestrator.text import csv_cell

SPARK = "▁▂▃▄▅▆▇█"
CURVE_WIDTH = 24

SERIES_COLUMNS = (
    Column("name", "series"),
    Column("points", justify="right"),
    Column("steps", justify="right"),
    Column("first", justify="right"),
    Column("last", justify="right"),
    Column("min", justify="right"),
    Column("curve"),
)


def sparkline(values: list[float], width: int = CURVE_WIDTH) -> str:
    """The curve in `width` block characters (bucket means), low to high."""
    if not values:
        return ""
    n = min(width, len(values))
    buckets = [values[i * len(values) // n:(i + 1) * len(values) // n] for i in range(n)]
    means = [sum(b) / len(b) for b in buckets]
    lo, hi = min(means), max(means)
    span = (hi - lo) or 1.0
    return "".join(SPARK[min(int((m - lo) / span * (len(SPARK) - 1) + 0.5), len(SPARK) - 1)] for m in means)


@click.command("metrics")
@click.argument("job_id")
@click.option("--name", "names", multiple=True,
              help="Only this series (loss, lr, grad_norm, holdout/accuracy...).")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table",
              show_default=True, help="table: one line per series; csv/json: every point.")
def metrics(job_id: str, names: tuple[str, ...], fmt: str) -> None:
    """A job's training curves: every step's loss, lr and grad_norm (the gradient's norm before
    clipping), and evaluations repeated in training.

    \b
    Examples:
      lorafleet job metrics 3f2a1b9c
      lorafleet job metrics 3f2a1b9c --format csv > curve.csv
    """
    from orchestrator.services.metrics import metric_history

    with open_session() as session:
        points = metric_history(session, job_id, names=list(names) or None)
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["name", "step", "epoch", "value"])
        for p in points:
            writer.writerow([csv_cell(v) for v in (p.name, p.step, p.epoch, p.value)])
        print_document(out.getvalue())
        return
    series: dict[str, list[Any]] = {}
    for p in points:
        series.setdefault(p.name, []).append(p)
    if fmt == "json":
        print_json({name: [{"step": p.step, "epoch": p.epoch, "value": p.value} for p in pts]
                    for name, pts in series.items()})
        return
    rows = []
    for name, pts in series.items():
        values = [p.value for p in pts]
        rows.append({"name": name, "points": len(pts), "steps": f"{pts[0].step}-{pts[-1].step}",
                     "first": values[0], "last": values[-1], "min": min(values), "curve": sparkline(values)})
    print_table(rows, SERIES_COLUMNS, empty="(no metric history: the job has not trained a step yet)")


@click.command("checkpoints")
@click.argument("job_id")
@json_option
def checkpoints(job_id: str, as_json: bool) -> None:
    """The checkpoints a job saved, and which are still on disk (a retry resumes from the newest).

    \b
    Example:
      lorafleet job checkpoints 3f2a1b9c
    """
    from orchestrator.services.metrics import job_checkpoints

    with open_session() as session:
        saved = job_checkpoints(session, job_id)
    views = [{"step": c.step, "saved_at": c.saved_at, "path": c.path,
              "on_disk": bool(c.path) and Path(c.path).is_dir()} for c in saved]
    emit(views, as_json, lambda v: print_table(v, (
        Column("step", justify="right"), Column("saved_at", "saved", justify="right"),
        Column("on_disk", "on disk"), Column("path", flexible=True)),
        empty="(no checkpoints: none saved yet, or the job was too short to save one)"))
