"""The embedded demo behind `lorafleet quickstart` (and `make quickstart`).

Two tenants each fine-tune a real pretrained encoder (`minilm-l6`) on one GLUE task, with LoRA
and with full fine-tuning, so the summary shows LoRA's point: similar quality from an adapter
a few hundred times smaller. Budgets keep the whole run within minutes on two CPU cores.

Idempotent: tenants are created only if missing and every job is submitted with an idempotency
key, so a second run finds the same jobs (finished ones are not trained again) and only starts
a worker if something is still waiting.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.config import Settings, get_settings
from orchestrator.dispatch import worker_command

TENANTS = (("acme", "Acme Reviews"), ("globex", "Globex Paraphrase"))
# (tenant, task, method, rank): SST-2 for one tenant, MRPC for the other, each LoRA vs full, and
# the untuned base on each (method 'none': scored, not trained) so `report compare` has its
# baseline column and the cost report its quality points.
JOBS = (
    ("acme", "sst2", "lora", 8),
    ("acme", "sst2", "full", 8),
    ("acme", "sst2", "none", 0),
    ("globex", "mrpc", "lora", 8),
    ("globex", "mrpc", "full", 8),
    ("globex", "mrpc", "none", 0),
)
BASE_MODEL = "minilm-l6"
DEFAULT_MAX_STEPS = 30
BATCH_SIZE = 16
EVAL_SIZE = 200
TERMINAL = ("succeeded", "failed", "cancelled")
RECONCILE_EVERY_S = 15.0
ROOT = Path(__file__).resolve().parents[1]


class QuickstartError(RuntimeError):
    """The demo cannot run here (missing data, the worker died, a timeout)."""


@dataclass
class QuickstartResult:
    jobs: list[dict[str, Any]] = field(default_factory=list)  # job_show-style dicts
    tenants: list[dict[str, Any]] = field(default_factory=list)  # per-tenant summaries
    worker_started: bool = False
    reports: dict[str, Any] = field(default_factory=dict)  # benchmark / cost / compare report models
    report_html: Path | None = None


def _demo_spec(task: str, method: str, rank: int, max_steps: int) -> dict[str, Any]:
    spec: dict[str, Any] = {"task": task, "method": method, "base_model": BASE_MODEL,
                            "batch_size": BATCH_SIZE, "eval_size": EVAL_SIZE}
    if method != "none":  # the untuned baseline trains nothing: no rank, no budget
        spec.update(rank=rank, max_steps=max_steps)
    return spec


def demo_specs(max_steps: int) -> list[dict[str, Any]]:
    """The batch the demo submits: one item per job, with an idempotency key per spec."""
    return [
        {
            "tenant": tenant,
            "idempotency_key": f"quickstart-{task}-{method}-r{rank}-s{max_steps}",
            "spec": _demo_spec(task, method, rank, max_steps),
        }
        for tenant, task, method, rank in JOBS
    ]


def _check_data(settings: Settings) -> None:
    missing = [t for t in ("sst2", "mrpc") if not (settings.data_dir / "glue" / t / "train.jsonl").is_file()]
    if missing:
        raise QuickstartError(
            f"GLUE data for {', '.join(missing)} not found under {settings.data_dir}/glue: set "
            "LORAFLEET_DATA_DIR to the data folder (the Makefile points it at ../shared/data)"
        )


def ensure_tenants(settings: Settings) -> None:
    from orchestrator.registry.db import session_scope
    from orchestrator.services.tenants import create_tenant, list_tenants

    with session_scope(settings) as session:
        existing = {t.slug for t in list_tenants(session)}
        for slug, name in TENANTS:
            if slug not in existing:
                create_tenant(session, slug, name=name)


def submit_demo_jobs(settings: Settings, max_steps: int) -> list[str]:
    """Submit (or find, by idempotency key) the demo's jobs; the queued ones are (re-)sent once
    committed (a job left queued by an interrupted earlier run may have lost its message; a
    duplicate message finds nothing to claim)."""
    from orchestrator.announce import sending_session
    from orchestrator.services.jobs import submit_batch

    with sending_session(settings) as session:
        return [j.id for j in submit_batch(session, demo_specs(max_steps))]


def job_details(settings: Settings, job_ids: list[str]) -> list[dict[str, Any]]:
    from orchestrator.registry.db import session_scope
    from orchestrator.services.jobs import get_job

    with session_scope(settings) as session:
        return [get_job(session, job_id).to_dict() for job_id in job_ids]


def start_worker(settings: Settings) -> subprocess.Popen:
    """A solo-pool worker subprocess with this process's environment; its log goes to <home>."""
    from lora_engine.atomic import private_file

    log = open(private_file(settings.home / "quickstart-worker.log"), "ab")  # noqa: SIM115 (owned by the child)
    argv = worker_command(queue=settings.queue, hostname=f"quickstart-{os.getpid()}@%h",
                          without_heartbeat=True)
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    )
    return subprocess.Popen(
        argv, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=Path.cwd(), start_new_session=True
    )


