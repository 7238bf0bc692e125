"""Tenants: create, list, show, change quota."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from orchestrator.config import get_settings
from orchestrator.registry import repositories as repo
from orchestrator.registry.models import Tenant
from orchestrator.services._tx import readonly, transactional
from orchestrator.services.errors import Conflict, InvalidInput, NotFound

# Starts with a letter or digit so a slug is never mistaken for a CLI option.
SLUG_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,39}$")


def validate_slug(slug: str) -> str:
    """Return `slug` if valid, else raise InvalidInput saying what is allowed."""
    if not isinstance(slug, str) or not SLUG_RE.fullmatch(slug):
        raise InvalidInput(
            f"invalid tenant slug {slug!r}: use 1-40 characters of lowercase letters, digits and dashes, "
            "starting with a letter or digit (e.g. 'acme-research')"
        )
    return slug


def _check_quota(max_running: int) -> int:
    if not isinstance(max_running, int) or isinstance(max_running, bool) or max_running < 0:
        raise InvalidInput(f"max_running must be an integer >= 0 (got {max_running!r})")
    return max_running


@transactional
def create_tenant(
    session: Session, slug: str, name: str | None = None, max_running: int | None = None
) -> Tenant:
    """Create a tenant. `max_running` defaults to settings.tenant_max_running. Conflict if the slug exists."""
    validate_slug(slug)
    if max_running is None:
        max_running = get_settings().tenant_max_running
    settings = get_settings()
    tenant = Tenant(slug=slug, name=(name or slug).strip() or slug, max_running=_check_quota(max_running),
                    max_queued=settings.tenant_max_queued,
                    device_hours_per_month=settings.tenant_device_hours_per_month,
                    max_storage_bytes=settings.tenant_max_storage_bytes)
    if repo.tenant_by_slug(session, slug) is not None:
        raise Conflict(f"tenant {slug!r} already exists")
    session.add(tenant)
    try:
        session.flush()
    except IntegrityError as exc:  # created concurrently by someone else
        raise Conflict(f"tenant {slug!r} already exists") from exc
    return tenant


@readonly
def list_tenants(session: Session) -> Sequence[Tenant]:
    """All tenants, by slug."""
    return repo.tenants(session)


@readonly
def get_tenant(session: Session, slug: str) -> Tenant:
    """The tenant with this slug, or NotFound."""
    return tenant_or_404(session, slug)


def tenant_or_404(session: Session, slug: str) -> Tenant:
    """Inside another service's transaction: the tenant, or NotFound."""
    tenant = repo.tenant_by_slug(session, slug)
    if tenant is None:
        raise NotFound(f"no tenant {slug!r} (see `lorafleet tenant list`)")
    return tenant


KEEP: Any = object()  # set_tenant_quota: leave this quota as it is


def _limit(name: str, value: Any, kind: type) -> Any:
    """None (unlimited) or a finite number >= 0 of `kind`."""
    if value is None:
        return None
    number = isinstance(value, int | float) and not isinstance(value, bool)
    ok = number and math.isfinite(value) and value >= 0
    if not ok or (kind is int and not isinstance(value, int)):
        what = "an integer" if kind is int else "a finite number"
        raise InvalidInput(f"{name} must be {what} >= 0, or unlimited (got {value!r})")
    return kind(value)


@transactional
def set_tenant_quota(
    session: Session,
    slug: str,
    max_running: int | None = None,
    *,
    max_queued: int | None = None,
    device_hours_per_month: float | None = KEEP,
    max_storage_bytes: int | None = KEEP,
) -> Tenant:
    """Change the tenant's quotas (only those given). `max_running` 0 pauses the tenant; None for
    the device-hour budget or the storage quota means unlimited. Running jobs are never stopped."""
    tenant = tenant_or_404(session, slug)
    if max_running is not None:
        tenant.max_running = _check_quota(max_running)
    if max_queued is not None:
        tenant.max_queued = _limit("max_queued", max_queued, int)
    if device_hours_per_month is not KEEP:
        tenant.device_hours_per_month = _limit("device_hours_per_month", device_hours_per_month, float)
    if max_storage_bytes is not KEEP:
        tenant.max_storage_bytes = _limit("max_storage_bytes", max_storage_bytes, int)
    return tenant
