"""`/v1/webhooks`: a tenant's webhook endpoints (lorafleet's own route; OpenAI's are configured
in its dashboard). Create returns the signing secret once; list and retrieve never do. The URL's
host must resolve to public addresses (`orchestrator.webhook_urls`), unless the operator set
`webhook_allow_private`. Another tenant's endpoint does not exist here (404). What arrives at an
endpoint: `fine_tuning.job.succeeded|failed|cancelled` events, verifiable with the openai
client's `webhooks.unwrap(body, headers, secret=...)` (`services.webhook_outbox`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, StrictStr

from orchestrator.api.auth import Caller, tenant_caller
from orchestrator.api.deps import db_session, settings
from orchestrator.api.errors import ApiError
from orchestrator.api.pages import Limit, page
from orchestrator.config import Settings
from orchestrator.services.webhook_outbox import EVENT_TYPES

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

Tenant = Annotated[Caller, Depends(tenant_caller)]
Db = Annotated["Session", Depends(db_session)]
Config = Annotated[Settings, Depends(settings)]
router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])


class CreateWebhook(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: StrictStr


def webhook_object(endpoint: Any) -> dict[str, Any]:
    """OpenAI-style object of an endpoint (never its secret)."""
    return {"id": endpoint.id, "object": "webhook_endpoint", "url": endpoint.url,
            "event_types": list(EVENT_TYPES.values()), "created_at": int(endpoint.created_at.timestamp())}


def _not_found(webhook_id: str) -> ApiError:
    return ApiError(404, f"No webhook endpoint {webhook_id[:100]!r}; list them with GET /v1/webhooks",
                    param="webhook_id", code="webhook_not_found")


@router.post("")
def create_webhook(body: CreateWebhook, caller: Tenant, session: Db, config: Config) -> dict:
    """Register `url` for this tenant's job events; the answer's `secret` is shown this once."""
    from orchestrator.errors import InvalidInput
    from orchestrator.services.webhooks import create_webhook as create

    try:
        created = create(session, caller.tenant_slug, body.url, restricted=True,
                         allow_private=config.webhook_allow_private)
    except InvalidInput as exc:
        raise ApiError(400, str(exc), param="url", code="invalid_url") from None
    return {**webhook_object(created.endpoint), "secret": created.secret}


@router.get("")
def list_webhooks(caller: Tenant, session: Db, limit: Limit = 20) -> dict:
    """This tenant's endpoints, oldest first (no secrets)."""
    from orchestrator.services.webhooks import list_webhooks as listed

    endpoints = listed(session, caller.tenant_slug)
    return page([webhook_object(e) for e in endpoints[:limit]], len(endpoints) > limit)


@router.get("/{webhook_id}")
def retrieve_webhook(webhook_id: str, caller: Tenant, session: Db) -> dict:
    from orchestrator.errors import NotFound
    from orchestrator.services.webhooks import get_webhook

    try:
        return webhook_object(get_webhook(session, webhook_id, caller.tenant_slug))
    except NotFound:
        raise _not_found(webhook_id) from None


@router.delete("/{webhook_id}")
def delete_webhook(webhook_id: str, caller: Tenant, session: Db) -> dict:
    """Stop sending to the endpoint (deliveries not yet made are dropped)."""
    from orchestrator.errors import NotFound
    from orchestrator.services.webhooks import remove_webhook

    try:
        removed = remove_webhook(session, webhook_id, caller.tenant_slug)
    except NotFound:
        raise _not_found(webhook_id) from None
    return {"id": removed.id, "object": "webhook_endpoint.deleted", "deleted": True}
