"""What a front door lists and shows, composed once (so the CLI and an API print the same thing):
jobs with their tenant's slug and headline metric, a tenant with its summary and quotas.

Each function is one read transaction and returns typed values; `.to_dict()` gives the stable
JSON keys (`job list --json`, `tenant show --json`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from orchestrator.registry import repositories as repo
from orchestrator.registry.models import Job, Tenant
from orchestrator.services._tx import readonly
from orchestrator.services.jobs import jobs_page
from orchestrator.services.metrics import headline_metrics
from orchestrator.services.quotas import QuotaUsage, quota_usage, storage_over
from orchestrator.services.summary import TenantSummary, summaries
from orchestrator.services.tenants import tenant_or_404
from orchestrator.services.views import job_dict, tenant_dict


@dataclass(frozen=True)
class ListedJob:
    """A job as a listing shows it: its tenant's slug, and its task's primary validation metric
    (name, value) once it has one."""

    job: Job
    tenant_slug: str | None
    headline: tuple[str, float] | None

    def to_dict(self) -> dict[str, Any]:
        return job_dict(self.job, self.tenant_slug)


@readonly
def job_listing(session: Session, tenant: str | None = None, state: str | None = None,
                limit: int | None = None, offset: int = 0) -> list[ListedJob]:
    """`list_jobs`'s page (newest first, of one tenant and/or state), each job with its tenant's
    slug and headline metric."""
    jobs = jobs_page(session, tenant, state, limit, offset)
    slugs = {t.id: t.slug for t in repo.tenants(session)}
    headlines = headline_metrics(session, jobs)
    return [ListedJob(j, slugs.get(j.tenant_id), headlines.get(j.id)) for j in jobs]


@dataclass(frozen=True)
class TenantOverview:
    """One tenant with its jobs by state, adapters and usage so far, and each quota's use."""

    tenant: Tenant
    summary: TenantSummary
    quotas: QuotaUsage

    @property
    def storage_warning(self) -> str | None:
        """Why the tenant's storage is over its quota; None within it."""
        return storage_over(self.tenant, self.quotas.storage_bytes)

    def to_dict(self) -> dict[str, Any]:
        view = tenant_dict(self.tenant)
        view.update({k: v for k, v in self.summary.to_dict().items() if k not in view})
        q = self.quotas
        view["quotas"] = {  # {quota: {"used", "limit"}}; limit None = unlimited
            "running_jobs": {"used": q.running, "limit": q.max_running},
            "queued_jobs": {"used": q.queued, "limit": q.max_queued},
            "device_hours_this_month": {"used": round(q.device_hours_this_month, 6),
                                        "limit": q.device_hours_per_month},
            "storage_bytes": {"used": q.storage_bytes, "limit": q.max_storage_bytes,
                              "over": q.storage_over_quota},
        }
        return view


@readonly
def tenant_overview(session: Session, slug: str) -> TenantOverview:
    """Tenant `slug` (NotFound if none) with its summary and quota usage, read together."""
    tenant = tenant_or_404(session, slug)
    return TenantOverview(tenant, summaries(session, [tenant], one=True)[0], quota_usage(session, tenant))