def stop_worker(proc: subprocess.Popen, timeout: float = 60.0) -> None:
    """Warm shutdown (SIGTERM: the current task finishes), then SIGKILL if it hangs."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def write_reports(settings: Settings) -> tuple[dict[str, Any], Path]:
    """The demo tenants' benchmark, cost and compare reports, written in every format under
    <home>/reports; returns the report models and the path of the combined report.html."""
    from orchestrator.registry.db import session_scope
    from orchestrator.reports import make_filters
    from orchestrator.reports.files import build_all, write_all

    filters = make_filters(tenants=[slug for slug, _ in TENANTS])
    with session_scope(settings) as session:
        reports = build_all(session, filters, pick="latest", prices=settings.prices,
                            storage_price_gb_month=settings.storage_price_gb_month)
    paths = write_all(settings.home / "reports", reports)
    return reports, paths[-1]


def run_quickstart(
    settings: Settings | None = None,
    *,
    max_steps: int | None = None,
    timeout: float = 900.0,
    poll_s: float = 1.0,
    on_progress: Callable[[list[dict[str, Any]]], None] | None = None,
) -> QuickstartResult:
    """Create the tenants, submit the jobs, run a worker until they end, return the summary.

    `on_progress(details)` is called on every poll with the jobs' current details.
    """
    from orchestrator.announce import reconcile_once
    from orchestrator.registry.db import session_scope
    from orchestrator.services.summary import tenant_summary

    settings = settings or get_settings()
    steps = max_steps or DEFAULT_MAX_STEPS
    _check_data(settings)
    ensure_tenants(settings)
    job_ids = submit_demo_jobs(settings, steps)
    result = QuickstartResult()
    details = job_details(settings, job_ids)
    proc = None
    if any(d["state"] not in TERMINAL for d in details):
        proc = start_worker(settings)
        result.worker_started = True
    try:
        deadline = time.monotonic() + timeout
        next_reconcile = time.monotonic() + RECONCILE_EVERY_S
        while True:
            if on_progress is not None:
                on_progress(details)
            if all(d["state"] in TERMINAL for d in details):
                break
            if proc is not None and proc.poll() is not None:
                raise QuickstartError(
                    f"the worker exited with code {proc.returncode}; see "
                    f"{settings.home / 'quickstart-worker.log'}"
                )
            if time.monotonic() > deadline:
                raise QuickstartError(
                    f"jobs still running after {timeout:.0f}s; the worker log is "
                    f"{settings.home / 'quickstart-worker.log'}"
                )
            time.sleep(poll_s)
            if time.monotonic() > next_reconcile:
                # A job left `running` by an interrupted earlier run comes back once its lease expires.
                reconcile_once(settings=settings)
                next_reconcile = time.monotonic() + RECONCILE_EVERY_S
            details = job_details(settings, job_ids)
    finally:
        if proc is not None:
            stop_worker(proc)
    result.jobs = details
    with session_scope(settings) as session:
        slugs = {slug for slug, _ in TENANTS}
        result.tenants = [t.to_dict() for t in tenant_summary(session) if t.slug in slugs]
    result.reports, result.report_html = write_reports(settings)
    return result
