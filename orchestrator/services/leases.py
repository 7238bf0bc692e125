"""The worker's side of a job: claim, heartbeat, finish (succeeded / failed / cancelled / requeued).

Claim: one atomic conditional UPDATE moves a job `queued → running` (lease owner and expiry,
attempts + 1) only if it is still queued and its tenant is under its running quota; zero rows
updated means "not yours" (duplicate delivery, cancelled, quota full) and the message is dropped.
Races: on PostgreSQL the tenant row is locked (`SELECT … FOR UPDATE`) before the UPDATE, so two
claims of one tenant are serialised and the running count the UPDATE reads (a fresh READ
COMMITTED snapshot) includes the other's committed claim; two claims of the *same* job are
serialised by its row lock and the loser re-checks `state = 'queued'` and updates nothing. On
SQLite every writing transaction is `BEGIN IMMEDIATE`, so claims run one at a time.

After the claim, every call names the worker: the job must still be `running` and leased to it,
or LeaseLost is raised (the reconciler took the job back after the lease expired, or it ended):
the worker must stop and write nothing more.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from lora_engine.methods import PACKABLE_METHODS
from lora_engine.methods import method as method_entry
from orchestrator.dispatch import JobClass, job_class
from orchestrator.errors import InvalidInput, LeaseLost
from orchestrator.registry import repositories as repo
from orchestrator.registry.models import ADAPTER_JOB_KINDS, Adapter, Job, Metric, Usage, utcnow
from orchestrator.retries import Abort, has_attempts_left, released_budget
from orchestrator.services._tx import readonly, transactional
from orchestrator.services.enqueue import enqueue_job
from orchestrator.services.events import add_event
from orchestrator.services.webhook_outbox import job_ended

# Progress events: at most one per PROGRESS_EVENT_INTERVAL_S per job, plus the first and the last
# step. The lease and the job's progress columns are updated on every heartbeat regardless, so
# `job show` is always current while the event log stays small (a 10k-step job at 10 steps/s
# writes ~200 events, not 10k).
PROGRESS_EVENT_INTERVAL_S = 5.0

USAGE_FIELDS = ("device", "device_seconds", "wall_seconds", "peak_memory_bytes", "examples", "tokens",
                "activation_memory_bytes", "step_seconds")


def _lease(now: datetime, lease_seconds: float) -> datetime:
    if lease_seconds <= 0:
        raise InvalidInput(f"lease_seconds must be > 0 (got {lease_seconds})")
    return now + timedelta(seconds=lease_seconds)


@transactional
def claim_job(
    session: Session, job_id: str, worker_id: str, lease_seconds: float, now: datetime | None = None,
    devices: int = 1, device_kind: str = "cpu",
) -> Job | None:
    """Claim a queued job for `worker_id`, which owns `devices` devices of `device_kind` ("cpu",
    "cuda"); the running Job, or None when it is not claimable (unknown, not queued, asking for more
    devices than the worker owns or a device it lacks, or its tenant at quota: it stays queued for
    a later dispatch)."""
    now = now or utcnow()
    expires = _lease(now, lease_seconds)
    tenant_id = session.scalar(select(Job.tenant_id).where(Job.id == job_id))
    if tenant_id is None:
        return None
    tenant = repo.lock_tenant(session, tenant_id)
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, repo.claimable(devices, device_kind))
        .values(
            state="running", lease_owner=worker_id, lease_expires_at=expires, attempts=Job.attempts + 1,
            started_at=now, heartbeat_at=now, cancel_requested=False, pause_requested=False, error=None,
            progress_step=None, progress_total=None, last_loss=None, progress_event_at=None,
        )
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:
        return None
    if tenant is not None:
        tenant.last_claimed_at = now  # fair share: this tenant was just served
    job = session.get(Job, job_id, populate_existing=True)
    assert job is not None
    add_event(session, job, "claimed", f"claimed by {worker_id} (attempt {job.attempts}/{job.max_attempts})",
              {"worker": worker_id, "attempt": job.attempts, "lease_expires_at": expires.isoformat()}, ts=now)
    return job


def claim_next(
    session: Session, worker_id: str, lease_seconds: float, now: datetime | None = None, tries: int = 20,
    devices: int = 1, device_kind: str = "cpu", message: str | None = None,
) -> Job | None:
    """Claim the next job a worker owning `devices` devices can run, by fair share: the tenant
    with the fewest running jobs first, then priority (high first), then age. None when nothing
    is claimable. Each attempt is its own transaction (a candidate taken by another worker in
    between is skipped).

    `message`: the job id of the message that woke the worker. Only jobs of that job's class (as
    many devices, and needing CUDA or not alike) are claimed: the message came from that class's
    queue (`orchestrator.dispatch.job_queue`), and taking a job of another class would leave this
    class's job without a message while the other job's message wakes a worker for nothing."""
    job = message_class(session, message) if message else None
    candidates = _candidates(session, tries, devices, device_kind, job)
    for job_id in candidates:
        claimed = claim_job(session, job_id, worker_id, lease_seconds, now=now, devices=devices,
                            device_kind=device_kind)
        if claimed is not None:
            return claimed
    return None


@readonly
def _candidates(session: Session, limit: int, devices: int, device_kind: str,
                job: JobClass | None) -> list[str]:
    return [job_id for job_id, _ in repo.claim_candidates(session, limit=limit, devices=devices,
                                                           device_kind=device_kind, job_class=job)]


@readonly
def message_class(session: Session, job_id: str) -> JobClass | None:
    """The class of the job of a message (`dispatch.job_class`): the queue it came on (None: no
    such job, a stray message, which may wake the worker for any job it can run)."""
    row = session.execute(select(Job.devices, Job.quantize).where(Job.id == job_id)).first()
    return job_class(row[0], row[1]) if row is not None else None


def claim_partners(
    session: Session, worker_id: str, lease_seconds: float, *, base_model: str, limit: int,
    accept: Callable[[Job], bool] = lambda job: True, now: datetime | None = None,
) -> list[Job]:
    """Claim up to `limit` more queued training jobs on `base_model` with a packable method
    (`lora_engine.methods.PACKABLE_METHODS`, the SQL side of `lora_engine.packing`'s rule), in the
    same fair-share order and under the same quotas as `claim_next`, each its own claim (lease,
    attempt, event). `accept` (a job not yet claimed) narrows the candidates further."""
    claimed: list[Job] = []
    for job_id in _partner_candidates(session, base_model, PACKABLE_METHODS, limit * 4 + 4):
        if len(claimed) >= limit:
            break
        candidate = repo.job(session, job_id)
        if candidate is None or not accept(candidate):
            continue
        job = claim_job(session, job_id, worker_id, lease_seconds, now=now)
        if job is not None:
            claimed.append(job)
    return claimed


@readonly
def _partner_candidates(session: Session, base_model: str, methods: tuple[str, ...], limit: int) -> list[str]:
    return [job_id for job_id, _ in repo.claim_candidates(session, limit=limit, base_model=base_model,
                                                           kind="train", methods=methods)]


@transactional
def record_packed(session: Session, job_id: str, worker_id: str, partners: Sequence[str],
                  limits: Mapping[str, Any] | None = None) -> None:
    """A `packed` event: the jobs this one shared training rounds with (its usage is its token
    share), and the pack's limits (K, token budget, and the memory probe they came from)."""
    job = owned_job(session, job_id, worker_id)
    data: dict[str, Any] = {"packed_with": sorted(partners)}
    if limits is not None:
        data["limits"] = dict(limits)
    add_event(session, job, "packed", f"trained packed with {len(partners)} other job(s)", data)


@readonly
def unclaimable_reason(session: Session, job_id: str, devices: int = 1, device_kind: str = "cpu") -> str:
    """Why a claim of this job by a worker owning `devices` of `device_kind` found nothing (for
    the worker's log).
    Whether the quota holds it back is the claim's own rule (`repo.claimable`), asked of the
    registry; the counts are only the message's figures."""
    job = repo.job(session, job_id)
    if job is None:
        return f"no job {job_id}"
    if job.state != "queued":
        return f"job {job_id} is {job.state}"
    if job.devices > devices:
        return f"job {job_id} needs {job.devices} devices; this worker owns {devices}"
    if job.quantize is not None and device_kind != "cuda":
        return (f"job {job_id} trains on an {job.quantize}-quantised base, which needs a CUDA worker; "
                f"this worker's device is {device_kind}")
    if repo.is_claimable(session, job_id, devices, device_kind):
        return f"job {job_id} is queued and claimable"
    tenant = repo.tenant_by_id(session, job.tenant_id)
    running = repo.running_count(session, job.tenant_id)
    limit = tenant.max_running if tenant is not None else "?"
    return (f"tenant {tenant.slug if tenant else job.tenant_id} is at its quota ({running}/{limit} running"
            + (f"; this job needs {job.devices}" if job.devices > 1 else "") + ")")


def _storage_over(session: Session, tenant_id: str) -> str | None:
    from orchestrator.services.quotas import storage_over

    tenant = repo.tenant_by_id(session, tenant_id)
    if tenant is None or tenant.max_storage_bytes is None:
        return None
    return storage_over(tenant, repo.storage_bytes(session, tenant_id))


def owned_job(session: Session, job_id: str, worker_id: str) -> Job:
    """The job, row-locked, if it is running and leased to `worker_id`; else LeaseLost."""
    job = session.scalars(select(Job).where(Job.id == job_id).with_for_update()).one_or_none()
    if job is None:
        raise LeaseLost(f"job {job_id} does not exist")
    if job.state != "running" or job.lease_owner != worker_id:
        owner = f"leased to {job.lease_owner}" if job.lease_owner else "not leased"
        raise LeaseLost(f"worker {worker_id} lost job {job_id}: it is {job.state}, {owner}")
    return job


@transactional
def heartbeat(
    session: Session,
    job_id: str,
    worker_id: str,
    step: int,
    total: int | None,
    loss: float | None,
    lease_seconds: float,
    now: datetime | None = None,
    event_interval_s: float = PROGRESS_EVENT_INTERVAL_S,
    grad_norm: float | None = None,
) -> Abort | None:
    """Extend the lease, record progress; why training must stop, if it must: Abort.CANCEL (a
    cancel was requested; it wins over a pause), Abort.PAUSE (checkpoint, then `paused`), else None.

    Writes a `progress` event (step, total, loss, and the step's gradient norm before clipping when
    the work trains) on the first heartbeat, the last step, and otherwise at most once per
    `event_interval_s`. LeaseLost if the job is no longer this worker's.
    """
    now = now or utcnow()
    job = owned_job(session, job_id, worker_id)
    job.lease_expires_at = _lease(now, lease_seconds)
    job.heartbeat_at = now
    job.progress_step, job.progress_total = step, total
    if loss is not None:
        job.last_loss = float(loss)
    last = job.progress_event_at
    last_step = total is not None and step >= total
    if last is None or last_step or (now - last).total_seconds() >= event_interval_s:
        job.progress_event_at = now
        message = (f"step {step}/{total}" + (f" loss {loss:.4f}" if loss is not None else "")
                   + (f" grad norm {grad_norm:.4g}" if grad_norm is not None else ""))
        data = {"step": step, "total": total, "loss": loss}
        if grad_norm is not None:
            data["grad_norm"] = float(grad_norm)
        add_event(session, job, "progress", message, data, ts=now)
    if job.cancel_requested:
        return Abort.CANCEL
    return Abort.PAUSE if job.pause_requested else None


@transactional
def record_checkpoint(
    session: Session, job_id: str, worker_id: str, step: int, path: str | None = None
) -> None:
    """A `checkpoint` event (the recipe saved one at `step`: a retry resumes from it)."""
    job = owned_job(session, job_id, worker_id)
    add_event(session, job, "checkpoint", f"checkpoint at step {step}", {"step": step, "path": path})


PHASE_MESSAGES = {"evaluating": "evaluating", "saving": "saving the adapter"}


@transactional
def record_phase(session: Session, job_id: str, worker_id: str, phase: str, step: int) -> None:
    """A `phase` event: the work between optimizer steps that began at `step` (evaluating,
    saving); the next progress means training again."""
    if phase not in PHASE_MESSAGES:
        raise InvalidInput(f"unknown phase {phase!r}; allowed: {', '.join(PHASE_MESSAGES)}")
    job = owned_job(session, job_id, worker_id)
    add_event(session, job, "phase", f"{PHASE_MESSAGES[phase]} at step {step}",
              {"phase": phase, "step": step})


@transactional
def record_resume(session: Session, job_id: str, worker_id: str, step: int, path: str | None = None) -> None:
    """A `resumed` event: this attempt continues from the checkpoint at `step`."""
    job = owned_job(session, job_id, worker_id)
    add_event(session, job, "resumed", f"resumed from the checkpoint at step {step}",
              {"step": step, "path": path, "attempt": job.attempts})


@dataclass(frozen=True)
class AdapterRecord:
    """What the worker knows about the adapter it wrote (base model, task, method and rank are
    taken from the job; lineage from the job's init_from_adapter_id)."""

    id: str
    path: str
    sha256: str
    bytes: int
    trainable_params: int
    total_params: int


@dataclass(frozen=True)
class UsageRecord:
    """What one attempt of a job consumed (one `usage` row per attempt)."""

    device: str = "cpu"
    device_seconds: float = 0.0
    wall_seconds: float = 0.0
    peak_memory_bytes: int | None = None
    examples: int = 0
    tokens: int = 0
    activation_memory_bytes: int | None = None  # peak minus the memory once the model was loaded
    step_seconds: float | None = None  # mean device time of the attempt's optimizer steps

    @classmethod
    def of_run(cls, stats: Any, devices: int = 1) -> UsageRecord:
        """What a run cost, from the engine's run statistics (`lora_engine.recipe.RunStats`, or
        any object with its `device`, `device_s`, `wall_s`, `peak_mem_bytes`, `examples`, `tokens`,
        and optionally `activation_mem_bytes`, `step_s`). A run across `devices` > 1 held every one
        of them for its whole wall time: it bills N × wall."""
        device_s = devices * float(stats.wall_s) if devices > 1 else float(stats.device_s)
        return cls(device=stats.device, device_seconds=device_s,
                   wall_seconds=float(stats.wall_s), peak_memory_bytes=stats.peak_mem_bytes,
                   examples=int(stats.examples), tokens=int(stats.tokens),
                   activation_memory_bytes=getattr(stats, "activation_mem_bytes", None),
                   step_seconds=getattr(stats, "step_s", None))

    @classmethod
    def coerce(cls, usage: UsageRecord | Mapping[str, Any]) -> UsageRecord:
        """A typed record from itself or from a mapping of its fields (InvalidInput on others)."""
        if isinstance(usage, UsageRecord):
            return usage
        unknown = sorted(set(usage) - set(USAGE_FIELDS))
        if unknown:
            raise InvalidInput(f"unknown usage fields {unknown}; allowed: {', '.join(USAGE_FIELDS)}")
        peak, activation, step = (usage.get(k) for k in ("peak_memory_bytes", "activation_memory_bytes",
                                                          "step_seconds"))
        return cls(
            device=str(usage.get("device", "cpu")),
            device_seconds=float(usage.get("device_seconds", 0.0)),
            wall_seconds=float(usage.get("wall_seconds", 0.0)),
            peak_memory_bytes=None if peak is None else int(peak),
            examples=int(usage.get("examples", 0)),
            tokens=int(usage.get("tokens", 0)),
            activation_memory_bytes=None if activation is None else int(activation),
            step_seconds=None if step is None else float(step),
        )


UsageInput = UsageRecord | Mapping[str, Any] | None


def _usage_row(job: Job, usage: UsageInput) -> Usage | None:
    if usage is None:
        return None
    u = UsageRecord.coerce(usage)
    return Usage(
        job_id=job.id, tenant_id=job.tenant_id, attempt=job.attempts, device=u.device,
        device_seconds=u.device_seconds, wall_seconds=u.wall_seconds, peak_memory_bytes=u.peak_memory_bytes,
        examples=u.examples, tokens=u.tokens, activation_memory_bytes=u.activation_memory_bytes,
        step_seconds=u.step_seconds,
    )


def _end(session: Session, job: Job, state: str, now: datetime, error: str | None = None) -> None:
    """The job reaches terminal `state`: its webhook event is written in this same transaction."""
    job.state, job.finished_at, job.error = state, now, error
    job.lease_owner = job.lease_expires_at = None
    job.pause_requested = False  # a pause that came too late: the job ended first
    job_ended(session, job)


def _pause_if_requested(session: Session, job: Job, reason: str, now: datetime, *, release: bool) -> bool:
    """A job whose pause was requested goes `paused` where it would go back to the queue: nothing
    claims it until its tenant resumes it (from its last checkpoint). `release`: the worker stopped
    for the pause, so the attempt is given back, as for a graceful shutdown (an attempt that failed
    meanwhile counts as it would have)."""
    if not job.pause_requested:
        return False
    step = job.progress_step
    job.state, job.pause_requested, job.error = "paused", False, None
    job.lease_owner = job.lease_expires_at = None
    job.dispatched_at, job.dispatch_count = None, 0
    if release:
        job.max_attempts = released_budget(job.max_attempts)
    where = f" at step {step}" if step is not None else ""
    add_event(session, job, "paused", f"paused{where} ({reason})", {"step": step, "attempt": job.attempts},
              ts=now)
    return True


def _add_metrics(
    session: Session, job: Job, adapter_id: str | None, metrics: Mapping[str, Mapping[str, float]],
    source: str, now: datetime,
) -> None:
    for split, values in metrics.items():
        for name, value in values.items():
            session.add(Metric(job_id=job.id, adapter_id=adapter_id, tenant_id=job.tenant_id, split=split,
                               name=name, value=float(value), source=source, created_at=now))


def _check_outcome(
    job: Job, adapter: AdapterRecord | None, reevaluated: Mapping[str, Any] | None
) -> None:
    """What a job of each kind must hand back: a training or merge job an adapter; an untuned
    evaluation nothing but metrics; a re-evaluation the scores of the adapters its spec lists."""
    if job.kind in ADAPTER_JOB_KINDS and adapter is None:
        raise InvalidInput(f"job {job.id} is a {job.kind} job: it must finish with an adapter")
    if job.kind not in ADAPTER_JOB_KINDS and adapter is not None:
        raise InvalidInput(f"job {job.id} is a {job.kind} job: it makes no adapter")
    if job.kind == "reevaluate":
        from orchestrator.services.reevaluation import reevaluate_adapter_ids

        listed = set(reevaluate_adapter_ids(job.spec))
        unknown = sorted(set(reevaluated or {}) - listed)
        if unknown:
            raise InvalidInput(f"job {job.id} re-evaluates {sorted(listed)}; not {unknown}")
    elif reevaluated:
        raise InvalidInput(f"job {job.id} is a {job.kind} job: only a reevaluate job scores adapters")


@transactional
def finish_job_success(
    session: Session,
    job_id: str,
    worker_id: str,
    adapter: AdapterRecord | None,
    metrics: Mapping[str, Mapping[str, float]],
    usage: UsageInput = None,
    now: datetime | None = None,
    reevaluated: Mapping[str, Mapping[str, Mapping[str, float]]] | None = None,
) -> Adapter | None:
    """Record what the job produced and mark it `succeeded`, all in one transaction:
    - train: the adapter, its metrics ({split: {name: value}}, source 'job') and usage;
    - evaluate (untuned baseline): its metrics with no adapter (adapter_id NULL);
    - reevaluate: `reevaluated` {adapter_id: {split: {name: value}}}, one set of rows per adapter
      scored (source 'reevaluation'); `metrics` should be empty.
    Returns the Adapter row (None for the kinds that train none). LeaseLost if not ours."""
    now = now or utcnow()
    job = owned_job(session, job_id, worker_id)
    _check_outcome(job, adapter, reevaluated)
    row = None
    if adapter is not None:
        row = Adapter(
            id=adapter.id, tenant_id=job.tenant_id, job_id=job.id, path=str(adapter.path),
            sha256=adapter.sha256, bytes=int(adapter.bytes), trainable_params=int(adapter.trainable_params),
            total_params=int(adapter.total_params), base_model=job.base_model, task=job.task,
            method=job.method, rank=job.rank, stored_rank=method_entry(job.method).stored_rank(job.rank),
            parent_adapter_id=job.init_from_adapter_id, created_at=now,
        )
        session.add(row)
        session.flush()  # the adapter must exist before metrics (and parent links) reference it
        if job.kind == "merge":
            from orchestrator.services.adapter_merging import record_parents

            record_parents(session, job, row)
    _add_metrics(session, job, row.id if row is not None else None, metrics, "job", now)
    for adapter_id, scored in (reevaluated or {}).items():
        _add_metrics(session, job, adapter_id, scored, "reevaluation", now)
    usage_row = _usage_row(job, usage)
    if usage_row is not None:
        session.add(usage_row)
    _end(session, job, "succeeded", now)
    summary = {split: dict(values) for split, values in metrics.items()}
    if row is not None:
        # The adapter is kept even past the storage quota (the work is done and paid for); the
        # event says so, and the tenant's next submissions and uploads are refused.
        over = _storage_over(session, job.tenant_id)
        data: dict[str, Any] = {"adapter_id": row.id, "metrics": summary}
        message = f"adapter {row.id} ({row.bytes} bytes)"
        if job.kind == "merge":
            from orchestrator.services.adapter_merging import merge_parent_ids

            data["parents"] = merge_parent_ids(job.spec)
            message += f", merged from {len(data['parents'])} adapters ({job.spec.get('how')})"
        if over:
            data["storage_over_quota"] = True
            message += f"; {over}"
        add_event(session, job, "succeeded", message, data, ts=now)
    elif job.kind == "reevaluate":
        add_event(session, job, "succeeded", f"re-evaluated {len(reevaluated or {})} adapters",
                  {"adapter_ids": sorted(reevaluated or {})}, ts=now)
    else:
        add_event(session, job, "succeeded", "evaluated the untuned base model", {"metrics": summary}, ts=now)
    return row


@transactional
def fail_job(
    session: Session, job_id: str, worker_id: str, reason: str, usage: UsageInput = None,
    now: datetime | None = None,
) -> Job:
    """A permanent failure (bad data, invalid config...): `failed` with the reason in the job and
    its event. LeaseLost if not ours."""
    now = now or utcnow()
    job = owned_job(session, job_id, worker_id)
    usage_row = _usage_row(job, usage)
    if usage_row is not None:
        session.add(usage_row)
    _end(session, job, "failed", now, reason)
    add_event(session, job, "failed", reason, {"attempt": job.attempts}, ts=now)
    return job


@transactional
def mark_cancelled(
    session: Session, job_id: str, worker_id: str, step: int | None = None,
    usage: UsageInput = None, now: datetime | None = None,
) -> Job:
    """The worker stopped on a cancel request: `cancelled`. LeaseLost if not ours."""
    now = now or utcnow()
    job = owned_job(session, job_id, worker_id)
    usage_row = _usage_row(job, usage)
    if usage_row is not None:
        session.add(usage_row)
    _end(session, job, "cancelled", now)
    where = f" at step {step}" if step is not None else ""
    add_event(session, job, "cancelled", f"stopped by {worker_id}{where}", {"step": step}, ts=now)
    return job


def _cancel_if_requested(session: Session, job: Job, reason: str, now: datetime) -> bool:
    """A job whose cancel was requested ends `cancelled` where it would go back to the queue."""
    if not job.cancel_requested:
        return False
    _end(session, job, "cancelled", now)
    add_event(session, job, "cancelled", f"cancelled (cancel requested; {reason})",
              {"attempt": job.attempts}, ts=now)
    return True


def _back_to_queue(job: Job, reason: str) -> None:
    job.state, job.error = "queued", reason
    job.lease_owner = job.lease_expires_at = None
    job.dispatched_at, job.dispatch_count = None, 0


def requeue_or_fail(session: Session, job: Job, reason: str, now: datetime, *, release: bool = False) -> str:
    """Back to the queue while attempts remain, else failed; returns the new state.

    A job whose cancel was requested is cancelled instead: no requeue revives it; one whose pause
    was requested is paused (its worker stopped at a checkpoint for it, or was lost meanwhile). `release`: the
    worker handed the job back on a graceful shutdown, so the attempt does not count.
    """
    if _cancel_if_requested(session, job, reason, now):
        return "cancelled"
    if _pause_if_requested(session, job, reason, now, release=release):
        return "paused"
    if release:
        job.max_attempts = released_budget(job.max_attempts)
    if has_attempts_left(job.attempts, job.max_attempts):
        _back_to_queue(job, reason)
        add_event(session, job, "requeued", f"{reason} (attempt {job.attempts}/{job.max_attempts})",
                  {"attempt": job.attempts, "released": release, "step": job.progress_step}, ts=now)
        return "queued"
    reason = f"{reason}; gave up after {job.attempts} attempt(s)"
    _end(session, job, "failed", now, reason)
    add_event(session, job, "failed", reason, {"attempt": job.attempts}, ts=now)
    return "failed"


@transactional
def requeue_job(
    session: Session, job_id: str, worker_id: str, reason: str, usage: UsageInput = None,
    now: datetime | None = None, *, release: bool = False, retry_in: float | None = None,
) -> str:
    """A transient failure (device lost, OOM, a dropped connection...): back to `queued` while
    attempts < max_attempts (the retry resumes from the last checkpoint), else `failed`; a job
    with a cancel requested ends `cancelled`. `release=True`: a graceful shutdown handed it back,
    which uses no attempt. A requeued job's message is sent `retry_in` seconds after the commit
    (`orchestrator.services.enqueue`). Returns the new state. LeaseLost if not ours."""
    now = now or utcnow()
    job = owned_job(session, job_id, worker_id)
    usage_row = _usage_row(job, usage)
    if usage_row is not None:
        session.add(usage_row)
    state = requeue_or_fail(session, job, reason, now, release=release)
    if state == "queued":
        enqueue_job(session, job_id, retry_in)
    return state


@transactional
def return_job(
    session: Session, job_id: str, worker_id: str, reason: str, now: datetime | None = None
) -> str:
    """The worker's own environment failed the attempt, not the job (`retries`: worker fault):
    back to `queued` at once with the claim's attempt given back (`attempts` as before the claim,
    no usage row: the tenant does not pay for a broken worker), and a `requeued` event that says
    why. A job whose cancel was requested is cancelled instead. Returns the new state. LeaseLost
    if not ours."""
    now = now or utcnow()
    job = owned_job(session, job_id, worker_id)
    if _cancel_if_requested(session, job, reason, now):
        return "cancelled"
    job.attempts -= 1
    if _pause_if_requested(session, job, reason, now, release=False):  # its attempt given back above
        return "paused"
    _back_to_queue(job, reason)
    add_event(session, job, "requeued", f"{reason} (the worker's fault, not the job's: attempt given back)",
              {"attempt": job.attempts, "released": False, "worker_fault": True, "worker": worker_id,
               "step": job.progress_step}, ts=now)
    enqueue_job(session, job_id)
    return "queued"
