"""Who is calling: the `tenant_caller` dependency turns the request's key into a `Caller`.

`Authorization: Bearer <key>` is checked against the registry on every request (a revoked or
expired key is refused from the next request on; the inference server keeps a verified key a few
seconds: worker/serve/auth.py). A tenant key acts for its tenant; an operator
key for the tenant named by the `OpenAI-Organization` header (the openai client's
`organization=`), without which tenant routes answer 400. Failed authentications are counted per
address and a key's requests per minute (orchestrator/api/limits.py): over either limit, 429.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from orchestrator.api.deps import db_session
from orchestrator.api.errors import ApiError
from orchestrator.api.limits import limiter
from orchestrator.errors import NotFound, Unauthenticated
from orchestrator.registry.models import utcnow
from orchestrator.services.keys import KeyIdentity, authenticate, needs_touch, touch_key
from orchestrator.services.tenants import get_tenant

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

ORGANIZATION_HEADER = "OpenAI-Organization"
MAX_KEY_CHARS = 200
# Shown in /docs ("Authorize"); refusals are ours (401 in OpenAI's shape), not HTTPBearer's 403.
bearer = HTTPBearer(auto_error=False, description="an API key: `lorafleet tenant key create TENANT`")


@dataclass(frozen=True)
class Caller:
    """The key of a request and the tenant every query of the request is scoped to."""

    key_id: str
    tenant_id: str
    tenant_slug: str
    operator: bool


def _unauthenticated(message: str) -> ApiError:
    return ApiError(401, message, type="authentication_error", code="invalid_api_key")


def tenant_caller(request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(bearer),
                  session: Session = Depends(db_session)) -> Caller:
    """The caller of a tenant route, or a 401/400/429 ApiError."""
    identity = verified_identity(request, credentials, session)
    limiter(request.app).count_request(session, identity.key_id)
    now = utcnow()
    if needs_touch(identity, now):
        touch_key(session, identity.key_id, now)
    return caller_of(session, identity, request.headers.get(ORGANIZATION_HEADER))


def verified_identity(request: Request, credentials: HTTPAuthorizationCredentials | None,
                      session: Session) -> KeyIdentity:
    """The identity of the request's key, checked against the registry (a 401 counted as a failed
    authentication of the address; 429 while the address is blocked)."""
    limits = limiter(request.app)
    address = client_address(request)
    limits.check_address(session, address)
    raw = _present_key(request, credentials, session)
    try:
        if len(raw) > MAX_KEY_CHARS:
            raise Unauthenticated("the key is unknown")
        return authenticate(session, raw)
    except Unauthenticated as exc:
        limits.failed(session, address)
        raise _unauthenticated(f"Incorrect API key provided: {exc}.") from None


def client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def _present_key(request: Request, credentials: HTTPAuthorizationCredentials | None, session: Session) -> str:
    """The key the request sent; a 401 (a failed authentication of its address) when none."""
    if credentials is None or not credentials.credentials:
        limiter(request.app).failed(session, client_address(request))
        raise _unauthenticated("You didn't provide an API key. Send it as `Authorization: Bearer <key>` "
                               "(make one with `lorafleet tenant key create TENANT`).")
    return credentials.credentials


def caller_of(session: Session, identity: KeyIdentity, organization: str | None) -> Caller:
    """Whom a verified key acts for: its tenant, or for an operator key the tenant `organization`
    (the OpenAI-Organization header) names."""
    if identity.operator:
        if not organization:
            raise ApiError(400, f"an operator key acts for the tenant named by the {ORGANIZATION_HEADER} "
                                "header (the openai client's organization=); none was sent",
                           param=ORGANIZATION_HEADER, code="missing_organization")
        try:
            tenant = get_tenant(session, organization)
        except NotFound:
            raise ApiError(400, f"the {ORGANIZATION_HEADER} header names no tenant",
                           param=ORGANIZATION_HEADER, code="unknown_organization") from None
        return Caller(identity.key_id, tenant.id, tenant.slug, operator=True)
    if organization and organization not in (identity.tenant_slug, identity.tenant_id):
        raise ApiError(400, f"this key belongs to another tenant than the {ORGANIZATION_HEADER} header "
                            "names; leave the header out or name the key's own tenant",
                       param=ORGANIZATION_HEADER, code="organization_mismatch")
    assert identity.tenant_id is not None and identity.tenant_slug is not None
    return Caller(identity.key_id, identity.tenant_id, identity.tenant_slug, operator=False)
