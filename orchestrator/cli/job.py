"""`lorafleet job …`: submit, list, show, follow, cancel, pause, resume and retry training jobs."""

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
    status,
    wide_option,
)
from orchestrator.cli.lazy import LazyGroup
from orchestrator.cli.output import echo
from orchestrator.cli.spec_options import SpecCommand, spec_from_options
from orchestrator.registry.limits import BIG_INTEGER_MAX
from orchestrator.registry.states import JOB_STATES

DEFAULT_LIST_LIMIT = 50


@click.group(cls=LazyGroup, lazy={"metrics": "orchestrator.cli.job_results:metrics",
                                  "checkpoints": "orchestrator.cli.job_results:checkpoints"})
def job() -> None:
    """Training jobs."""


@job.command("submit", cls=SpecCommand)
@click.option("--tenant", required=True, help="Tenant slug.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Any spec field (repeatable), e.g. --set warmup_ratio=0.1; the value is read as JSON.")
@click.option("--priority", type=int, default=0, show_default=True, help="Higher runs first (-1000..1000).")
@click.option("--idempotency-key",
              help="Submitting again with the same key returns the same job (safe retries).")
@click.option("--dry-run", is_flag=True,
              help="Validate everything, estimate examples, tokens, device-seconds, money; write nothing.")
@click.option("--wait", is_flag=True, help="Wait for the job to end, with a progress bar on stderr.")
@click.option("--no-tracking", is_flag=True,
              help="Keep this job out of the MLflow server the operator set (LORAFLEET_MLFLOW_TRACKING_URI).")
@json_option
def submit(
    tenant: str,
    overrides: tuple[str, ...],
    priority: int,
    idempotency_key: str | None,
    dry_run: bool,
    wait: bool,
    no_tracking: bool,
    as_json: bool,
    **options: Any,
) -> None:
    """Validate and queue one job (every problem of the spec is reported at once).

    Every spec field has an option (or use --set). --dataset takes a data set id or a JSONL file
    (validated whole and uploaded first). If the broker is down the job is still queued: its id
    is printed and the reconciler dispatches it later.
    """
    from orchestrator.services.jobs import JobLabels, plan_job, submit_job

    if options.get("max_steps") is not None and options.get("epochs") is not None:
        raise click.UsageError("give --max-steps or --epochs, not both")
    # --init-from, --dataset and --base-model are ids or paths by their spelling (orchestrator.refs).
    spec = spec_from_options(options, overrides)
    with open_session() as session:
        if dry_run:
            plan = plan_job(session, tenant, spec, priority=priority)
            emit(plan.to_dict(), as_json, _print_plan)
            return
        queued = submit_job(session, tenant, spec, priority=priority, idempotency_key=idempotency_key,
                            labels=JobLabels(tracking=not no_tracking))
        job_id, state = queued.id, queued.state
    if not wait:
        emit({"id": job_id}, as_json, lambda v: click.echo(v["id"]))  # the id first, whatever follows
    if not wait:
        return
    from orchestrator.cli.live import follow

    if not as_json:  # the id first: whatever happens next, the person can find the job again
        click.echo(f"job {job_id} {state}  (Ctrl-C detaches; the job keeps running)")
    detail = follow(job_id, show_events=False, as_json=as_json)
    emit(detail, as_json, _print_outcome)
    if detail["state"] != "succeeded":
        raise CliError(f"job {job_id} ended {detail['state']}: {detail.get('error') or ''}".rstrip(": "))


@job.command("submit-batch")
@click.argument("file", type=click.Path(path_type=Path))
@json_option
def submit_batch(file: Path, as_json: bool) -> None:
    """Queue every job of FILE (JSONL or YAML list; each item names its tenant), all or nothing.

    FILE and the data set files its items name (relative to FILE's folder) lie in a data root
    (LORAFLEET_DATA_ROOTS).
    """
    from orchestrator.batchfile import load_batch_file
    from orchestrator.services.jobs import submit_batch as submit_all

    items = load_batch_file(file)
    with open_session() as session:
        jobs = [(j.id, j.state) for j in submit_all(session, items)]
    emit([{"id": job_id} for job_id, _ in jobs], as_json, lambda v: click.echo("\n".join(i["id"] for i in v)))


