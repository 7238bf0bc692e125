"""`lorafleet job …`: submit, list, show, follow, cancel and retry training jobs."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import click

from orchestrator.cli.helpers import (
    CliError,
    emit,
    json_option,
    open_session,
    print_record,
    print_table,
    status,
)

JOB_COLUMNS = ("id", "tenant", "state", "task", "method", "rank", "base_model", "attempts", "created_at")
EVENT_COLUMNS = ("id", "ts", "kind", "message")
TERMINAL = ("succeeded", "failed", "cancelled")
POLL_SECONDS = 0.5
QUEUED_HINT_AFTER_S = 15.0


def _spec_from_options(options: dict[str, Any]) -> dict[str, Any]:
    """Spec fields given on the command line (None: not given, the task default applies)."""
    names = (
        "task",
        "method",
        "rank",
        "alpha",
        "base_model",
        "dataset",
        "max_steps",
        "epochs",
        "lr",
        "batch_size",
        "seed",
        "eval_size",
    )
    spec = {name: options[name] for name in names if options.get(name) is not None}
    if "dataset" in spec:
        # The worker may run in another directory: store an absolute path.
        spec["dataset"] = str(Path(spec["dataset"]).resolve())
    return spec


def dispatch(job_ids: list[str]) -> None:
    """Tell the workers these jobs are waiting (after the registry committed them)."""
    from orchestrator.dispatch import announce_jobs

    announce_jobs(job_ids)


@click.group()
def job() -> None:
    """Training jobs."""


@job.command("submit")
@click.option("--tenant", required=True, help="Tenant slug.")
@click.option("--task", required=True, help="GLUE task, e2e, custom-classification or custom-generation.")
@click.option(
    "--method", type=click.Choice(["lora", "rslora", "dora", "full", "none"]), default="lora",
    show_default=True, help="'none' trains nothing: it scores the untuned base model (a baseline).",
)
@click.option("--rank", type=int, help="LoRA rank (default 8; not used by --method none).")
@click.option("--alpha", type=float, help="LoRA alpha (default: 2 x rank).")
@click.option("--base-model", help="Model alias, local folder or hub id (default: the task's).")
@click.option("--dataset", type=click.Path(exists=True, dir_okay=False), help="JSONL data (custom tasks).")
@click.option("--max-steps", type=int, help="Training budget in optimiser steps.")
@click.option("--epochs", type=float, help="Training budget in epochs (default 1).")
@click.option("--lr", type=float, help="Learning rate (default: the task's, by method).")
@click.option("--batch-size", type=int)
@click.option("--seed", type=int)
@click.option("--eval-size", type=int, help="Validation rows to score (default: all).")
@click.option("--priority", type=int, default=0, show_default=True, help="Higher runs first (-1000..1000).")
@click.option("--idempotency-key", help="Submitting again with the same key returns the same job.")
@click.option("--init-from", "init_from", help="Start from this adapter id (same tenant and base model).")
@click.option("--wait", is_flag=True, help="Wait for the job to end, with a progress bar on stderr.")
@json_option
def submit(
    tenant: str,
    priority: int,
    idempotency_key: str | None,
    init_from: str | None,
    wait: bool,
    as_json: bool,
    **options: Any,
) -> None:
    """Validate and queue one job (every problem of the spec is reported at once)."""
    from orchestrator.services.jobs import submit_job

    if options.get("max_steps") is not None and options.get("epochs") is not None:
        raise click.UsageError("give --max-steps or --epochs, not both")
    with open_session() as session:
        queued = submit_job(
            session,
            tenant,
            _spec_from_options(options),
            priority=priority,
            idempotency_key=idempotency_key,
            init_from_adapter_id=init_from,
        )
        job_id, state = queued.id, queued.state
    if state == "queued":
        dispatch([job_id])
    if not wait:
        emit({"id": job_id}, as_json, lambda v: click.echo(v["id"]))
        return
    detail = watch(job_id, show_events=False)
    emit(detail, as_json, _print_detail)
    if detail["state"] != "succeeded":
        raise CliError(f"job {job_id} ended {detail['state']}: {detail.get('error') or ''}".rstrip(": "))


@job.command("submit-batch")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@json_option
def submit_batch(file: Path, as_json: bool) -> None:
    """Queue every job of FILE (JSONL or YAML list; each item names its tenant), all or nothing."""
    from orchestrator.batchfile import load_batch_file
    from orchestrator.services.jobs import submit_batch as submit_all

    items = load_batch_file(file)
    with open_session() as session:
        jobs = [(j.id, j.state) for j in submit_all(session, items)]
    dispatch([job_id for job_id, state in jobs if state == "queued"])
    emit([{"id": job_id} for job_id, _ in jobs], as_json, lambda v: click.echo("\n".join(i["id"] for i in v)))


@job.command("list")
@click.option("--tenant", help="Only this tenant's jobs.")
@click.option("--state", type=click.Choice(["queued", "running", "succeeded", "failed", "cancelled"]))
@click.option("--limit", type=int, help="At most this many (newest first).")
@json_option
def list_(tenant: str | None, state: str | None, limit: int | None, as_json: bool) -> None:
    """List jobs, newest first."""
    from orchestrator.services.jobs import list_jobs
    from orchestrator.services.tenants import list_tenants
    from orchestrator.services.views import job_dict

    with open_session() as session:
        jobs = list_jobs(session, tenant=tenant, state=state, limit=limit)
        slugs = {t.id: t.slug for t in list_tenants(session)}
        views = [job_dict(j, slugs.get(j.tenant_id)) for j in jobs]
    emit(views, as_json, lambda v: print_table(v, JOB_COLUMNS))


def job_detail(job_id: str) -> dict[str, Any]:
    from orchestrator.services.jobs import get_job

    with open_session() as session:
        return get_job(session, job_id).to_dict()


def _print_detail(detail: dict[str, Any]) -> None:
    print_record(detail, skip=("spec", "tenant_id", "usage"))


@job.command("show")
@click.argument("job_id")
@json_option
def show(job_id: str, as_json: bool) -> None:
    """Show a job: state, attempts, progress, metrics, adapter."""
    emit(job_detail(job_id), as_json, _print_detail)


def _events(job_id: str, after_id: int | None) -> list[dict[str, Any]]:
    from orchestrator.services.jobs import job_events
    from orchestrator.services.views import event_dict

    with open_session() as session:
        return [event_dict(e) for e in job_events(session, job_id, after_id=after_id)]


def watch(job_id: str, *, show_events: bool, as_json: bool = False) -> dict[str, Any]:
    """Poll until the job ends; a progress bar on stderr; events to stdout when `show_events`.

    Returns the job's final detail.
    """
    last_event: int | None = None
    bar = None
    shown = 0
    hint_at = time.monotonic() + QUEUED_HINT_AFTER_S
    try:
        while True:
            if show_events:
                for event in _events(job_id, last_event):
                    last_event = event["id"]
                    if as_json:
                        click.echo(json.dumps(event))
                    elif event["kind"] != "progress":
                        click.echo(f"{event['ts']}  {event['kind']:<16} {event['message']}")
            detail = job_detail(job_id)
            step, total = detail["progress"]["step"], detail["progress"]["total"]
            if bar is None and total:
                bar = click.progressbar(
                    length=total,
                    label=f"{detail['task']} {detail['method']}",
                    file=sys.stderr,
                    show_pos=True,
                    show_eta=True,
                )
                bar.__enter__()
            if bar is not None and step is not None and step > shown:
                bar.update(step - shown)
                shown = step
            if detail["state"] in TERMINAL:
                return detail
            if detail["state"] == "queued" and hint_at and time.monotonic() > hint_at:
                hint_at = 0.0
                status(f"job {job_id} is still queued: is a worker running? (`lorafleet worker`)")
            time.sleep(POLL_SECONDS)
    finally:
        if bar is not None:
            bar.__exit__(None, None, None)


@job.command("events")
@click.argument("job_id")
@click.option(
    "--follow", "-f", is_flag=True, help="Keep printing new events until the job ends (progress bar)."
)
@json_option
def events(job_id: str, follow: bool, as_json: bool) -> None:
    """A job's history (submitted, claimed, progress, checkpoints, the outcome)."""
    if follow:
        watch(job_id, show_events=True, as_json=as_json)
        return
    emit(_events(job_id, None), as_json, lambda v: print_table(v, EVENT_COLUMNS))


@job.command("cancel")
@click.argument("job_id")
@json_option
def cancel(job_id: str, as_json: bool) -> None:
    """Cancel a job: now if queued; at the next training step if running."""
    from orchestrator.services.jobs import cancel_job

    with open_session() as session:
        cancelled = cancel_job(session, job_id)
        view = {"id": cancelled.id, "state": cancelled.state, "cancel_requested": cancelled.cancel_requested}
    emit(view, as_json, print_record)


@job.command("retry")
@click.argument("job_id")
@json_option
def retry(job_id: str, as_json: bool) -> None:
    """Queue a failed or cancelled job again (resumes from its last checkpoint)."""
    from orchestrator.services.jobs import retry_job

    with open_session() as session:
        retried = retry_job(session, job_id)
        view = {"id": retried.id, "state": retried.state}
    dispatch([view["id"]])
    emit(view, as_json, print_record)
