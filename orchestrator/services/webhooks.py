"""A tenant's webhook endpoints: register (the secret is returned once), list, remove.

Two doors: the operator's CLI may register any http(s) URL; the tenants' API registers with
`restricted=True`, and then the URL's host must resolve to public addresses only (unless the
`webhook_allow_private` setting says otherwise; `orchestrator.webhook_urls`), checked here and
again at every delivery. The secret signs every delivery (`orchestrator.webhook_signing`); it is
stored because signing needs it, returned by `create_webhook` only and never in a view.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import update
from sqlalchemy.orm import Session

from orchestrator.errors import Conflict, InvalidInput, NotFound
from orchestrator.registry import webhook_queries as wq
from orchestrator.registry.models import WebhookAttempt, WebhookDelivery, WebhookEndpoint, utcnow
from orchestrator.services._tx import readonly, transactional
from orchestrator.services.ids import resolve_id
from orchestrator.services.tenants import tenant_or_404
from orchestrator.services.webhook_outbox import EVENT_TYPES
from orchestrator.text import printable
from orchestrator.webhook_signing import new_secret
from orchestrator.webhook_urls import checked_target, parse_url

# Endpoints one tenant may have at once: each ended job writes one delivery per endpoint.
MAX_ENDPOINTS_PER_TENANT = 20


@dataclass(frozen=True)
class CreatedWebhook:
    endpoint: WebhookEndpoint
    secret: str  # shown to its owner once, here; never again


MAX_NAME_CHARS = 200


def checked_name(name: object) -> str:
    """An endpoint's display name: one line of at most MAX_NAME_CHARS printable characters."""
    if name is None:
        return ""
    if not isinstance(name, str) or len(name) > MAX_NAME_CHARS or not name.isprintable():
        raise InvalidInput(f"a webhook name is one line of at most {MAX_NAME_CHARS} printable characters")
    return name


def checked_event_types(event_types: object) -> list[str] | None:
    """The event types an endpoint receives (None: every one lorafleet sends)."""
    if event_types is None:
        return None
    allowed = list(EVENT_TYPES.values())
    if not isinstance(event_types, list | tuple) or not event_types or len(event_types) > len(allowed) * 4:
        raise InvalidInput(f"event_types is a non-empty list of: {', '.join(allowed)}")
    unknown = [t for t in event_types if t not in allowed]
    if unknown:
        shown = ", ".join(printable(repr(t))[:80] for t in unknown[:5])
        raise InvalidInput(f"lorafleet sends no event of type {shown}; allowed: {', '.join(allowed)}")
    return [t for t in allowed if t in event_types]


@transactional
def create_webhook(session: Session, tenant_slug: str, url: str, *, restricted: bool = False,
                   allow_private: bool = False, name: str | None = None,
                   event_types: list[str] | None = None) -> CreatedWebhook:
    """Register `url` for the tenant's job events (`event_types`, default all). `restricted` (the
    API): its host must resolve to public addresses unless `allow_private`. InvalidInput names
    what is wrong with the URL, the name or the event types; Conflict at the endpoint limit."""
    parse_url(url)
    name, types = checked_name(name), checked_event_types(event_types)
    if restricted:
        checked_target(url, allow_private=allow_private)
    tenant = tenant_or_404(session, tenant_slug)
    if wq.active_endpoint_count(session, tenant.id) >= MAX_ENDPOINTS_PER_TENANT:
        raise Conflict(f"tenant {tenant.slug} already has {MAX_ENDPOINTS_PER_TENANT} webhook endpoints, "
                       "the most allowed; remove one first")
    secret = new_secret()
    endpoint = WebhookEndpoint(tenant_id=tenant.id, url=url, name=name, event_types=types, secret=secret,
                               restricted=restricted, created_at=utcnow())
    session.add(endpoint)
    session.flush()
    return CreatedWebhook(endpoint, secret)


