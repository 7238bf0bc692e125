"""The inference server's key check: the API's (orchestrator/api/auth.py), its answer kept a while.

A key verified against the registry is trusted for `LORAFLEET_SERVE_REGISTRY_CACHE_S` seconds
(default 5) in this process, by its hash (the server never keeps a key itself) and the
OpenAI-Organization header it came with: a revoked or expired key is refused within that time
of its revocation, not from the next request on as by the API. A refused key is never kept: it
is checked, and counted against its address, every time. The per-minute limit of a key counts
every request (orchestrator/api/limits.py's ProcessLimiter: in memory, or Redis when there is one).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials

from orchestrator.api.auth import (
    MAX_KEY_CHARS,
    ORGANIZATION_HEADER,
    Caller,
    bearer,
    caller_of,
    client_address,
    verified_identity,
)
from orchestrator.api.deps import db_session
from orchestrator.api.limits import limiter
from orchestrator.registry.models import utcnow
from orchestrator.services.keys import key_hash, needs_touch, touch_key
from worker.serve.ttl import TtlCache

if TYPE_CHECKING:
    from sqlalchemy.orm import Session


def serve_caller(request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(bearer),
                 session: Session = Depends(db_session)) -> Caller:
    """The caller of an inference route (as `tenant_caller`), from the cache when it holds the key."""
    limits = limiter(request.app)
    keys: TtlCache = request.app.state.keys  # (key hash, organization header) -> Caller
    organization = request.headers.get(ORGANIZATION_HEADER)
    raw = credentials.credentials if credentials is not None else ""
    digest = key_hash(raw) if 0 < len(raw) <= MAX_KEY_CHARS else None
    caller = keys.get((digest, organization)) if digest is not None else None
    if caller is not None:
        limits.check_address(session, client_address(request))  # a blocked address stays blocked
        limits.count_request(session, caller.key_id)
        return caller
    identity = verified_identity(request, credentials, session)
    limits.count_request(session, identity.key_id)
    now = utcnow()
    if needs_touch(identity, now):
        touch_key(session, identity.key_id, now)
    caller = caller_of(session, identity, organization)
    if digest is not None:
        keys.put((digest, organization), caller)
    return caller
