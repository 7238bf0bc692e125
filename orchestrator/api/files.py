"""`/v1/files`: a tenant's data sets (and the built-in ones) as OpenAI's file objects.

An upload is validated whole before anything is stored (`services.datasets.upload_stream`): a bad
file is a 400 whose message lists the first bad rows with their line numbers; its format decides
its task kind. The file's name is kept for display only: files are stored by id.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Literal

from fastapi import APIRouter, Depends, File, Form, UploadFile
from fastapi.responses import FileResponse, Response

from orchestrator.api.auth import Caller, tenant_caller
from orchestrator.api.deps import db_session, settings
from orchestrator.api.errors import ApiError
from orchestrator.api.pages import Limit, page
from orchestrator.config import Settings

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

# The dependencies of every route: the caller (its tenant scopes every query), a registry
# session, the app's settings.
Tenant = Annotated[Caller, Depends(tenant_caller)]
Db = Annotated["Session", Depends(db_session)]
Config = Annotated[Settings, Depends(settings)]
router = APIRouter(prefix="/v1/files", tags=["files"])
PURPOSE = "fine-tune"


def _deleted(file_id: str) -> dict:
    return {"id": file_id, "object": "file", "deleted": True}


@router.post("")
def create_file(caller: Tenant, session: Db, config: Config, file: UploadFile = File(...),
                purpose: str = Form(...)) -> dict:
    """Upload a JSONL data set (`purpose` "fine-tune"): chat (`{"messages": [...]}`) or
    prompt/completion rows train generation, text[/text_pair]/label rows classification."""
    from orchestrator.errors import TooLarge
    from orchestrator.services.datasets import upload_stream
    from orchestrator.services.files import dataset_view

    if purpose != PURPOSE:
        raise ApiError(400, f"purpose {purpose[:40]!r} is not supported; allowed: {PURPOSE!r}",
                       param="purpose")
    try:
        dataset = upload_stream(session, caller.tenant_slug, file.file, file.filename, settings=config)
    except TooLarge as exc:
        raise ApiError(413, str(exc), param="file", code="request_too_large") from None
    return dataset_view(dataset).to_dict()


@router.get("")
def list_files(caller: Tenant, session: Db, config: Config, after: str | None = None, limit: Limit = 20,
               order: Literal["asc", "desc"] = "desc", purpose: str | None = None) -> dict:
    """The tenant's files and the built-in ones, newest first (`order=asc`: oldest first)."""
    from orchestrator.services.files import list_files as listed

    views, more = listed(session, caller.tenant_slug, after=after, limit=limit, order=order, purpose=purpose,
                         settings=config)
    return page([v.to_dict() for v in views], more)


@router.get("/{file_id}")
def retrieve_file(file_id: str, caller: Tenant, session: Db,
                  config: Config) -> dict:
    from orchestrator.services.files import get_file

    return get_file(session, file_id, caller.tenant_slug, config).to_dict()


@router.get("/{file_id}/content", response_class=Response)
def file_content(file_id: str, caller: Tenant, session: Db, config: Config) -> Response:
    """The file's bytes exactly as uploaded, or a job's result CSV (the built-in files' content is
    not served: 400)."""
    from orchestrator.services.files import file_content as stored

    content = stored(session, file_id, caller.tenant_slug, config)
    if isinstance(content, bytes):
        return Response(content, media_type="text/csv")
    # No filename in the headers: the name is the tenant's text, shown only in the JSON objects.
    return FileResponse(content, media_type="application/jsonl")


@router.delete("/{file_id}")
def delete_file(file_id: str, caller: Tenant, session: Db,
                config: Config) -> dict:
    """Delete the tenant's file; refused (400) for a built-in one or while queued or running jobs
    use it (the message names them)."""
    from orchestrator.services.files import delete_file as deleted

    return _deleted(deleted(session, file_id, caller.tenant_slug, config))
