"""`lorafleet job …`: submit, list, show, follow, cancel and retry training jobs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from orchestrator.cli.helpers import (
    CliError,
    emit,
    json_option,
    open_session,
    print_json,
    print_record,
    print_table,
    wide_option,
)


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
    from orchestrator.cli.live import follow

    if not as_json:  # the id first: whatever happens next, the person can find the job again
        click.echo(f"job {job_id} {state}  (Ctrl-C detaches; the job keeps running)")
    detail = follow(job_id, show_events=False, as_json=as_json)
    emit(detail, as_json, _print_outcome)
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
@wide_option
@json_option
def list_(tenant: str | None, state: str | None, limit: int | None, wide: bool, as_json: bool) -> None:
    """List jobs, newest first."""
    from orchestrator.services.jobs import list_jobs
    from orchestrator.services.metrics import headline_metrics
    from orchestrator.services.tenants import list_tenants
    from orchestrator.services.views import job_dict

    with open_session() as session:
        jobs = list_jobs(session, tenant=tenant, state=state, limit=limit)
        slugs = {t.id: t.slug for t in list_tenants(session)}
        views = [job_dict(j, slugs.get(j.tenant_id)) for j in jobs]
        headlines = {} if as_json else headline_metrics(session, jobs)
    if as_json:
        emit(views, True, print_table)
        return
    from orchestrator.cli.job_view import JOB_COLUMNS, job_row

    print_table([job_row(v, headlines.get(v["id"])) for v in views], JOB_COLUMNS, wide=wide)


def job_detail(job_id: str) -> dict[str, Any]:
    from orchestrator.cli.live import job_detail as detail

    return detail(job_id)


def _print_outcome(detail: dict[str, Any]) -> None:
    """One line after `--wait`: how it ended, the score and the adapter; `job show` has the rest."""
    from orchestrator.cli.job_view import took
    from orchestrator.cli.live import outcome
    from orchestrator.cli.output import duration, human_bytes

    seconds = took(detail)
    line = f"{detail['state']}" + (f" in {duration(seconds)}" if seconds is not None else "")
    what = outcome(detail)
    if what:
        line += f": {what}"
    if detail.get("adapter"):
        line += f"; adapter {detail['adapter']['id'][:8]} ({human_bytes(detail['adapter']['bytes'])})"
    click.echo(f"{line}. More: lorafleet job show {detail['id'][:8]}")


def _print_detail(detail: dict[str, Any]) -> None:
    print_record(detail, skip=("spec", "tenant_id", "usage"))


@job.command("show")
@click.argument("job_id")
@json_option
def show(job_id: str, as_json: bool) -> None:
    """Show a job: state, attempts, progress, metrics, adapter."""
    emit(job_detail(job_id), as_json, _print_detail)


def _events(job_id: str, after_id: int | None) -> list[dict[str, Any]]:
    from orchestrator.cli.live import new_events

    return new_events(job_id, after_id)


@job.command("events")
@click.argument("job_id")
@click.option(
    "--follow", "-f", is_flag=True, help="Keep printing new events until the job ends (live status line)."
)
@wide_option
@json_option
def events(job_id: str, follow: bool, wide: bool, as_json: bool) -> None:
    """A job's history (submitted, claimed, progress, checkpoints, the outcome).

    With --follow on a terminal: a live status line (phase, step, loss, throughput, ETA) below
    the events; piped: one line per event. Ctrl-C stops following, not the job.

    \b
    Example:
      lorafleet job events --follow 3f2a1b9c
    """
    if follow:
        from orchestrator.cli.live import follow as follow_job

        follow_job(job_id, show_events=True, as_json=as_json)
        return
    from orchestrator.cli.job_view import EVENT_COLUMNS

    emit(_events(job_id, None), as_json, lambda v: print_table(v, EVENT_COLUMNS, wide=wide))


@job.command("wait")
@click.argument("job_ids", nargs=-1, required=True)
@json_option
def wait(job_ids: tuple[str, ...], as_json: bool) -> None:
    """Wait until every JOB_ID has ended (ids or unique prefixes); exit 0 only if all succeeded.

    Prints a line per job as it ends; exits 1 if any failed or was cancelled, 3 if an id is
    unknown. Ctrl-C stops waiting, not the jobs.

    \b
    Example:
      lorafleet job wait 3f2a1b9c 77d0e1aa && lorafleet adapter list
    """
    from orchestrator.cli.live import wait_all

    finals = wait_all(list(job_ids), quiet=as_json)
    if as_json:
        print_json(finals)
    unsuccessful = [d for d in finals if d["state"] != "succeeded"]
    if unsuccessful:
        listed = ", ".join(f"{d['id'][:8]} {d['state']}" for d in unsuccessful)
        raise CliError(f"{len(unsuccessful)} of {len(finals)} jobs did not succeed: {listed}")


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
