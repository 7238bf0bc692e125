"""`lorafleet quickstart`: the embedded demo (two tenants, real jobs, a worker, the summary)."""

from __future__ import annotations

import sys
from typing import Any

import click

from orchestrator.cli.helpers import CliError, emit, json_option, print_table, status

JOB_COLUMNS = ("tenant", "task", "method", "state", "metric", "adapter_mb", "trainable_params", "device_s")
TENANT_COLUMNS = ("tenant", "jobs", "adapters", "adapter_mb", "device_s", "examples")


def _job_row(job: dict[str, Any]) -> dict[str, Any]:
    from lora_engine.catalog import TASKS

    adapter = job.get("adapter") or {}
    primary = TASKS[job["task"]].primary_metric
    value = (job.get("metrics") or {}).get("validation", {}).get(primary)
    return {
        "tenant": job["tenant"],
        "task": job["task"],
        "method": job["method"],
        "state": job["state"],
        "metric": f"{primary} {value:.3f}" if value is not None else "-",
        "adapter_mb": round(adapter["bytes"] / 1e6, 2) if adapter else None,
        "trainable_params": adapter.get("trainable_params"),
        "device_s": round(sum(u["device_seconds"] for u in job.get("usage") or []), 1),
    }


def _tenant_row(t: dict[str, Any]) -> dict[str, Any]:
    jobs = ", ".join(f"{n} {state}" for state, n in t["jobs"].items() if n)
    return {
        "tenant": t["slug"],
        "jobs": jobs or "-",
        "adapters": t["adapters"],
        "adapter_mb": round(t["adapter_bytes"] / 1e6, 2),
        "device_s": round(t["device_seconds"], 1),
        "examples": t["examples"],
    }


def _print_reports(result: Any) -> None:
    """The benchmark, cost and compare tables (rich), then where the HTML report is."""
    from orchestrator.reports.render.table import print_report, terminal_console

    console = terminal_console()
    for name in ("benchmark", "cost", "compare"):
        click.echo(f"\nReport: {name}  (`lorafleet report {name}`)")
        print_report(result.reports[name], console)
    click.echo(f"HTML report (charts): {result.report_html}")


class _Progress:
    """One bar on stderr over every job's optimiser steps."""

    def __init__(self) -> None:
        self.bar: Any = None
        self.done = 0
        self.reported: set[str] = set()

    def __call__(self, details: list[dict[str, Any]]) -> None:
        totals = [d["spec"].get("max_steps") or d["progress"]["total"] or 0 for d in details]
        done = sum(
            total if d["state"] in ("succeeded", "failed", "cancelled") else (d["progress"]["step"] or 0)
            for d, total in zip(details, totals, strict=True)
        )
        if self.bar is None:
            self.bar = click.progressbar(
                length=max(sum(totals), 1), label="training", file=sys.stderr, show_pos=True, show_eta=False
            )
            self.bar.__enter__()
        if done > self.done:
            self.bar.update(done - self.done)
            self.done = done
        for d in details:
            if d["state"] in ("succeeded", "failed", "cancelled") and d["id"] not in self.reported:
                self.reported.add(d["id"])
                self.bar.label = f"{d['tenant']} {d['task']} {d['method']} {d['state']}"

    def close(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)


@click.command()
@click.option("--max-steps", type=click.IntRange(min=1), help="Training steps per job (default 30).")
@click.option("--timeout", type=float, default=900.0, show_default=True, help="Give up after SECONDS.")
@json_option
def quickstart(max_steps: int | None, timeout: float, as_json: bool) -> None:
    """Two tenants train SST-2 and MRPC adapters (LoRA and full) on minilm-l6; print the summary.

    Starts a worker subprocess for the run and stops it at the end. Idempotent: a second run
    finds the same jobs and trains nothing again.
    """
    from orchestrator.config import get_settings
    from orchestrator.quickstart import QuickstartError, run_quickstart

    settings = get_settings()
    status(f"lorafleet home: {settings.home} (registry, broker, artifacts)")
    progress = _Progress()
    try:
        result = run_quickstart(settings, max_steps=max_steps, timeout=timeout, on_progress=progress)
    except QuickstartError as exc:
        raise CliError(str(exc)) from exc
    finally:
        progress.close()
    if not result.worker_started:
        status("every demo job had already finished: nothing to train (delete .lorafleet to start over)")
    if as_json:
        emit({"tenants": result.tenants, "jobs": result.jobs,
              "reports": {name: r.to_dict() for name, r in result.reports.items()},
              "report_html": str(result.report_html)}, True, print)
    else:
        click.echo("\nJobs")
        print_table([_job_row(j) for j in result.jobs], JOB_COLUMNS)
        click.echo("\nTenants")
        print_table([_tenant_row(t) for t in result.tenants], TENANT_COLUMNS)
        _print_reports(result)
    if any(j["state"] != "succeeded" for j in result.jobs):
        raise CliError(
            "some demo jobs did not succeed: see `lorafleet job list` and `lorafleet job events ID`"
        )
