"""A tenant's webhook endpoints, at two doors over the same service (`services.webhooks`):

- `/v1/webhooks`, lorafleet's own: POST {"url", "name"?, "event_types"?} -> the endpoint with
  its `secret`; GET (oldest first), GET one, DELETE;
- `/v1/webhook_endpoints`, the shape of the openai client's `client.webhooks.create(url=...,
  name=..., event_types=[...])` (the secret as `signing_secret`), `.list()` (newest first,
  `after` and `limit`), `.retrieve(id)`, `.delete(id)`.

The secret is in the creation's answer only. The URL's host must resolve to public addresses
(`orchestrator.webhook_urls`) unless the operator set `webhook_allow_private`; event types are
those lorafleet sends (`fine_tuning.job.succeeded|failed|cancelled`). Another tenant's endpoint
does not exist here (404). What arrives: OpenAI's event objects, verifiable with the openai
client's `webhooks.unwrap(body, headers, secret=...)` (`services.webhook_outbox`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, ConfigDict, StrictStr

from orchestrator.api.auth import Caller, tenant_caller
from orchestrator.api.deps import db_session, settings
from orchestrator.api.errors import ApiError
from orchestrator.api.pages import Limit, page
from orchestrator.config import Settings

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

Tenant = Annotated[Caller, Depends(tenant_caller)]
Db = Annotated["Session", Depends(db_session)]
Config = Annotated[Settings, Depends(settings)]
router = APIRouter(tags=["webhooks"])
OURS, OPENAI = "/v1/webhooks", "/v1/webhook_endpoints"


class CreateWebhook(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: StrictStr
    name: StrictStr | None = None
    event_types: list[StrictStr] | None = None


def webhook_object(endpoint: Any) -> dict[str, Any]:
    """The endpoint as OpenAI's `WebhookEndpoint` (never its secret)."""
    from orchestrator.services.webhooks import endpoint_event_types

    created = int(endpoint.created_at.timestamp())
    return {"id": endpoint.id, "object": "webhook_endpoint", "url": endpoint.url, "name": endpoint.name,
            "event_types": endpoint_event_types(endpoint), "created_at": created, "updated_at": created,
            "signing_secret_hint": "whsec_…"}


def _create(body: CreateWebhook, caller: Caller, session: Session, config: Settings) -> tuple[dict, str]:
    from orchestrator.errors import InvalidInput
    from orchestrator.services.webhooks import checked_event_types, checked_name, create_webhook

    def refuse(param: str, exc: Exception) -> ApiError:
        return ApiError(400, str(exc), param=param, code=f"invalid_{param}")

    for param, check, value in (("name", checked_name, body.name),
                                ("event_types", checked_event_types, body.event_types)):
        try:
            check(value)
        except InvalidInput as exc:
            raise refuse(param, exc) from None
    try:  # what is left to refuse is the url (a tenant at its endpoint limit: Conflict, 409)
        created = create_webhook(session, caller.tenant_slug, body.url, restricted=True,
                                 allow_private=config.webhook_allow_private, name=body.name,
                                 event_types=body.event_types)
    except InvalidInput as exc:
        raise refuse("url", exc) from None
    return webhook_object(created.endpoint), created.secret


def _not_found(webhook_id: str) -> ApiError:
    return ApiError(404, f"No webhook endpoint {webhook_id[:100]!r}; list them with GET {OURS}",
                    param="webhook_id", code="webhook_not_found")


def _endpoint(session: Session, webhook_id: str, caller: Caller) -> Any:
    from orchestrator.errors import NotFound
    from orchestrator.services.webhooks import get_webhook

    try:
        return get_webhook(session, webhook_id, caller.tenant_slug)
    except NotFound:
        raise _not_found(webhook_id) from None


def _delete(session: Session, webhook_id: str, caller: Caller) -> dict:
    from orchestrator.errors import NotFound
    from orchestrator.services.webhooks import remove_webhook

    try:
        removed = remove_webhook(session, webhook_id, caller.tenant_slug)
    except NotFound:
        raise _not_found(webhook_id) from None
    return {"id": removed.id, "object": "webhook_endpoint.deleted", "deleted": True}


@router.post(OURS)
def create_webhook(body: CreateWebhook, caller: Tenant, session: Db, config: Config) -> dict:
    """Register `url` for this tenant's job events; the answer's `secret` is shown this once."""
    view, secret = _create(body, caller, session, config)
    return {**view, "secret": secret}


@router.get(OURS)
def list_webhooks(caller: Tenant, session: Db, limit: Limit = 20) -> dict:
    """This tenant's endpoints, oldest first (no secrets)."""
    from orchestrator.services.webhooks import list_webhooks as listed

    endpoints = listed(session, caller.tenant_slug)
    return page([webhook_object(e) for e in endpoints[:limit]], len(endpoints) > limit)


@router.get(OURS + "/{webhook_id}")
def retrieve_webhook(webhook_id: str, caller: Tenant, session: Db) -> dict:
    return webhook_object(_endpoint(session, webhook_id, caller))


@router.delete(OURS + "/{webhook_id}")
def delete_webhook(webhook_id: str, caller: Tenant, session: Db) -> dict:
    """Stop sending to the endpoint (deliveries not yet made are dropped)."""
    return _delete(session, webhook_id, caller)


@router.post(OPENAI)
def create_webhook_endpoint(body: CreateWebhook, caller: Tenant, session: Db, config: Config) -> dict:
    """`client.webhooks.create(url=..., name=..., event_types=[...])`: `signing_secret` shown once."""
    view, secret = _create(body, caller, session, config)
    return {**view, "signing_secret": secret}


@router.get(OPENAI)
def list_webhook_endpoints(caller: Tenant, session: Db, limit: Limit = 20,
                           after: Annotated[str | None, Query(max_length=100)] = None) -> dict:
    """`client.webhooks.list(after=..., limit=...)`: newest first."""
    from orchestrator.services.webhooks import list_webhooks as listed

    endpoints = list(reversed(listed(session, caller.tenant_slug)))
    if after is not None:
        ids = [e.id for e in endpoints]
        if after not in ids:
            raise ApiError(400, f"after={after[:100]!r} is not one of your webhook endpoints", param="after")
        endpoints = endpoints[ids.index(after) + 1:]
    return page([webhook_object(e) for e in endpoints[:limit]], len(endpoints) > limit)


@router.get(OPENAI + "/{webhook_id}")
def retrieve_webhook_endpoint(webhook_id: str, caller: Tenant, session: Db) -> dict:
    return webhook_object(_endpoint(session, webhook_id, caller))


@router.delete(OPENAI + "/{webhook_id}")
def delete_webhook_endpoint(webhook_id: str, caller: Tenant, session: Db) -> dict:
    return _delete(session, webhook_id, caller)
