"""Tenants: create, list, show, rename, change quota.

What an operator (or, through the API, a tenant) types here is checked at this door: the slug,
a display name (one line of printable characters, short enough for its column) and every quota
(a whole number no larger than its registry column holds).
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Sequence
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from lora_engine.errors import shown
from orchestrator.config import get_settings
from orchestrator.errors import Conflict, InvalidInput, NotFound
from orchestrator.registry import repositories as repo
from orchestrator.registry.limits import BIG_INTEGER_MAX, INTEGER_MAX, TENANT_NAME_CHARS
from orchestrator.registry.models import Tenant
from orchestrator.services._tx import readonly, transactional

# Starts with a letter or digit so a slug is never mistaken for a CLI option.
SLUG_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,39}$")


def validate_slug(slug: str) -> str:
    """Return `slug` if valid, else raise InvalidInput saying what is allowed."""
    if not isinstance(slug, str) or not SLUG_RE.fullmatch(slug):
        raise InvalidInput(
            f"invalid tenant slug {shown(slug)}: use 1-40 characters of lowercase letters, digits and "
            "dashes, starting with a letter or digit (e.g. 'acme-research')"
        )
    return slug


NAME_RULE = f"a display name is one line of at most {TENANT_NAME_CHARS} printable characters"
_LINE_BREAKS = "\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029"


def validate_display_name(name: str) -> str:
    """`name` without surrounding blanks, or InvalidInput naming the rule (NAME_RULE): a display
    name is printed in every listing, so it is one line, short, and holds no control character
    (no terminal escape, no bidi override); spaces of any script are fine."""
    if not isinstance(name, str):
        raise InvalidInput(f"display name must be text (got {shown(name)}); {NAME_RULE}")
    name = name.strip()
    if len(name) > TENANT_NAME_CHARS:
        raise InvalidInput(f"display name is {len(name)} characters long; {NAME_RULE}")
    for at, char in enumerate(name, 1):
        if char.isprintable() or unicodedata.category(char) == "Zs":
            continue
        what = "a line break" if char in _LINE_BREAKS else f"the non-printable character U+{ord(char):04X}"
        raise InvalidInput(f"display name holds {what} at character {at}; {NAME_RULE}")
    return name


def _whole(name: str, value: Any, high: int, alternative: str = "") -> int:
    """`value` if it is an int (not a bool) in [0, high], else InvalidInput naming the range
    (`high`: what the quota's registry column holds)."""
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= high:
        raise InvalidInput(f"{name} must be a whole number between 0 and {high}{alternative} "
                           f"(got {shown(value)})")
    return value


@transactional
def create_tenant(
    session: Session, slug: str, name: str | None = None, max_running: int | None = None
) -> Tenant:
    """Create a tenant. `max_running` defaults to settings.tenant_max_running. Conflict if the slug exists."""
    validate_slug(slug)
    name = validate_display_name(name) if name is not None else ""
    if max_running is None:
        max_running = get_settings().tenant_max_running
    settings = get_settings()
    tenant = Tenant(slug=slug, name=name or slug, max_running=_whole("max_running", max_running, INTEGER_MAX),
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
        raise NotFound(f"no tenant {shown(slug)} (see `lorafleet tenant list`)")
    return tenant


@transactional
def rename_tenant(session: Session, slug: str, name: str) -> Tenant:
    """Change the tenant's display name (the slug, its id in commands, stays); an empty name
    falls back to the slug, as at creation."""
    tenant = tenant_or_404(session, slug)
    tenant.name = validate_display_name(name) or slug
    return tenant


KEEP: Any = object()  # set_tenant_quota: leave this quota as it is


def _limit(name: str, value: Any, kind: type) -> Any:
    """None (unlimited), a whole number of at most 64 bits (`kind` int) or a finite number >= 0."""
    if value is None:
        return None
    if kind is int:
        return _whole(name, value, BIG_INTEGER_MAX, ", or unlimited")
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if not (number and math.isfinite(value) and value >= 0):
        raise InvalidInput(f"{name} must be a finite number >= 0, or unlimited (got {shown(value)})")
    return float(value)


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
        tenant.max_running = _whole("max_running", max_running, INTEGER_MAX)
    if max_queued is not None:
        tenant.max_queued = _whole("max_queued", max_queued, INTEGER_MAX)
    if device_hours_per_month is not KEEP:
        tenant.device_hours_per_month = _limit("device_hours_per_month", device_hours_per_month, float)
    if max_storage_bytes is not KEEP:
        tenant.max_storage_bytes = _limit("max_storage_bytes", max_storage_bytes, int)
    return tenant
