"""`/v1/models`: the base models a tenant may fine-tune (`services.base_models.tenant_bases`: the
operator's list, else the packaged aliases and cached hub ids) and its own adapters, by their
`ft:` names (`services.model_names`, the job's suffix included), as OpenAI's model objects. A
tenant deletes its own adapters only: a base model is 403, another tenant's adapter 404 (it does
not exist for this caller)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Depends

from orchestrator.api.auth import Caller, tenant_caller
from orchestrator.api.deps import db_session, settings
from orchestrator.api.errors import ApiError
from orchestrator.api.pages import page
from orchestrator.config import Settings

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

# The dependencies of every route: the caller (its tenant scopes every query), a registry
# session, the app's settings.
Tenant = Annotated[Caller, Depends(tenant_caller)]
Db = Annotated["Session", Depends(db_session)]
Config = Annotated[Settings, Depends(settings)]
router = APIRouter(prefix="/v1/models", tags=["models"])
OWNER = "lorafleet"


def base_object(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 0, "owned_by": OWNER}


def adapter_object(adapter: Any, name: str, tenant_slug: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": int(adapter.created_at.timestamp()),
            "owned_by": tenant_slug}


def _named(session: Session, adapters: Any, tenant_slug: str) -> list[dict[str, Any]]:
    from orchestrator.services.adapters import model_names_of

    names = model_names_of(session, adapters)
    return [adapter_object(a, names[a.id], tenant_slug) for a in adapters]


def _adapter_of(session: Session, model: str, caller: Caller) -> Any | None:
    """The caller's adapter `model` names (None: not an `ft:` name; NotFound: no such adapter)."""
    from orchestrator.errors import NotFound
    from orchestrator.services.adapters import get_adapter
    from orchestrator.services.model_names import parse_model_name

    adapter_id = parse_model_name(model)
    if adapter_id is None:
        return None
    try:
        return get_adapter(session, adapter_id, caller.tenant_slug)
    except NotFound:
        raise _not_found(model) from None


def _not_found(model: str) -> ApiError:
    return ApiError(404, f"The model {model[:200]!r} does not exist; list them with GET /v1/models",
                    param="model", code="model_not_found")


@router.get("")
def list_models(caller: Tenant, session: Db, config: Config) -> dict:
    """The bases this tenant may fine-tune, then its adapters (oldest first)."""
    from orchestrator.services.adapters import list_adapters
    from orchestrator.services.base_models import tenant_bases

    adapters = list_adapters(session, tenant=caller.tenant_slug)
    bases = [base_object(b) for b in tenant_bases(config)]
    return page(bases + _named(session, adapters, caller.tenant_slug), False)


@router.get("/{model:path}")
def retrieve_model(model: str, caller: Tenant, session: Db, config: Config) -> dict:
    """A base this tenant may fine-tune, or one of its adapters by its `ft:` name."""
    from orchestrator.services.base_models import tenant_bases

    adapter = _adapter_of(session, model, caller)
    if adapter is not None:
        return _named(session, [adapter], caller.tenant_slug)[0]
    if model in tenant_bases(config):
        return base_object(model)
    raise _not_found(model)


@router.delete("/{model:path}")
def delete_model(model: str, caller: Tenant, session: Db, config: Config) -> dict:
    """Delete one of the tenant's adapters (its files; the jobs that made it keep their history)."""
    from orchestrator.services.adapters import delete_adapter
    from orchestrator.services.base_models import tenant_bases

    adapter = _adapter_of(session, model, caller)
    if adapter is not None:
        name = _named(session, [adapter], caller.tenant_slug)[0]["id"]
        delete_adapter(session, adapter.id, caller.tenant_slug, config)
        return {"id": name, "object": "model", "deleted": True}
    if model in tenant_bases(config):
        raise ApiError(403, f"{model!r} is a base model of lorafleet; a tenant deletes its own fine-tuned "
                            f"models only", param="model", code="model_not_owned")
    raise _not_found(model)
