"""Following a job until it ends: `job submit --wait`, `job events --follow`, `job wait`.

Three renderings of the same polling loop, chosen by where stdout goes:
- a terminal: one rich Live view on stdout — the job's phase, a bar, step, loss, gradient norm
  (before clipping, from the latest `progress` event), throughput and ETA on the bottom line,
  the events printed above it by the same console (so an event never lands inside the bar's
  line);
- not a terminal (a pipe, a log file): one plain line per event, progress included;
- `--json`: one JSON object per event.
Ctrl-C detaches (the job keeps running) and says how to re-attach; the command exits 130.
Event messages, errors and the status line are escaped (orchestrator.text.printable) in every
rendering but JSON, which escapes by itself.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import click

from orchestrator.cli.helpers import jsonable, open_session, status
from orchestrator.cli.job_view import phase
from orchestrator.cli.output import duration, echo
from orchestrator.registry.models import TERMINAL_STATES as TERMINAL
from orchestrator.text import printable

POLL_SECONDS = 0.5
# Where waiting stops: the ends, and `paused`, which nothing moves until someone resumes it (a
# wait there would hang, not wait).
SETTLED = (*TERMINAL, "paused")
QUEUED_HINT_AFTER_S = 15.0
EXIT_DETACHED = 130  # the shell's code for "stopped by Ctrl-C"


def detached(job_ids: list[str]) -> click.exceptions.Exit:
    """After Ctrl-C while following: say the jobs keep running and how to re-attach; exit 130."""
    ids = " ".join(job_ids)
    again = (f"lorafleet job events --follow {job_ids[0]}" if len(job_ids) == 1
             else f"lorafleet job wait {ids}")
    status(f"\ndetached: {'the job keeps' if len(job_ids) == 1 else 'the jobs keep'} running. "
           f"Re-attach: {again}")
    return click.exceptions.Exit(EXIT_DETACHED)


def job_detail(job_id: str) -> dict[str, Any]:
    from orchestrator.services.jobs import get_job

    with open_session() as session:
        return get_job(session, job_id).to_dict()


def new_events(job_id: str, after_id: int | None) -> list[dict[str, Any]]:
    from orchestrator.services.jobs import job_events
    from orchestrator.services.views import event_dict

    with open_session() as session:
        return [event_dict(e) for e in job_events(session, job_id, after_id=after_id)]


class Rate:
    """Steps per second seen by this follower (from the first step it saw), and the ETA."""

    def __init__(self) -> None:
        self.first: tuple[float, int] | None = None
        self.last: tuple[float, int] | None = None

    def see(self, step: int | None) -> None:
        if step is None:
            return
        now = time.monotonic()
        if self.first is None or step < self.first[1]:
            self.first = (now, step)
        if self.last is None or step != self.last[1]:
            self.last = (now, step)

    def steps_per_s(self) -> float | None:
        if self.first is None or self.last is None or self.last[1] <= self.first[1]:
            return None
        return (self.last[1] - self.first[1]) / max(self.last[0] - self.first[0], 1e-9)

    def eta_s(self, total: int | None) -> float | None:
        rate = self.steps_per_s()
        if rate is None or total is None or self.last is None:
            return None
        return max(total - self.last[1], 0) / rate


class Phase:
    """The stretch of work without steps the job is in, from its `phase` events (evaluating,
    saving); a step after the event's step means it trains again."""

    def __init__(self) -> None:
        self.name: str | None = None
        self.step = 0

    def see(self, event: dict[str, Any]) -> None:
        if event["kind"] == "phase" and event.get("data"):
            self.name, self.step = event["data"].get("phase"), int(event["data"].get("step") or 0)
        elif event["kind"] in ("claimed", "resumed"):  # a new attempt starts by loading
            self.name = None

    def of(self, view: dict[str, Any]) -> str | None:
        step = view["progress"]["step"]
        return self.name if self.name and (step or 0) <= self.step else None


def progress_text(view: dict[str, Any], rate: Rate) -> str:
    """'training  step 12/50  loss 0.412  grad norm 0.83  3.1 it/s  96 ex/s  ETA 12s' (no bar: the
    plain form); the gradient norm is `view["grad_norm"]`, when the follower has seen one."""
    p = view["progress"]
    parts = [phase(view)]
    if p["step"] is not None:
        parts.append(f"step {p['step']}/{p['total'] or '?'}")
    if p.get("loss") is not None:
        parts.append(f"loss {p['loss']:.4g}")
    if isinstance(view.get("grad_norm"), int | float):
        parts.append(f"grad norm {view['grad_norm']:.3g}")
    steps_per_s = rate.steps_per_s()
    if steps_per_s is not None:
        parts.append(f"{steps_per_s:.2f} it/s")
        spec = view.get("spec") or {}
        per_step = (spec.get("batch_size") or 0) * (spec.get("grad_accum") or 1)
        if per_step:
            parts.append(f"{steps_per_s * per_step:.0f} ex/s")
    eta = rate.eta_s(p["total"])
    if eta is not None and view["state"] == "running" and phase(view) == "training":
        parts.append(f"ETA {duration(eta)}")
    return "  ".join(parts)


