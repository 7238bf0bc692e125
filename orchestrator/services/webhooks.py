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

from orchestrator.errors import InvalidInput, NotFound
from orchestrator.registry import webhook_queries as wq
from orchestrator.registry.models import WebhookDelivery, WebhookEndpoint, utcnow
from orchestrator.services._tx import readonly, transactional
from orchestrator.services.tenants import tenant_or_404
from orchestrator.text import printable
from orchestrator.webhook_signing import new_secret
from orchestrator.webhook_urls import checked_target, parse_url

# Endpoints one tenant may have at once: each ended job writes one delivery per endpoint.
MAX_ENDPOINTS_PER_TENANT = 20


@dataclass(frozen=True)
class CreatedWebhook:
    endpoint: WebhookEndpoint
    secret: str  # shown to its owner once, here; never again


@transactional
def create_webhook(session: Session, tenant_slug: str, url: str, *, restricted: bool = False,
                   allow_private: bool = False) -> CreatedWebhook:
    """Register `url` for the tenant's job events. `restricted` (the API): its host must resolve
    to public addresses unless `allow_private`. InvalidInput names what is wrong with the URL."""
    parse_url(url)
    if restricted:
        checked_target(url, allow_private=allow_private)
    tenant = tenant_or_404(session, tenant_slug)
    if wq.active_endpoint_count(session, tenant.id) >= MAX_ENDPOINTS_PER_TENANT:
        raise InvalidInput(f"tenant {tenant.slug} already has {MAX_ENDPOINTS_PER_TENANT} webhook endpoints, "
                           "the most allowed; remove one first")
    secret = new_secret()
    endpoint = WebhookEndpoint(tenant_id=tenant.id, url=url, secret=secret, restricted=restricted,
                               created_at=utcnow())
    session.add(endpoint)
    session.flush()
    return CreatedWebhook(endpoint, secret)


@readonly
def list_webhooks(session: Session, tenant: str | None = None) -> Sequence[WebhookEndpoint]:
    """The endpoints not removed (of `tenant` when given), oldest first."""
    tenant_id = tenant_or_404(session, tenant).id if tenant is not None else None
    return wq.active_endpoints(session, tenant_id)


def webhook_or_404(session: Session, webhook_id: str, tenant: str | None = None) -> WebhookEndpoint:
    tenant_id = tenant_or_404(session, tenant).id if tenant is not None else None
    endpoint = wq.endpoint(session, webhook_id, tenant_id) if isinstance(webhook_id, str) else None
    if endpoint is None:
        raise NotFound(f"no webhook endpoint {printable(webhook_id)!r}")
    return endpoint


@readonly
def get_webhook(session: Session, webhook_id: str, tenant: str | None = None) -> WebhookEndpoint:
    return webhook_or_404(session, webhook_id, tenant)


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
            "restricted": endpoint.restricted, "created_at": endpoint.created_at.isoformat()}