@job.command("list")
@click.option("--tenant", help="Only this tenant's jobs.")
@click.option("--state", type=click.Choice(JOB_STATES))
@click.option("--limit", type=click.IntRange(min=1, max=10_000), default=DEFAULT_LIST_LIMIT,
              show_default=True, help="At most this many (newest first).")
@click.option("--offset", type=click.IntRange(min=0, max=BIG_INTEGER_MAX), default=0,
              help="Skip this many newest first (paging).")
@wide_option
@json_option
def list_(tenant: str | None, state: str | None, limit: int, offset: int, wide: bool, as_json: bool) -> None:
    """List jobs, newest first, a page at a time (--limit, --offset)."""
    from orchestrator.services.overview import job_listing

    with open_session() as session:
        listed = job_listing(session, tenant=tenant, state=state, limit=limit, offset=offset)
    if len(listed) == limit:
        status(f"jobs {offset + 1}-{offset + limit}, newest first; more with --offset {offset + limit}")
    if as_json:
        emit([j.to_dict() for j in listed], True, print_table)
        return
    from orchestrator.cli.job_view import JOB_COLUMNS, job_row

    print_table([job_row(j.to_dict(), j.headline) for j in listed], JOB_COLUMNS, wide=wide)


def _print_plan(plan: dict[str, Any]) -> None:
    """`--dry-run` for people: what would run and what it would cost; nothing was written."""
    est, spec = plan["estimate"], plan["spec"]
    echo(f"dry run for tenant {plan['tenant']}: valid, nothing written")
    from lora_engine.catalog import POOLINGS

    pooling = f", {spec['pooling']} pooling" if spec.get("pooling") in POOLINGS else ""
    echo(f"  {spec['task']} {spec['method']} r={spec['rank']} on {spec['base_model']}{pooling}")
    if plan["dataset"]:
        d = plan["dataset"]
        echo(f"  data set: {d['rows']} rows ({d['duplicate_rows']} duplicates), "
                   f"labels {d['label_counts']}")
    rows = est["train_rows"] if est["train_rows"] is not None else "?"
    examples = est["examples"] if est["examples"] is not None else "?"
    tokens = f"~{est['tokens']}" if est["tokens"] is not None else "unknown"
    held = spec.get("eval_holdout") or 0
    held_out = f", {held} of them held out for evaluation" if held else ""
    echo(f"  would train {examples} examples ({rows} training rows{held_out}), tokens {tokens}")
    if est["device_seconds"] is None:
        echo(f"  device time: {est['basis']}")
    else:
        money = f", {est['money']:.4f} at the configured price" if est["money"] is not None else ""
        echo(f"  device time: ~{est['device_seconds']:.1f} s on {est['device']}{money} "
                   f"({est['basis']})")


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
    echo(f"{line}. More: lorafleet job show {detail['id'][:8]}")


def _print_detail(detail: dict[str, Any]) -> None:
    from lora_engine.budget import describe

    # The stored spec is resolved: the budget line shows what `auto` became for this job.
    record = {**detail, "budget": describe(detail["spec"])} if detail.get("spec") else detail
    print_record(record, skip=("spec", "tenant_id", "usage"))


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
    """Wait until every JOB_ID has ended or is paused (ids or unique prefixes); exit 0 only if all
    succeeded.

    Prints a line per job as it settles; exits 1 if any failed, was cancelled or is paused, 3 if an
    id is unknown. Ctrl-C stops waiting, not the jobs.

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


@job.command("pause")
@click.argument("job_id")
@json_option
def pause(job_id: str, as_json: bool) -> None:
    """Pause a job: now if queued; if running, at its next checkpoint (`job resume` continues it)."""
    from orchestrator.services.pausing import pause_job

    with open_session() as session:
        paused = pause_job(session, job_id)
        view = {"id": paused.id, "state": paused.state, "pause_requested": paused.pause_requested}
    emit(view, as_json, print_record)


@job.command("resume")
@click.argument("job_id")
@json_option
def resume(job_id: str, as_json: bool) -> None:
    """Queue a paused job again; it continues from its checkpoint."""
    from orchestrator.services.pausing import resume_job

    with open_session() as session:
        resumed = resume_job(session, job_id)
        view = {"id": resumed.id, "state": resumed.state}
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
    emit(view, as_json, print_record)
