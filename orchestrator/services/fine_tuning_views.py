"""Jobs as OpenAI's fine-tuning objects: `fine_tuning.job`, its events, its checkpoints, and its
result file (the metrics history as CSV), each read in one transaction, scoped to one tenant.

Pages: jobs newest first, keyed by (created_at, id) from the job named by `after` (the index
`ix_jobs_tenant_id_created_at_id` serves it: no OFFSET scan however deep the page); events and
checkpoints newest first, keyed by the event id. A page's jobs are completed with 3 queries
whatever its size (their adapters, their bases' adapters, their trained tokens): no N+1.

What a tenant sees of an event is chosen here: the workers' names, the paths of checkpoints and
the artifacts root are the operator's, never shown.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Mapping, Sequence
from pathlib import PurePath
from typing import Any

from sqlalchemy import Select, func, select, tuple_
from sqlalchemy.orm import Session

from lora_engine.model_ref import is_folder_name
from orchestrator.errors import InvalidInput, NotFound
from orchestrator.registry.models import TERMINAL_STATES, Adapter, Job, JobEvent, MetricPoint, Usage
from orchestrator.services._tx import readonly
from orchestrator.services.fine_tuning import default_lr
from orchestrator.services.jobs import job_or_404
from orchestrator.services.model_names import model_name
from orchestrator.services.tenants import tenant_or_404

RESULT_PREFIX = "result-"
BUILTIN_FILES = {"e2e": "builtin-e2e"}  # other built-in tasks: builtin-glue-<task>
LEVELS = {"failed": "error", "requeued": "warn", "tracking": "warn"}
# The event data a tenant sees (workers, paths and leases are the operator's).
SHOWN_DATA = ("step", "total", "loss", "attempt", "adapter_id", "metrics", "phase", "storage_over_quota")
# Events whose stored message names a worker: what the tenant reads instead.
MESSAGES = {
    "claimed": "Fine-tuning job started",
    "cancel_requested": "Cancel requested; the job stops at its next step",
    "pause_requested": "Pause requested; the job stops at its next checkpoint",
    "cancelled": "Fine-tuning job cancelled",
    "succeeded": "The job has successfully completed",
}
# A metric-history series -> the result file's column (OpenAI's names where they exist).
COLUMNS = {"loss": "train_loss", "lr": "learning_rate"}
SAFE_KEY = re.compile(r"^[^\"\\\x00-\x1f]{1,64}$")
# An absolute path of the operator's machines (two or more parts) in a message: only its last part shows.
PATH_RE = re.compile(r"(?<![\w.:/])/(?:[^\s'\"/:,;()]+/)+([^\s'\"/:,;()]*)")


def redacted(text: str) -> str:
    """`text` with every absolute path cut to its last part (`…/data.jsonl`): error messages and
    events name the worker's files, which are the operator's, not the tenant's."""
    return PATH_RE.sub(lambda m: "…/" + m.group(1), text)


def training_file(job: Job) -> str | None:
    if job.dataset_id is not None:
        return job.dataset_id
    if job.kind != "train":
        return None
    return BUILTIN_FILES.get(job.task, f"builtin-glue-{job.task}")


def _hyperparameters(spec: Mapping[str, Any]) -> dict[str, Any]:
    epochs, batch, lr = spec.get("epochs"), spec.get("batch_size"), spec.get("lr")
    base_lr = default_lr(spec)
    multiplier: Any = "auto"
    if isinstance(lr, int | float) and base_lr:
        multiplier = round(lr / base_lr, 6)
    return {"n_epochs": epochs if isinstance(epochs, int | float) else "auto",
            "batch_size": batch if isinstance(batch, int) else "auto",
            "learning_rate_multiplier": multiplier}


def _base_shown(job: Job) -> str:
    """The job's base model as a tenant may see it: an alias or hub id; a folder (an operator's
    CLI job) by its last part only, as model names spell it."""
    if is_folder_name(job.base_model):
        return PurePath(job.base_model).name or "local"
    return job.base_model


def _ts(value: Any) -> int | None:
    return int(value.timestamp()) if value is not None else None


