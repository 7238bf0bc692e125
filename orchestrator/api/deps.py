"""Dependencies every route shares: the process's settings and a registry session per request."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from fastapi import Request

from orchestrator.api.errors import log
from orchestrator.config import Settings

if TYPE_CHECKING:
    from sqlalchemy.orm import Session


async def settings(request: Request) -> Settings:
    """The settings the app was created with (`app.state.settings`). A coroutine: FastAPI runs a
    plain function dependency in its thread pool, a hop per request for one attribute read."""
    return request.app.state.settings


def db_session(request: Request) -> Iterator[Session]:
    """A registry session for this request: each service call commits its own transaction, and
    the jobs those calls queued are sent to the broker once the session closes, as from the CLI.
    A broker that cannot be reached loses nothing: the jobs are committed, the reconciler sends."""
    from orchestrator.announce import sending_session

    with sending_session(request.app.state.settings, on_send_error=_broker_unreachable) as session:
        yield session


def _broker_unreachable(job_ids: list[str], exc: Exception) -> None:
    log.warning("%d job(s) committed but not sent (%s: %s); the reconciler will send them",
                len(job_ids), type(exc).__name__, str(exc)[:200])
