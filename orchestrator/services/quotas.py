"""Per-tenant quotas checked at the door: queued jobs, the monthly device-hour budget, storage.

(Running jobs are limited by the claim, in `registry.repositories`.) Each refusal gives the
figures: the quota, what is used, what the request would add. Every path that adds queued jobs
(submit, batch, retry, re-evaluation) goes through `check_queued`, which counts under the
tenant's row lock: concurrent submissions of one tenant cannot both see room for one more job.
The device-hour budget counts the device-seconds recorded this calendar month (UTC); a submission
whose estimate exceeds what is left is refused, while running jobs are never stopped for the
budget (they were admitted).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy.orm import Session

from orchestrator.errors import QuotaExceeded
from orchestrator.registry import repositories as repo
from orchestrator.registry.models import Tenant, utcnow
from orchestrator.services._tx import readonly


def month_start(now: datetime | None = None) -> datetime:
    now = (now or utcnow()).astimezone(UTC)
    return now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def check_queued(session: Session, tenant: Tenant, adding: int = 1) -> None:
    """Refuse `adding` more queued jobs beyond the tenant's `max_queued`.

    Takes the tenant's row lock first (PostgreSQL `SELECT … FOR NO KEY UPDATE`, held until the
    transaction ends; the claim takes the same one), then counts: a concurrent submission of the
    same tenant waits for this one to commit, and its count (a fresh READ COMMITTED snapshot)
    includes the jobs this one queued. The tenant row is reloaded under the lock, so a quota
    changed meanwhile is the one applied. The storage and budget checks that follow in the same
    transaction are serialised by it too. SQLite: the writing transaction (`BEGIN IMMEDIATE`)
    already runs alone. A caller that adds jobs of several tenants checks them in tenant-id
    order, so two such transactions cannot deadlock.
    """
    session.refresh(tenant, with_for_update={"key_share": True})
    queued = repo.queued_count(session, tenant.id)
    if queued + adding > tenant.max_queued:
        raise QuotaExceeded(
            f"tenant {tenant.slug!r} may have {tenant.max_queued} queued job(s); it has {queued} and "
            f"this adds {adding}: wait for some to run, or raise it (`lorafleet tenant set-quota "
            f"{tenant.slug} --max-queued N`)")


def check_storage(session: Session, tenant: Tenant, adding_bytes: int | None) -> None:
    """Refuse what the storage quota (live adapters + data sets) has no room for: an upload of
    `adding_bytes`, or (None) a job, whose adapter's size is known only when it ends, once the
    tenant is at or over its quota. A finishing job is never refused: its adapter is kept and
    the tenant shows over quota (`storage_over`) until something is deleted."""
    limit = tenant.max_storage_bytes
    if limit is None:
        return
    used = repo.storage_bytes(session, tenant.id)
    if adding_bytes is None and used < limit:
        return
    if adding_bytes is not None and used + adding_bytes <= limit:
        return
    what = "a new job's adapter needs room" if adding_bytes is None else f"this adds {adding_bytes}"
    largest = ", ".join(f"{kind} {item_id[:8]} ({size} bytes)"
                        for kind, item_id, size in repo.largest_stored(session, tenant.id))
    raise QuotaExceeded(
        f"tenant {tenant.slug!r} may store {limit} bytes of adapters and data sets; {used} are used "
        f"and {what}: delete some (`lorafleet adapter delete ID`, `lorafleet dataset delete ID`"
        f"{'; largest: ' + largest if largest else ''}) or raise the quota "
        f"(`lorafleet tenant set-quota {tenant.slug} --max-storage-bytes N`)")


def storage_over(tenant: Tenant, used: int) -> str | None:
    """A warning when `used` bytes exceed the tenant's storage quota (None: within it)."""
    limit = tenant.max_storage_bytes
    if limit is None or used <= limit:
        return None
    return (f"tenant {tenant.slug!r} is over its storage quota: {used} of {limit} bytes used; new jobs "
            "and uploads are refused until adapters or data sets are deleted or the quota is raised")


def check_budget(
    session: Session, tenant: Tenant, estimate_s: float | None, now: datetime | None = None
) -> None:
    """Refuse when this month's device-seconds plus the job's estimate exceed the budget
    (no estimate: refused only once the budget is used up)."""
    if tenant.device_hours_per_month is None:
        return
    budget_s = tenant.device_hours_per_month * 3600.0
    used = repo.device_seconds_since(session, tenant.id, month_start(now))
    left = budget_s - used
    need = estimate_s or 0.0
    if left <= 0 or need > left:
        estimate = f"this job is estimated at {need / 3600:.4f} h" if estimate_s else "no estimate"
        raise QuotaExceeded(
            f"tenant {tenant.slug!r} has a budget of {tenant.device_hours_per_month:g} device-hours a "
            f"month; {used / 3600:.4f} h are used this month, {max(left, 0) / 3600:.4f} h left, {estimate}: "
            "wait for next month or raise it (--device-hours-per-month)")


@dataclass(frozen=True)
class QuotaUsage:
    max_running: int
    running: int
    max_queued: int
    queued: int
    device_hours_per_month: float | None
    device_hours_this_month: float
    max_storage_bytes: int | None
    storage_bytes: int

    @property
    def storage_over_quota(self) -> bool:
        return self.max_storage_bytes is not None and self.storage_bytes > self.max_storage_bytes

    def to_dict(self) -> dict:
        return {**self.__dict__, "storage_over_quota": self.storage_over_quota}


def quota_usage(session: Session, tenant: Tenant, now: datetime | None = None) -> QuotaUsage:
    return QuotaUsage(
        max_running=tenant.max_running,
        running=repo.running_count(session, tenant.id),
        max_queued=tenant.max_queued,
        queued=repo.queued_count(session, tenant.id),
        device_hours_per_month=tenant.device_hours_per_month,
        device_hours_this_month=repo.device_seconds_since(session, tenant.id, month_start(now)) / 3600.0,
        max_storage_bytes=tenant.max_storage_bytes,
        storage_bytes=repo.storage_bytes(session, tenant.id),
    )


@readonly
def tenant_quota_usage(session: Session, slug: str, now: datetime | None = None) -> QuotaUsage:
    """The tenant's usage against each of its quotas (`lorafleet tenant show`)."""
    from orchestrator.services.tenants import tenant_or_404

    return quota_usage(session, tenant_or_404(session, slug), now)