@readonly
def list_webhooks(session: Session, tenant: str | None = None) -> Sequence[WebhookEndpoint]:
    """The endpoints not removed (of `tenant` when given), oldest first."""
    tenant_id = tenant_or_404(session, tenant).id if tenant is not None else None
    return wq.active_endpoints(session, tenant_id)


def webhook_or_404(session: Session, webhook_id: str, tenant: str | None = None, *,
                   include_removed: bool = False) -> WebhookEndpoint:
    """The endpoint `webhook_id` (or a unique prefix of it, `services.ids`) names, of `tenant`
    when given; NotFound otherwise."""
    tenant_id = tenant_or_404(session, tenant).id if tenant is not None else None
    endpoint = None
    if isinstance(webhook_id, str):
        full = resolve_id(session, WebhookEndpoint, webhook_id, tenant_id=tenant_id, what="webhook id")
        endpoint = wq.endpoint(session, full, tenant_id, include_removed=include_removed)
    if endpoint is None:
        raise NotFound(f"no webhook endpoint {printable(webhook_id)!r}")
    return endpoint


@readonly
def get_webhook(session: Session, webhook_id: str, tenant: str | None = None) -> WebhookEndpoint:
    return webhook_or_404(session, webhook_id, tenant)


@dataclass(frozen=True)
class DeliveryDetail:
    delivery: WebhookDelivery
    attempts: list[WebhookAttempt]

    def to_dict(self) -> dict[str, object]:
        d = self.delivery
        return {"id": d.id, "event_id": d.event_id, "event_type": d.event_type, "job_id": d.job_id,
                "state": d.state, "attempts": d.attempts, "created_at": d.created_at.isoformat(),
                "next_attempt_at": d.next_attempt_at.isoformat() if d.state == "pending" else None,
                "delivered_at": d.delivered_at.isoformat() if d.delivered_at else None,
                "tries": [{"ts": a.ts.isoformat(), "status_code": a.status_code, "error": a.error,
                           "duration_ms": round(a.duration_ms, 1)} for a in self.attempts]}


MAX_DELIVERIES_SHOWN = 1000


@readonly
def webhook_deliveries(session: Session, webhook_id: str, tenant: str | None = None,
                       limit: int = 50) -> list[DeliveryDetail]:
    """An endpoint's deliveries (removed endpoints too), newest first, each with its attempts."""
    if not 1 <= limit <= MAX_DELIVERIES_SHOWN:
        raise InvalidInput(f"limit must be 1..{MAX_DELIVERIES_SHOWN} (got {limit})")
    endpoint = webhook_or_404(session, webhook_id, tenant, include_removed=True)
    rows = wq.deliveries(session, endpoint_id=endpoint.id, limit=limit)
    tries = wq.attempts_of(session, [r.id for r in rows])
    return [DeliveryDetail(r, tries[r.id]) for r in rows]


@transactional
def remove_webhook(session: Session, webhook_id: str, tenant: str | None = None) -> WebhookEndpoint:
    """Stop sending to the endpoint: it is disabled and its pending deliveries end `failed`
    (rows and attempts stay as history)."""
    endpoint = webhook_or_404(session, webhook_id, tenant)
    endpoint.disabled_at = utcnow()
    session.execute(update(WebhookDelivery)
                    .where(WebhookDelivery.endpoint_id == endpoint.id, WebhookDelivery.state == "pending")
                    .values(state="failed").execution_options(synchronize_session=False))
    return endpoint


def webhook_dict(endpoint: WebhookEndpoint, tenant_slug: str | None = None) -> dict[str, object]:
    """The endpoint's stable JSON view: never its secret."""
    return {"id": endpoint.id, "tenant_id": endpoint.tenant_id, "tenant": tenant_slug, "url": endpoint.url,
            "name": endpoint.name, "event_types": endpoint_event_types(endpoint),
            "restricted": endpoint.restricted, "created_at": endpoint.created_at.isoformat()}


def endpoint_event_types(endpoint: WebhookEndpoint) -> list[str]:
    return list(endpoint.event_types) if endpoint.event_types is not None else list(EVENT_TYPES.values())