def _estimated_finish(job: Job) -> int | None:
    """From the pace so far: started + elapsed x total / step (running jobs with progress)."""
    step, total = job.progress_step, job.progress_total
    if job.state != "running" or not step or not total or job.started_at is None or job.heartbeat_at is None:
        return None
    elapsed = (job.heartbeat_at - job.started_at).total_seconds()
    return int(job.started_at.timestamp() + elapsed * total / step)


def _error(job: Job) -> dict[str, Any] | None:
    if job.state != "failed":
        return None
    return {"code": "job_failed", "message": redacted(job.error or "the job failed"), "param": None}


def job_object(job: Job, tenant_slug: str, adapter: Adapter | None = None, base: Adapter | None = None,
               trained_tokens: int | None = None) -> dict[str, Any]:
    """OpenAI's `fine_tuning.job` for a job row (its adapter once trained; the tenant's full
    fine-tune it trained on; the tokens it trained, once succeeded)."""
    hyper = _hyperparameters(job.spec)
    return {
        "id": job.id, "object": "fine_tuning.job", "created_at": _ts(job.created_at),
        "finished_at": _ts(job.finished_at) if job.state in TERMINAL_STATES else None,
        "model": model_name(base, tenant_slug) if base is not None else _base_shown(job),
        "fine_tuned_model": model_name(adapter, tenant_slug, job.suffix) if adapter is not None else None,
        "organization_id": tenant_slug, "status": job.state, "hyperparameters": hyper,
        "training_file": training_file(job), "validation_file": job.validation_dataset_id,
        "result_files": [RESULT_PREFIX + job.id] if job.state in TERMINAL_STATES else [],
        "trained_tokens": trained_tokens if job.state == "succeeded" else None,
        "error": _error(job), "estimated_finish": _estimated_finish(job), "seed": job.spec.get("seed"),
        "metadata": job.metadata_, "user_provided_suffix": job.suffix,
        # The tenant's opt-out, as it asked for it; a tracked job lists none (OpenAI's shape: the
        # integrations the job was created with).
        "integrations": [] if job.tracking else [{"type": "mlflow", "mlflow": {"enabled": False}}],
        "method": {"type": "supervised", "supervised": {"hyperparameters": hyper}},
        "lorafleet": {"method": job.method, "rank": job.rank, "task": job.task, "kind": job.kind},
    }


def _objects(session: Session, jobs: Sequence[Job], tenant_slug: str) -> list[dict[str, Any]]:
    """The job objects of a page: 3 queries whatever its size."""
    ids = [j.id for j in jobs]
    adapters = {a.job_id: a for a in session.scalars(select(Adapter).where(Adapter.job_id.in_(ids)))} \
        if ids else {}
    base_ids = {j.base_adapter_id for j in jobs if j.base_adapter_id}
    bases = {a.id: a for a in session.scalars(select(Adapter).where(Adapter.id.in_(base_ids)))} \
        if base_ids else {}
    done = [j.id for j in jobs if j.state == "succeeded"]
    tokens = dict(session.execute(select(Usage.job_id, func.sum(Usage.tokens)).where(Usage.job_id.in_(done))
                                  .group_by(Usage.job_id)).tuples().all()) if done else {}
    return [job_object(j, tenant_slug, adapters.get(j.id), bases.get(j.base_adapter_id or ""),
                       int(tokens.get(j.id) or 0)) for j in jobs]


def fine_tuning_job_or_404(session: Session, job_id: str, tenant: str) -> Job:
    """Inside a service: the tenant's job, or NotFound in the API's words (no CLI hint)."""
    try:
        return job_or_404(session, job_id, tenant)
    except NotFound:
        raise NotFound(f"no fine-tuning job {job_id[:80]!r}") from None


@readonly
def get_fine_tuning_job(session: Session, job_id: str, tenant: str) -> dict[str, Any]:
    job = fine_tuning_job_or_404(session, job_id, tenant)
    return _objects(session, [job], tenant)[0]


