"""Keys of the tenants' API: create (the secret shown once), list, revoke, authenticate.

A key is `lf-` + 32 random bytes (URL-safe base64). The registry keeps its sha256 only: with that
much entropy a fast hash cannot be reversed, and lookup by hash stays one indexed query per
request. `prefix` (the first characters) tells keys apart in listings and logs. A key belongs to
one tenant, or to none: an operator key, which acts for the tenant a request names.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from lora_engine.errors import shown
from orchestrator.errors import InvalidInput, NotFound, Unauthenticated
from orchestrator.registry.models import ApiKey, Tenant, utcnow
from orchestrator.services._tx import readonly, transactional
from orchestrator.services.ids import resolve_id
from orchestrator.services.tenants import tenant_or_404, validate_display_name

KEY_PREFIX = "lf-"
KEY_BYTES = 32
PREFIX_CHARS = len(KEY_PREFIX) + 8
MAX_EXPIRES_DAYS = 3650
# last_used_at is renewed at most this often per key: a write on every request would serialise
# SQLite's writers and cost PostgreSQL a row version per call.
TOUCH_EVERY = timedelta(seconds=60)


def key_hash(raw_key: str) -> str:
    return hashlib.sha256(raw_key.encode("utf-8", "surrogatepass")).hexdigest()


def _expiry(expires_days: int | None, now: datetime) -> datetime | None:
    if expires_days is None:
        return None
    if not isinstance(expires_days, int) or isinstance(expires_days, bool) or not (
            1 <= expires_days <= MAX_EXPIRES_DAYS):
        raise InvalidInput(f"expires must be a whole number of days from 1 to {MAX_EXPIRES_DAYS} "
                           f"(got {shown(expires_days)})")
    return now + timedelta(days=expires_days)


def _new_key(tenant_id: str | None, name: str | None, expires_days: int | None) -> tuple[ApiKey, str]:
    now = utcnow()
    raw = KEY_PREFIX + secrets.token_urlsafe(KEY_BYTES)
    row = ApiKey(tenant_id=tenant_id, name=validate_display_name(name) if name else "",
                 prefix=raw[:PREFIX_CHARS], hash=key_hash(raw), created_at=now,
                 expires_at=_expiry(expires_days, now))
    return row, raw


@transactional
def create_key(session: Session, tenant_slug: str, name: str | None = None,
               expires_days: int | None = None) -> tuple[ApiKey, str]:
    """A new key of tenant `tenant_slug`: (row, the raw key). The raw key exists only in the
    return value; show it once."""
    tenant = tenant_or_404(session, tenant_slug)
    row, raw = _new_key(tenant.id, name, expires_days)
    session.add(row)
    session.flush()
    return row, raw


@transactional
def create_operator_key(session: Session, name: str | None = None,
                        expires_days: int | None = None) -> tuple[ApiKey, str]:
    """A new operator key (no tenant; acts for the tenant named by `OpenAI-Organization`)."""
    row, raw = _new_key(None, name, expires_days)
    session.add(row)
    session.flush()
    return row, raw


@readonly
def list_keys(session: Session, tenant_slug: str | None) -> Sequence[ApiKey]:
    """The keys of tenant `tenant_slug` (None: the operator keys), oldest first, revoked too."""
    query = select(ApiKey).order_by(ApiKey.created_at, ApiKey.id)
    if tenant_slug is None:
        query = query.where(ApiKey.tenant_id.is_(None))
    else:
        query = query.where(ApiKey.tenant_id == tenant_or_404(session, tenant_slug).id)
    return session.scalars(query).all()


@transactional
def revoke_key(session: Session, key_id: str) -> ApiKey:
    """Revoke a key (its id, or a unique prefix of it): refused from the next request on.
    Revoking it again changes nothing."""
    row = None
    if isinstance(key_id, str) and len(key_id) <= 36:
        row = session.get(ApiKey, resolve_id(session, ApiKey, key_id, what="API key id"))
    if row is None:
        raise NotFound(f"no API key {shown(key_id)} (see `lorafleet tenant key list TENANT`)")
    if row.revoked_at is None:
        row.revoked_at = utcnow()
    return row


@dataclass(frozen=True)
class KeyIdentity:
    """Who a valid key is: its tenant (None for an operator key)."""

    key_id: str
    tenant_id: str | None
    tenant_slug: str | None
    last_used_at: datetime | None

    @property
    def operator(self) -> bool:
        return self.tenant_id is None


@readonly
def authenticate(session: Session, raw_key: str, now: datetime | None = None) -> KeyIdentity:
    """The identity of `raw_key`, or Unauthenticated (unknown, revoked, expired)."""
    now = now or utcnow()
    digest = key_hash(raw_key)
    found = session.execute(select(ApiKey, Tenant.slug).outerjoin(Tenant, Tenant.id == ApiKey.tenant_id)
                            .where(ApiKey.hash == digest)).first()
    # The index finds the row; the comparison itself takes the same time wherever they differ.
    if found is None or not hmac.compare_digest(found[0].hash, digest):
        raise Unauthenticated("the key is unknown")
    row, slug = found
    if row.revoked_at is not None:
        raise Unauthenticated(f"the key {row.prefix}… was revoked")
    if row.expires_at is not None and row.expires_at <= now:
        when = row.expires_at.isoformat(timespec="seconds")
        raise Unauthenticated(f"the key {row.prefix}… expired at {when}")
    return KeyIdentity(row.id, row.tenant_id, slug, row.last_used_at)


@transactional
def touch_key(session: Session, key_id: str, now: datetime | None = None) -> None:
    """Record that the key was used (callers skip it while last_used_at is recent, TOUCH_EVERY)."""
    row = session.get(ApiKey, key_id)
    if row is not None:
        row.last_used_at = now or utcnow()


def needs_touch(identity: KeyIdentity, now: datetime) -> bool:
    return identity.last_used_at is None or now - identity.last_used_at >= TOUCH_EVERY


def key_dict(row: ApiKey) -> dict:
    """What listings show of a key: never its secret or hash."""
    def ts(value: datetime | None) -> str | None:
        return value.isoformat() if value is not None else None

    return {"id": row.id, "name": row.name, "prefix": row.prefix, "tenant_id": row.tenant_id,
            "created_at": ts(row.created_at), "expires_at": ts(row.expires_at),
            "revoked_at": ts(row.revoked_at), "last_used_at": ts(row.last_used_at)}
