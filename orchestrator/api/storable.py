"""Text the registry cannot hold is refused at the door: a 400 naming where it was.

PostgreSQL's text and JSON columns refuse the NUL character, and no driver encodes a lone UTF-16
surrogate (`"\\ud800"` is valid JSON, and a valid `%ED%A0%80` in a URL decodes to one). A string
carrying either, anywhere a tenant puts text (a path, a query parameter, a JSON body's keys and
values), would reach a query and fail there as a 500. No id, name, metadata or URL of ours can
hold such a character, so the API refuses them all in one place, before any route runs, with a
message naming the parameter or the body's field. (The CLI cannot pass a NUL: argv cannot hold
one.)
"""

from __future__ import annotations

from typing import Any

from fastapi import Request

from orchestrator.api.errors import ApiError

MAX_DEPTH = 64  # deeper JSON is refused by the routes' own validation; not worth walking further


def _bad(text: str) -> str | None:
    """What makes `text` unstorable, or None."""
    if "\x00" in text:
        return "contains a NUL character"
    if any("\ud800" <= ch <= "\udfff" for ch in text):
        return "contains a lone UTF-16 surrogate (not a character)"
    return None


def _walk(value: Any, where: str, depth: int = 0) -> tuple[str, str] | None:
    """(the field's location, the problem) of the first unstorable string in a JSON value."""
    if isinstance(value, str):
        problem = _bad(value)
        return (where, problem) if problem else None
    if depth > MAX_DEPTH:
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            problem = _bad(key)
            if problem:
                return (f"{where}.{key!r}" if where else repr(key), f"a key {problem}")
            found = _walk(item, f"{where}.{key}" if where else key, depth + 1)
            if found:
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found = _walk(item, f"{where}[{index}]", depth + 1)
            if found:
                return found
    return None


def _refuse(where: str, problem: str) -> ApiError:
    where = where.encode("unicode_escape").decode()[:100]
    return ApiError(400, f"{where}: {problem}; text here must be plain Unicode", param=where,
                    code="invalid_characters")


async def storable_text(request: Request) -> None:
    """The app's first dependency: 400 for a path segment, query parameter or JSON body string
    that holds a NUL or a lone surrogate."""
    for name, value in request.path_params.items():
        if isinstance(value, str) and _bad(value):
            raise _refuse(name, _bad(value) or "")
    for name, value in request.query_params.multi_items():
        problem = _bad(name) or _bad(value)
        if problem:
            raise _refuse(name, problem)
    if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
        return
    try:  # the route read the body already (Starlette keeps it); a route without one reads it here
        body = await request.json()
    except (ValueError, RecursionError):
        return  # not JSON: the route's own validation says so, or it takes no body
    found = _walk(body, "")
    if found:
        raise _refuse(found[0] or "body", found[1])