def created_job_object(session: Session, job: Job, tenant: str) -> dict[str, Any]:
    """The object of a job its caller has just created (the row the create returned): nothing has
    trained from it yet (no adapter, no usage), so it is read again only for the name of a full
    fine-tune it trains on. Reading every new job back cost a submit a transaction and 3 queries."""
    if job.base_adapter_id is None:
        return job_object(job, tenant)
    return get_fine_tuning_job(session, job.id, tenant)


def _metadata_filter(stmt: Select[Any], metadata: Mapping[str, str] | None) -> Select[Any]:
    for key, value in (metadata or {}).items():
        valid_value = isinstance(value, str) and len(value) <= 512
        if not (isinstance(key, str) and SAFE_KEY.match(key) and valid_value):
            raise InvalidInput(f"metadata[{str(key)[:64]}]: a filter is a key of 1 to 64 characters (no "
                               f"quotes or backslashes) and a value of at most 512")
        stmt = stmt.where(Job.metadata_[key].as_string() == value)
    return stmt


@readonly
def list_fine_tuning_jobs(session: Session, tenant: str, *, after: str | None = None, limit: int = 20,
                          metadata: Mapping[str, str] | None = None) -> tuple[list[dict[str, Any]], bool]:
    """(a page of the tenant's jobs newest first, whether more follow); the page starts after the
    job `after` (an id from an earlier page: NotFound if the tenant has none such); `metadata`:
    only jobs whose metadata holds every pair."""
    tenant_id = tenant_or_404(session, tenant).id
    # The tenant as a range and first in the order, not `tenant_id = :id`: an equality drops it from
    # the sort key, and PostgreSQL may then walk ix_jobs_created_at backward and filter, reading
    # every newer job of the other tenants first (40,000 rows for one page in bench/RESULTS.md).
    # Ordered by tenant too, only ix_jobs_tenant_id_created_at_id yields the page in order.
    stmt = select(Job).where(Job.tenant_id >= tenant_id, Job.tenant_id <= tenant_id)
    if after is not None:
        mark = session.execute(select(Job.created_at, Job.id).where(Job.tenant_id == tenant_id,
                                                                    Job.id == after)).first()
        if mark is None:
            raise NotFound(f"no fine-tuning job {after[:80]!r} to list after")
        stmt = stmt.where(tuple_(Job.created_at, Job.id) < tuple_(mark.created_at, mark.id))
    stmt = _metadata_filter(stmt, metadata)
    rows = list(session.scalars(stmt.order_by(Job.tenant_id.desc(), Job.created_at.desc(), Job.id.desc())
                                .limit(limit + 1)))
    return _objects(session, rows[:limit], tenant), len(rows) > limit


def _event_object(event: JobEvent) -> dict[str, Any]:
    data = {k: v for k, v in (event.data or {}).items() if k in SHOWN_DATA}
    metrics = event.kind == "progress" and data.get("step") is not None
    message = MESSAGES.get(event.kind) or redacted(event.message)
    if metrics:
        data = {"step": data["step"], "total_steps": data.get("total"), "train_loss": data.get("loss")}
        loss = data["train_loss"]
        message = f"Step {data['step']}/{data['total_steps']}" + (
            f": training loss={loss:.4f}" if isinstance(loss, int | float) else "")
    return {"id": str(event.id), "object": "fine_tuning.job.event", "created_at": _ts(event.ts),
            "level": LEVELS.get(event.kind, "info"), "message": message,
            "type": "metrics" if metrics else "message", "data": data}


def _after_id(after: str | None) -> int | None:
    if after is None:
        return None
    if not after.isdigit() or len(after) > 19:
        raise InvalidInput(f"after: an event id from an earlier page (digits; got {after[:40]!r})")
    return int(after)


def _events_page(session: Session, job: Job, after: str | None, limit: int, kinds: Sequence[str] | None
                 ) -> tuple[list[JobEvent], bool]:
    stmt = select(JobEvent).where(JobEvent.job_id == job.id, JobEvent.tenant_id == job.tenant_id)
    if kinds is not None:
        stmt = stmt.where(JobEvent.kind.in_(kinds))
    after_id = _after_id(after)
    if after_id is not None:
        stmt = stmt.where(JobEvent.id < after_id)
    rows = list(session.scalars(stmt.order_by(JobEvent.id.desc()).limit(limit + 1)))
    return rows[:limit], len(rows) > limit


