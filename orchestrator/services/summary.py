"""Per-tenant summary: jobs by state, adapters, usage (the quickstart's closing table)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from sqlalchemy.orm import Session

from orchestrator.registry import repositories as repo
from orchestrator.registry.models import JOB_STATES, Tenant
from orchestrator.services._tx import readonly
from orchestrator.services.tenants import tenant_or_404


@dataclass
class TenantSummary:
    slug: str
    name: str
    max_running: int
    jobs: dict[str, int] = field(default_factory=dict)  # every state, 0 included
    adapters: int = 0
    adapter_bytes: int = 0
    device_seconds: float = 0.0
    wall_seconds: float = 0.0
    examples: int = 0
    tokens: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@readonly
def tenant_summary(session: Session, tenant: str | None = None) -> list[TenantSummary]:
    """One row per tenant (by slug), or only `tenant`'s. Usage sums every attempt."""
    if tenant is not None:
        return summaries(session, [tenant_or_404(session, tenant)], one=True)
    return summaries(session, list(repo.tenants(session)))


def summaries(session: Session, tenants: Sequence[Tenant], *, one: bool = False) -> list[TenantSummary]:
    """Inside a service: the summary of each of `tenants` (`one`: a single tenant, counted alone)."""
    tenant_id = tenants[0].id if one else None
    states = repo.job_state_counts(session, tenant_id)
    adapters = repo.adapter_counts(session, tenant_id)
    usage = repo.usage_totals(session, tenant_id)
    out = []
    for t in tenants:
        n_adapters, n_bytes = adapters.get(t.id, (0, 0))
        u = usage.get(t.id, {})
        out.append(TenantSummary(
            slug=t.slug, name=t.name, max_running=t.max_running,
            jobs={s: states.get((t.id, s), 0) for s in JOB_STATES},
            adapters=n_adapters, adapter_bytes=n_bytes,
            device_seconds=float(u.get("device_seconds", 0.0)),
            wall_seconds=float(u.get("wall_seconds", 0.0)),
            examples=int(u.get("examples", 0)), tokens=int(u.get("tokens", 0)),
        ))
    return out
