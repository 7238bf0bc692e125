"""How a job reads in a table row and in the live view: its phase, result, duration and columns."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from orchestrator.cli.output import Column, duration, parse_time

# Short names for the metric column (the full names are in `job show` and `--json`).
METRIC_ABBREV = {"accuracy": "acc", "matthews_corr": "mcc", "pearson": "r", "rouge_l": "rougeL",
                 "f1_macro": "f1"}

JOB_COLUMNS = (
    Column("id"),
    Column("tenant"),
    Column("state"),
    Column("task"),
    Column("method_rank", "method"),
    Column("result", flexible=True),
    Column("took", justify="right"),
    Column("created_at", "age", justify="right"),
    Column("base_model", "base model", wide_only=True),
    Column("attempts", wide_only=True),
    Column("priority", wide_only=True),
)
EVENT_COLUMNS = (
    Column("id", fmt=lambda v, _w: str(v), justify="right"),
    Column("ts", "when", fmt=lambda v, w: _event_time(v, w)),
    Column("kind"),
    Column("message", flexible=True),
)


def _event_time(value: Any, wide: bool) -> str:
    moment = parse_time(value)
    if moment is None:
        return "-"
    return moment.isoformat(timespec="seconds") if wide else moment.astimezone().strftime("%H:%M:%S")


def phase(view: Mapping[str, Any]) -> str:
    """queued, loading, training, evaluating, saving, or the end state: the phase a follower saw
    in the job's `phase` events (`view["phase"]`, set by cli.live), else inferred from the step."""
    state = view["state"]
    if state != "running":
        return state
    recorded = view.get("phase")
    if recorded:
        return recorded
    step, total = view["progress"]["step"], view["progress"]["total"]
    if step is None:
        return "loading"
    return "training" if total is None or step < total else "evaluating"


def took(view: Mapping[str, Any], now: datetime | None = None) -> float | None:
    """Seconds from start to finish (to now while running)."""
    start = parse_time(view.get("started_at"))
    if start is None:
        return None
    end = parse_time(view.get("finished_at")) or (now or datetime.now(UTC))
    return (end - start).total_seconds()


def metric_text(name: str, value: float) -> str:
    return f"{METRIC_ABBREV.get(name, name)} {value:.4g}"


def result(view: Mapping[str, Any], headline: tuple[str, float] | None) -> str:
    """What a person wants to know next: the score, the error, or how far it got."""
    state = view["state"]
    progress = view["progress"]
    if state == "succeeded":
        return metric_text(*headline) if headline else "done"
    if state == "failed":
        return view.get("error") or "failed"
    if state == "running":
        if progress["step"] is None:
            return phase(view)
        text = f"step {progress['step']}/{progress['total'] or '?'}"
        return text + (f" loss {progress['loss']:.3g}" if progress.get("loss") is not None else "")
    if state == "cancelled" and progress["step"] is not None:
        return f"stopped at step {progress['step']}"
    return "-"


def job_row(view: Mapping[str, Any], headline: tuple[str, float] | None) -> dict[str, Any]:
    """A job view (services.views.job_dict) plus the table's derived columns."""
    method = view["method"] if view["method"] in ("full", "none") else f"{view['method']} r{view['rank']}"
    if view.get("kind") == "merge":  # the merge's method, not a training method
        method = f"merge {(view.get('spec') or {}).get('how')} r{view['rank']}"
    seconds = took(view)
    return {**view, "method_rank": method, "result": result(view, headline),
            "took": duration(seconds) if seconds is not None else "-"}