@readonly
def fine_tuning_events(session: Session, job_id: str, tenant: str, *, after: str | None = None,
                       limit: int = 20) -> tuple[list[dict[str, Any]], bool]:
    """(a page of the job's events newest first, whether older ones follow), older than the event
    `after` (an id from an earlier page)."""
    job = fine_tuning_job_or_404(session, job_id, tenant)
    rows, more = _events_page(session, job, after, limit, None)
    return [_event_object(e) for e in rows], more


@readonly
def fine_tuning_checkpoints(session: Session, job_id: str, tenant: str, *, after: str | None = None,
                            limit: int = 10) -> tuple[list[dict[str, Any]], bool]:
    """(a page of the job's checkpoints newest first, whether older ones follow), as OpenAI's
    `fine_tuning.job.checkpoint` objects, from its `checkpoint` events (the training loss at
    each step from its metrics history)."""
    job = fine_tuning_job_or_404(session, job_id, tenant)
    rows, more = _events_page(session, job, after, limit, ("checkpoint",))
    steps = [int((e.data or {}).get("step") or 0) for e in rows]
    query = select(MetricPoint.step, MetricPoint.value).where(
        MetricPoint.job_id == job.id, MetricPoint.name == "loss", MetricPoint.step.in_(steps))
    losses = dict(session.execute(query).tuples().all()) if steps else {}
    name = f"ft:{_base_shown(job)}:{tenant}:{job.suffix or job.task}:{job.id}"
    out = []
    for event, step in zip(rows, steps, strict=True):
        metrics: dict[str, Any] = {"step": step}
        if step in losses:
            metrics["train_loss"] = losses[step]
        out.append({"id": str(event.id), "object": "fine_tuning.job.checkpoint", "created_at": _ts(event.ts),
                    "fine_tuned_model_checkpoint": f"{name}:ckpt-step-{step}", "fine_tuning_job_id": job.id,
                    "metrics": metrics, "step_number": step})
    return out, more


def result_job_id(file_id: str) -> str | None:
    """The job whose result file `file_id` names (`result-<job id>`), else None."""
    return file_id.removeprefix(RESULT_PREFIX) if file_id.startswith(RESULT_PREFIX) else None


@readonly
def result_file(session: Session, file_id: str, tenant: str) -> tuple[dict[str, Any], str]:
    """(OpenAI's file object, its content) of a job's result file: the metrics history as CSV, one
    row per step (step, epoch, train_loss, learning_rate, then each evaluation's series).
    NotFound unless it is a finished job of the tenant's."""
    job_id = result_job_id(file_id)
    try:
        job = job_or_404(session, job_id or "", tenant)
    except (NotFound, InvalidInput):
        raise NotFound(f"no file {file_id[:80]!r}") from None
    if job.state not in TERMINAL_STATES:
        raise NotFound(f"no file {file_id[:80]!r} yet: job {job.id} is {job.state}")
    points = session.execute(select(MetricPoint.step, MetricPoint.epoch, MetricPoint.name, MetricPoint.value)
                             .where(MetricPoint.job_id == job.id, MetricPoint.tenant_id == job.tenant_id)
                             .order_by(MetricPoint.step)).all()
    series = sorted({p.name for p in points}, key=lambda n: (n not in COLUMNS, list(COLUMNS).index(n)
                                                             if n in COLUMNS else 0, n))
    rows: dict[int, dict[str, Any]] = {}
    for p in points:
        row = rows.setdefault(p.step, {"step": p.step, "epoch": round(p.epoch, 6)})
        row[COLUMNS.get(p.name, p.name)] = p.value
    out = io.StringIO()
    writer = csv.DictWriter(out, ["step", "epoch", *(COLUMNS.get(n, n) for n in series)], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows[s] for s in sorted(rows))
    content = out.getvalue()
    view = {"id": RESULT_PREFIX + job.id, "object": "file", "bytes": len(content.encode()),
            "created_at": _ts(job.finished_at or job.created_at), "filename": f"{job.id}-results.csv",
            "purpose": "fine-tune-results", "status": "processed"}
    return view, content
