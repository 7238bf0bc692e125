"""Short ids: a person may give the first characters of a job or adapter id, as with git commits.

The one resolver for every service that takes an id from a person. A full id (36 characters)
never costs a query here; a prefix must be at least MIN_PREFIX characters of [0-9a-f-] and match
exactly one row (of the tenant, when one is given).
"""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from orchestrator.errors import InvalidInput
from orchestrator.refs import FULL_ID_LENGTH, MIN_PREFIX

_PREFIX = re.compile(r"[0-9a-f-]+")


def resolve_id(session: Session, model: Any, given: str, *, tenant_id: str | None = None,
               what: str = "id", live_only: bool = False) -> str:
    """The full id that `given` abbreviates; `given` itself when it is not a usable prefix (the
    caller's lookup then reports NotFound). InvalidInput when the prefix names several rows."""
    given = given.strip().lower()
    if len(given) >= FULL_ID_LENGTH or len(given) < MIN_PREFIX or not _PREFIX.fullmatch(given):
        return given
    stmt = select(model.id).where(model.id.startswith(given, autoescape=True)).order_by(model.id).limit(6)
    if tenant_id is not None:
        stmt = stmt.where(model.tenant_id == tenant_id)
    if live_only:
        stmt = stmt.where(model.deleted_at.is_(None))
    matches = list(session.scalars(stmt))
    if len(matches) > 1:
        shown = ", ".join(m[:12] for m in matches[:5]) + (", ..." if len(matches) > 5 else "")
        raise InvalidInput(f"{what} prefix {given!r} is ambiguous: it starts {shown}; give more characters")
    return matches[0] if matches else given
