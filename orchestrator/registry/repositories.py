"""Queries on the registry. Tenant filtering lives here, never ad hoc in callers.

Every function that reads tenant-owned rows takes `tenant_id`: None means "all tenants" (the
operator's view), a value restricts the result to that tenant, so a row of another tenant is
simply not found. Functions only read or stage changes; the services own transactions.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import Select, func, select, true
from sqlalchemy.orm import Session

from orchestrator.registry.models import Adapter, AdapterParent, Dataset, Job, JobEvent, Metric, Tenant, Usage

if TYPE_CHECKING:
    from orchestrator.dispatch import JobClass

T = TypeVar("T")


def _scoped(stmt: Select[Any], model: Any, tenant_id: str | None) -> Select[Any]:
    return stmt if tenant_id is None else stmt.where(model.tenant_id == tenant_id)


# ---- tenants ---------------------------------------------------------------------------------


def tenant_by_slug(session: Session, slug: str) -> Tenant | None:
    return session.scalars(select(Tenant).where(Tenant.slug == slug)).one_or_none()


def tenant_by_id(session: Session, tenant_id: str) -> Tenant | None:
    return session.get(Tenant, tenant_id)


def tenants(session: Session) -> Sequence[Tenant]:
    return session.scalars(select(Tenant).order_by(Tenant.slug)).all()


def tenant_slugs(session: Session, tenant_ids: Iterable[str]) -> dict[str, str]:
    ids = set(tenant_ids)
    if not ids:
        return {}
    rows = session.execute(select(Tenant.id, Tenant.slug).where(Tenant.id.in_(ids)))
    return {tid: slug for tid, slug in rows}


def job_suffixes(session: Session, job_ids: Iterable[str]) -> dict[str, str | None]:
    """{job id: its OpenAI suffix (None: none given)} of the given jobs."""
    ids = set(job_ids)
    if not ids:
        return {}
    return dict(session.execute(select(Job.id, Job.suffix).where(Job.id.in_(ids))).tuples().all())


def lock_tenant(session: Session, tenant_id: str) -> Tenant | None:
    """The tenant row with a row lock (PostgreSQL; SQLite's IMMEDIATE transaction already is one).

    The claim takes it so two workers cannot both see "1 of 2 running" and both start a job.
    `FOR NO KEY UPDATE`: claims exclude each other, but inserts of events/metrics whose foreign
    key points at the tenant (they take KEY SHARE) are not blocked.
    """
    return session.scalars(
        select(Tenant).where(Tenant.id == tenant_id).with_for_update(key_share=True)
    ).one_or_none()


# ---- jobs ------------------------------------------------------------------------------------


def job(session: Session, job_id: str, tenant_id: str | None = None) -> Job | None:
    stmt = _scoped(select(Job).where(Job.id == job_id), Job, tenant_id)
    return session.scalars(stmt).one_or_none()


def job_by_idempotency_key(session: Session, tenant_id: str, key: str) -> Job | None:
    stmt = select(Job).where(Job.tenant_id == tenant_id, Job.idempotency_key == key)
    return session.scalars(stmt).one_or_none()


def jobs(
    session: Session,
    tenant_id: str | None = None,
    state: str | None = None,
    limit: int | None = None,
    offset: int = 0,
) -> Sequence[Job]:
    """Newest first (`offset` rows skipped: paging)."""
    stmt = _scoped(select(Job), Job, tenant_id)
    if state is not None:
        stmt = stmt.where(Job.state == state)
    stmt = stmt.order_by(Job.created_at.desc(), Job.id)
    if limit is not None:
        stmt = stmt.limit(limit)
    if offset:
        stmt = stmt.offset(offset)
    return session.scalars(stmt).all()


def running_count(session: Session, tenant_id: str) -> int:
    """The tenant's share of its running quota in use: its running jobs, each counted by its devices."""
    stmt = select(func.coalesce(func.sum(Job.devices), 0)).where(Job.tenant_id == tenant_id,
                                                                 Job.state == "running")
    return int(session.scalar(stmt) or 0)


def queued_count(session: Session, tenant_id: str) -> int:
    stmt = select(func.count()).select_from(Job).where(Job.tenant_id == tenant_id, Job.state == "queued")
    return int(session.scalar(stmt) or 0)


# ---- the claim: the quota rule and fair share, in one place ------------------------------------
# A job is claimable when it is queued, the worker owns as many devices as it asks for, and its
# devices fit under its tenant's `max_running` (running jobs count their devices: a `devices: 2`
# job counts 2).
# Fair share orders candidates by: the tenant's running jobs (fewest first), then the tenant that
# was served longest ago (never first), then priority (high first), then age. The second key is
# what lets tenant B's 5 jobs start right after A's 200 were queued, even when every job ends
# before the next claim (so both tenants always show 0 running).


def running_subquery() -> Any:
    """Correlated scalar subquery: devices of the running jobs of the outer `jobs` row's tenant."""
    inner = Job.__table__.alias("running_jobs")
    return (
        select(func.coalesce(func.sum(inner.c.devices), 0))
        .where(inner.c.tenant_id == Job.tenant_id, inner.c.state == "running")
        .scalar_subquery()
    )


def under_running_quota(running: Any, max_running: Any, devices: Any = 1) -> Any:
    """The running quota, the one definition: a tenant's job of `devices` devices may start while
    the devices of the tenant's running jobs plus its own stay within `max_running` (SQL
    expressions, so the claim's WHERE applies it; one device each: fewer than `max_running` jobs)."""
    return running + devices <= max_running


def runs_on(device_kind: str) -> Any:
    """Jobs a worker whose device is `device_kind` ("cpu" or "cuda") can train: a job on a
    quantised base (`quantize`, bitsandbytes' 4-bit kernels) needs CUDA; every other job runs anywhere."""
    return true() if device_kind == "cuda" else Job.quantize.is_(None)


def of_class(job: JobClass) -> Any:
    """Jobs of this class (`orchestrator.dispatch.job_class`): as many devices, and needing CUDA
    (a quantised base, see `runs_on`) or not alike."""
    return (Job.devices == job.devices) & (Job.quantize.is_not(None) if job.cuda else Job.quantize.is_(None))


def claimable(devices: int = 1, device_kind: str = "cpu") -> Any:
    """The WHERE clause of a claim's conditional UPDATE on `jobs`: queued, asking for at most
    the `devices` the claiming worker owns and a device it has (`runs_on`), its tenant under
    quota with it."""
    max_running = select(Tenant.max_running).where(Tenant.id == Job.tenant_id).scalar_subquery()
    return ((Job.state == "queued") & (Job.devices <= devices) & runs_on(device_kind)
            & under_running_quota(running_subquery(), max_running, Job.devices))


def is_claimable(session: Session, job_id: str, devices: int = 1, device_kind: str = "cpu") -> bool:
    """Whether a claim of this job by a worker owning `devices` of `device_kind` would take it now
    (the claim's own WHERE clause, read only)."""
    return session.scalar(select(Job.id).where(Job.id == job_id, claimable(devices, device_kind))) is not None


def claim_candidates(
    session: Session, limit: int = 20, *, base_model: str | None = None, kind: str | None = None,
    methods: Sequence[str] | None = None, devices: int = 1, device_kind: str = "cpu",
    job_class: JobClass | None = None,
) -> Sequence[tuple[str, str]]:
    """(job_id, tenant_id) of jobs a worker owning `devices` of `device_kind` may claim, in
    fair-share order (see above); optionally only jobs on one base model, of one kind, with one
    of `methods` (a packed claim's partners), of `job_class` (`of_class`: the class of the queue
    the worker's message came from)."""
    running = (
        select(Job.tenant_id, func.count().label("n"), func.sum(Job.devices).label("busy"))
        .where(Job.state == "running")
        .group_by(Job.tenant_id)
        .subquery()
    )
    n_running = func.coalesce(running.c.n, 0)
    stmt = (
        select(Job.id, Job.tenant_id)
        .join(Tenant, Tenant.id == Job.tenant_id)
        .outerjoin(running, running.c.tenant_id == Job.tenant_id)
        .where(Job.state == "queued", Job.devices <= devices, runs_on(device_kind),
               under_running_quota(func.coalesce(running.c.busy, 0), Tenant.max_running, Job.devices),
               *([Job.base_model == base_model] if base_model is not None else []),
               *([Job.kind == kind] if kind is not None else []),
               *([Job.method.in_(list(methods))] if methods is not None else []),
               *([of_class(job_class)] if job_class is not None else []))
        .order_by(n_running, Tenant.last_claimed_at.is_not(None), Tenant.last_claimed_at,
                  Job.priority.desc(), Job.created_at, Job.id)
        .limit(limit)
    )
    return [(row[0], row[1]) for row in session.execute(stmt)]


def storage_bytes(session: Session, tenant_id: str) -> int:
    """Bytes of the tenant's live adapters and data sets (the storage quota's usage)."""
    adapters_b = select(func.coalesce(func.sum(Adapter.bytes), 0)).where(
        Adapter.tenant_id == tenant_id, Adapter.deleted_at.is_(None)).scalar_subquery()
    data_bytes = Dataset.bytes + func.coalesce(Dataset.validation_bytes, 0)
    datasets_b = select(func.coalesce(func.sum(data_bytes), 0)).where(
        Dataset.tenant_id == tenant_id, Dataset.deleted_at.is_(None)).scalar_subquery()
    return int(session.scalar(select(adapters_b + datasets_b)) or 0)


def largest_stored(session: Session, tenant_id: str, limit: int = 3) -> list[tuple[str, str, int]]:
    """("adapter" | "data set", id, bytes) of the tenant's largest live items (what to delete)."""
    adapters_q = (select(Adapter.id, Adapter.bytes)
                  .where(Adapter.tenant_id == tenant_id, Adapter.deleted_at.is_(None))
                  .order_by(Adapter.bytes.desc()).limit(limit))
    data_bytes = Dataset.bytes + func.coalesce(Dataset.validation_bytes, 0)
    datasets_q = select(Dataset.id, data_bytes).where(
        Dataset.tenant_id == tenant_id, Dataset.deleted_at.is_(None)).order_by(data_bytes.desc()).limit(limit)
    items = [("adapter", i, int(b)) for i, b in session.execute(adapters_q)]
    items += [("data set", i, int(b)) for i, b in session.execute(datasets_q)]
    return sorted(items, key=lambda item: -item[2])[:limit]


def device_seconds_since(session: Session, tenant_id: str, since: datetime) -> float:
    """Device-seconds the tenant's attempts recorded since `since` (the month's budget usage)."""
    stmt = select(func.coalesce(func.sum(Usage.device_seconds), 0.0)).where(
        Usage.tenant_id == tenant_id, Usage.created_at >= since)
    return float(session.scalar(stmt) or 0.0)


def throughput(session: Session, base_model: str) -> tuple[str, float, int] | None:
    """(device, examples per device-second, attempts measured) of earlier training on this base,
    for the device it ran on most recently; None when nothing was measured yet."""
    stmt = (
        select(Usage.device, func.sum(Usage.examples), func.sum(Usage.device_seconds), func.count(),
               func.max(Usage.created_at))
        .join(Job, Job.id == Usage.job_id)
        .where(Job.base_model == base_model, Usage.device_seconds > 0, Usage.examples > 0)
        .group_by(Usage.device)
        .order_by(func.max(Usage.created_at).desc())
        .limit(1)
    )
    row = session.execute(stmt).first()
    if row is None:
        return None
    return str(row[0]), float(row[1]) / float(row[2]), int(row[3])


def queued_not_dispatched_since(session: Session, cutoff: datetime) -> Sequence[Job]:
    """Queued jobs last dispatched (or, never dispatched, created) before `cutoff`; fair order."""
    stmt = (
        select(Job)
        .where(Job.state == "queued", func.coalesce(Job.dispatched_at, Job.created_at) < cutoff)
        .order_by(Job.priority.desc(), Job.created_at)
    )
    return session.scalars(stmt).all()


def running_with_lease_before(session: Session, cutoff: datetime) -> Sequence[Job]:
    stmt = select(Job).where(Job.state == "running", Job.lease_expires_at < cutoff).order_by(Job.created_at)
    return session.scalars(stmt).all()


# ---- events ----------------------------------------------------------------------------------


def events(
    session: Session, job_id: str, tenant_id: str | None = None, after_id: int | None = None
) -> Sequence[JobEvent]:
    stmt = _scoped(select(JobEvent).where(JobEvent.job_id == job_id), JobEvent, tenant_id)
    if after_id is not None:
        stmt = stmt.where(JobEvent.id > after_id)
    return session.scalars(stmt.order_by(JobEvent.id)).all()


# ---- adapters --------------------------------------------------------------------------------


def adapter(
    session: Session, adapter_id: str, tenant_id: str | None = None, include_deleted: bool = False
) -> Adapter | None:
    stmt = _scoped(select(Adapter).where(Adapter.id == adapter_id), Adapter, tenant_id)
    if not include_deleted:
        stmt = stmt.where(Adapter.deleted_at.is_(None))
    return session.scalars(stmt).one_or_none()


def adapter_of_job(session: Session, job_id: str) -> Adapter | None:
    return session.scalars(select(Adapter).where(Adapter.job_id == job_id)).one_or_none()


def adapters(
    session: Session,
    tenant_id: str | None = None,
    task: str | None = None,
    base_model: str | None = None,
    include_deleted: bool = False,
    lora_only: bool = False,
) -> Sequence[Adapter]:
    """Adapters oldest first; `lora_only` leaves out full fine-tunes (whole models, no LoRA)."""
    stmt = _scoped(select(Adapter), Adapter, tenant_id)
    if lora_only:
        stmt = stmt.where(Adapter.method != "full")
    if task is not None:
        stmt = stmt.where(Adapter.task == task)
    if base_model is not None:
        stmt = stmt.where(Adapter.base_model == base_model)
    if not include_deleted:
        stmt = stmt.where(Adapter.deleted_at.is_(None))
    return session.scalars(stmt.order_by(Adapter.created_at, Adapter.id)).all()


def adapter_parents(session: Session, adapter_ids: Iterable[str]) -> dict[str, list[str]]:
    """{adapter id: its merge parents' ids in the merge's order} for those of `adapter_ids` that
    were merged (the others are absent)."""
    ids = list(set(adapter_ids))
    if not ids:
        return {}
    rows = session.execute(select(AdapterParent.adapter_id, AdapterParent.parent_id)
                           .where(AdapterParent.adapter_id.in_(ids))
                           .order_by(AdapterParent.adapter_id, AdapterParent.position)).all()
    out: dict[str, list[str]] = {}
    for adapter_id, parent_id in rows:
        out.setdefault(adapter_id, []).append(parent_id)
    return out


# ---- data sets -------------------------------------------------------------------------------


def dataset(session: Session, dataset_id: str, tenant_id: str | None = None,
            include_deleted: bool = False) -> Dataset | None:
    stmt = _scoped(select(Dataset).where(Dataset.id == dataset_id), Dataset, tenant_id)
    if not include_deleted:
        stmt = stmt.where(Dataset.deleted_at.is_(None))
    return session.scalars(stmt).one_or_none()


def datasets(
    session: Session, tenant_id: str | None = None, include_deleted: bool = False
) -> Sequence[Dataset]:
    stmt = _scoped(select(Dataset), Dataset, tenant_id)
    if not include_deleted:
        stmt = stmt.where(Dataset.deleted_at.is_(None))
    return session.scalars(stmt.order_by(Dataset.created_at, Dataset.id)).all()


def datasets_by_sha256(session: Session, tenant_id: str, sha256: str) -> Sequence[Dataset]:
    stmt = select(Dataset).where(Dataset.tenant_id == tenant_id, Dataset.sha256 == sha256,
                                 Dataset.deleted_at.is_(None))
    return session.scalars(stmt).all()


def imported_adapter_by_sha256(session: Session, tenant_id: str, sha256: str) -> Adapter | None:
    """A live adapter of the tenant registered from files (no job) whose files hash to `sha256`."""
    stmt = select(Adapter).where(Adapter.tenant_id == tenant_id, Adapter.sha256 == sha256,
                                 Adapter.job_id.is_(None), Adapter.deleted_at.is_(None))
    return session.scalars(stmt.order_by(Adapter.created_at).limit(1)).first()


def active_jobs_of_dataset(session: Session, dataset_id: str) -> list[str]:
    # A paused job will run again: its data set must stay.
    uses = (Job.dataset_id == dataset_id) | (Job.validation_dataset_id == dataset_id)
    stmt = select(Job.id).where(uses, Job.state.in_(("queued", "running", "paused")))
    return list(session.scalars(stmt.order_by(Job.created_at)))


# ---- metrics and usage -----------------------------------------------------------------------


def metrics_of_job(
    session: Session, job_id: str, tenant_id: str | None = None
) -> dict[str, dict[str, float]]:
    """What the job itself measured ({split: {name: value}}, source 'job'); a reevaluate job's
    per-adapter scores are in `reevaluation_metrics_of_job`."""
    stmt = _scoped(select(Metric).where(Metric.job_id == job_id, Metric.source == "job"), Metric, tenant_id)
    out: dict[str, dict[str, float]] = {}
    for m in session.scalars(stmt.order_by(Metric.split, Metric.name)):
        out.setdefault(m.split, {})[m.name] = m.value
    return out


def reevaluation_metrics_of_job(
    session: Session, job_id: str, tenant_id: str | None = None
) -> dict[str, dict[str, dict[str, float]]]:
    """A reevaluate job's scores: {adapter_id: {split: {name: value}}}."""
    stmt = _scoped(select(Metric).where(Metric.job_id == job_id, Metric.source == "reevaluation"),
                   Metric, tenant_id)
    out: dict[str, dict[str, dict[str, float]]] = {}
    for m in session.scalars(stmt.order_by(Metric.adapter_id, Metric.split, Metric.name)):
        out.setdefault(str(m.adapter_id), {}).setdefault(m.split, {})[m.name] = m.value
    return out


def usage_of_job(session: Session, job_id: str, tenant_id: str | None = None) -> Sequence[Usage]:
    stmt = _scoped(select(Usage).where(Usage.job_id == job_id), Usage, tenant_id)
    return session.scalars(stmt.order_by(Usage.attempt)).all()


def job_state_counts(session: Session, tenant_id: str | None = None) -> dict[tuple[str, str], int]:
    """{(tenant_id, state): count}."""
    stmt = _scoped(select(Job.tenant_id, Job.state, func.count()), Job, tenant_id)
    return {(t, s): int(n) for t, s, n in session.execute(stmt.group_by(Job.tenant_id, Job.state))}


def adapter_counts(session: Session, tenant_id: str | None = None) -> dict[str, tuple[int, int]]:
    """{tenant_id: (live adapters, their bytes)}."""
    stmt = _scoped(
        select(Adapter.tenant_id, func.count(), func.coalesce(func.sum(Adapter.bytes), 0)), Adapter, tenant_id
    ).where(Adapter.deleted_at.is_(None))
    return {t: (int(n), int(b)) for t, n, b in session.execute(stmt.group_by(Adapter.tenant_id))}


def usage_totals(session: Session, tenant_id: str | None = None) -> dict[str, dict[str, float]]:
    """{tenant_id: {device_seconds, wall_seconds, examples, tokens}} summed over all attempts."""
    stmt = _scoped(
        select(
            Usage.tenant_id,
            func.sum(Usage.device_seconds),
            func.sum(Usage.wall_seconds),
            func.sum(Usage.examples),
            func.sum(Usage.tokens),
        ),
        Usage,
        tenant_id,
    )
    return {
        t: {"device_seconds": float(d or 0), "wall_seconds": float(w or 0),
            "examples": int(e or 0), "tokens": int(k or 0)}
        for t, d, w, e, k in session.execute(stmt.group_by(Usage.tenant_id))
    }