def _event_line(event: dict[str, Any]) -> str:
    from orchestrator.cli.output import parse_time

    moment = parse_time(event["ts"])
    clock = moment.astimezone().strftime("%H:%M:%S") if moment else "-"
    return f"{clock}  {event['kind']:<16} {event['message']}"


class _View:
    """The rich Live view on a terminal: events above, one status line (with a bar) below."""

    def __init__(self, title: str):
        from rich.console import Console
        from rich.live import Live

        self.console = Console(file=sys.stdout, highlight=False)
        self.title = title
        self.live = Live(console=self.console, refresh_per_second=8, transient=False,
                         redirect_stdout=False, redirect_stderr=False)

    def __enter__(self) -> _View:
        self.live.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.live.__exit__(*exc)

    def event(self, event: dict[str, Any]) -> None:
        from rich.text import Text

        self.live.console.print(Text(printable(_event_line(event))))

    def show(self, view: dict[str, Any], rate: Rate) -> None:
        from rich.progress_bar import ProgressBar
        from rich.table import Table
        from rich.text import Text

        p = view["progress"]
        line = Table.grid(padding=(0, 1))
        line.add_row(
            Text(printable(self.title), style="bold"),
            ProgressBar(total=float(p["total"] or 1), completed=float(p["step"] or 0), width=20),
            Text(printable(progress_text(view, rate))),
        )
        self.live.update(line, refresh=True)


def follow(job_id: str, *, show_events: bool = True, as_json: bool = False) -> dict[str, Any]:
    """Poll until the job ends, rendering as the module docstring says; the final job detail.

    `show_events=False` with `as_json`: print nothing while waiting (the caller prints the end).
    """
    rate = Rate()
    current = Phase()
    grad_norm: float | None = None  # the latest progress event's
    last_event: int | None = None
    hint_at = time.monotonic() + QUEUED_HINT_AFTER_S
    detail = job_detail(job_id)
    job_id = detail["id"]  # a prefix resolved once
    view = _View(f"{job_id[:8]} {detail['task']}") if sys.stdout.isatty() and not as_json else None
    try:
        if view is not None:
            view.__enter__()
        while True:
            for event in new_events(job_id, last_event):
                last_event = event["id"]
                current.see(event)
                if event["kind"] == "progress":
                    grad_norm = (event.get("data") or {}).get("grad_norm", grad_norm)
                if as_json:
                    if show_events:
                        click.echo(json.dumps(jsonable(event)))
                elif view is None:
                    echo(_event_line(event))
                elif event["kind"] != "progress":  # the status line shows progress
                    view.event(event)
            detail = job_detail(job_id)
            rate.see(detail["progress"]["step"])
            if view is not None:
                view.show({**detail, "phase": current.of(detail), "grad_norm": grad_norm}, rate)
            if detail["state"] in SETTLED:
                return detail
            if detail["state"] == "queued" and hint_at and time.monotonic() > hint_at:
                hint_at = 0.0
                status(f"job {job_id} is still queued: is a worker running? (`lorafleet worker`; "
                       f"`lorafleet status` says why jobs wait)")
            time.sleep(POLL_SECONDS)
    except KeyboardInterrupt:
        if view is not None:
            view.__exit__(None, None, None)
            view = None
        raise detached([job_id]) from None
    finally:
        if view is not None:
            view.__exit__(None, None, None)


def wait_all(job_ids: list[str], *, quiet: bool = False) -> list[dict[str, Any]]:
    """Poll until every job has ended or is paused; a line per job as it settles (unless `quiet`).
    Final details, in the order given. Unknown ids fail before any waiting (NotFound)."""
    details = {job_id: job_detail(job_id) for job_id in job_ids}
    full_ids = [d["id"] for d in details.values()]  # prefixes resolved once
    pending = list(dict.fromkeys(full_ids))
    finals: dict[str, dict[str, Any]] = {}
    try:
        while pending:
            for job_id in list(pending):
                detail = job_detail(job_id)
                if detail["state"] in SETTLED:
                    finals[job_id] = detail
                    pending.remove(job_id)
                    if not quiet:
                        echo(f"{job_id}  {detail['state']:<10} {outcome(detail)}")
            if pending:
                time.sleep(POLL_SECONDS)
    except KeyboardInterrupt:
        raise detached(pending) from None
    return [finals[job_id] for job_id in full_ids]


def outcome(detail: dict[str, Any]) -> str:
    from lora_engine.catalog import TASKS
    from orchestrator.cli.job_view import metric_text

    if detail["state"] == "succeeded":
        primary = TASKS[detail["task"]].primary_metric if detail["task"] in TASKS else ""
        value = (detail.get("metrics") or {}).get("validation", {}).get(primary)
        return metric_text(primary, value) if value is not None else ""
    return detail.get("error") or ""
