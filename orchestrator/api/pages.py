"""OpenAI's list shape and the `limit` query parameter that every list route shares."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Query

MAX_LIMIT = 100
DEFAULT_LIMIT = 20

# `limit: int = limit_param`, or `limit: Limit = DEFAULT_LIMIT`.
limit_param = Query(DEFAULT_LIMIT, ge=1, le=MAX_LIMIT, description=f"page size, 1..{MAX_LIMIT}")
Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT, description=f"page size, 1..{MAX_LIMIT}")]


def page(data: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    """`{"object": "list", "data", "has_more", "first_id", "last_id"}` (ids None for an empty page)."""
    return {"object": "list", "data": data, "has_more": has_more,
            "first_id": data[0].get("id") if data else None,
            "last_id": data[-1].get("id") if data else None}
