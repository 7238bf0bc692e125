"""`/v1/fine_tuning/jobs`: OpenAI's fine-tuning jobs (create, list, retrieve, cancel, events,
checkpoints) and lorafleet's pause and resume. Thin: each route calls the services
(`services.fine_tuning`, `fine_tuning_views`, `jobs`, `pausing`) with the caller's tenant, which
scopes every query (another tenant's job is a 404)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Body, Depends, Request

from orchestrator.api.auth import Caller, tenant_caller
from orchestrator.api.deps import db_session, settings
from orchestrator.api.errors import ApiError
from orchestrator.api.pages import DEFAULT_LIMIT, Limit, page
from orchestrator.config import Settings

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

Tenant = Annotated[Caller, Depends(tenant_caller)]
Db = Annotated["Session", Depends(db_session)]
Config = Annotated[Settings, Depends(settings)]
router = APIRouter(prefix="/v1/fine_tuning/jobs", tags=["fine-tuning"])
METADATA_PARAM = "metadata["
MAX_METADATA_FILTERS = 16


@router.post("")
def create_job(caller: Tenant, session: Db, config: Config, body: Annotated[Any, Body()]) -> dict:
    """Create a fine-tuning job (OpenAI's request; lorafleet's own spec fields in `lorafleet`)."""
    from orchestrator.services.fine_tuning import RequestProblems, create_fine_tuning_job
    from orchestrator.services.fine_tuning_views import created_job_object

    try:
        job = create_fine_tuning_job(session, caller.tenant_slug, body, config)
    except RequestProblems as exc:
        raise ApiError(400, str(exc), param=exc.param) from None
    return created_job_object(session, job, caller.tenant_slug)


@contextmanager
def _job_named(job_id: str) -> Iterator[None]:
    """A job service's NotFound in the API's words (the services' own name the CLI)."""
    from orchestrator.errors import NotFound

    try:
        yield
    except NotFound:
        raise ApiError(404, f"no fine-tuning job {job_id[:80]!r}", code="not_found") from None


def _metadata_filters(request: Request) -> dict[str, str]:
    """`metadata[key]=value` query parameters (how the openai client sends a dict)."""
    filters = {}
    for name, value in request.query_params.multi_items():
        if name.startswith(METADATA_PARAM) and name.endswith("]"):
            filters[name[len(METADATA_PARAM):-1]] = value
        elif name not in ("after", "limit"):
            raise ApiError(400, f"unknown query parameter {name[:64]!r}; allowed: after, limit, "
                                f"metadata[key]", param=name[:64])
    if len(filters) > MAX_METADATA_FILTERS:
        raise ApiError(400, f"at most {MAX_METADATA_FILTERS} metadata filters", param="metadata")
    return filters


@router.get("")
def list_jobs(request: Request, caller: Tenant, session: Db, after: str | None = None,
              limit: Limit = DEFAULT_LIMIT) -> dict:
    """The tenant's jobs, newest first, a page at a time (`after`: the last id of the page before)."""
    from orchestrator.services.fine_tuning_views import list_fine_tuning_jobs

    jobs, more = list_fine_tuning_jobs(session, caller.tenant_slug, after=after, limit=limit,
                                       metadata=_metadata_filters(request))
    return page(jobs, more)


@router.get("/{job_id}")
def retrieve_job(job_id: str, caller: Tenant, session: Db) -> dict:
    from orchestrator.services.fine_tuning_views import get_fine_tuning_job

    return get_fine_tuning_job(session, job_id, caller.tenant_slug)


@router.post("/{job_id}/cancel")
def cancel(job_id: str, caller: Tenant, session: Db) -> dict:
    """Cancel: a queued or paused job now, a running one at its next step."""
    from orchestrator.services.fine_tuning_views import get_fine_tuning_job
    from orchestrator.services.jobs import cancel_job

    with _job_named(job_id):
        job = cancel_job(session, job_id, caller.tenant_slug)
    return get_fine_tuning_job(session, job.id, caller.tenant_slug)


@router.post("/{job_id}/pause")
def pause(job_id: str, caller: Tenant, session: Db) -> dict:
    """Pause: a queued job now, a running one at its next checkpoint (status `paused`)."""
    from orchestrator.services.fine_tuning_views import get_fine_tuning_job
    from orchestrator.services.pausing import pause_job

    with _job_named(job_id):
        job = pause_job(session, job_id, caller.tenant_slug)
    return get_fine_tuning_job(session, job.id, caller.tenant_slug)


@router.post("/{job_id}/resume")
def resume(job_id: str, caller: Tenant, session: Db) -> dict:
    """Resume a paused job: queued again, it continues from its checkpoint."""
    from orchestrator.services.fine_tuning_views import get_fine_tuning_job
    from orchestrator.services.pausing import resume_job

    with _job_named(job_id):
        job = resume_job(session, job_id, caller.tenant_slug)
    return get_fine_tuning_job(session, job.id, caller.tenant_slug)


@router.get("/{job_id}/events")
def events(job_id: str, caller: Tenant, session: Db, after: str | None = None,
           limit: Limit = DEFAULT_LIMIT) -> dict:
    """The job's events, newest first (`after`: the last id of the page before: older ones)."""
    from orchestrator.services.fine_tuning_views import fine_tuning_events

    data, more = fine_tuning_events(session, job_id, caller.tenant_slug, after=after, limit=limit)
    return page(data, more)


@router.get("/{job_id}/checkpoints")
def checkpoints(job_id: str, caller: Tenant, session: Db, after: str | None = None,
                limit: Limit = 10) -> dict:
    """The job's checkpoints, newest first."""
    from orchestrator.services.fine_tuning_views import fine_tuning_checkpoints

    data, more = fine_tuning_checkpoints(session, job_id, caller.tenant_slug, after=after, limit=limit)
    return page(data, more)
