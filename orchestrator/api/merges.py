"""`POST /v1/fine_tuning/merges`: a tenant merges its own adapters into a new one (lorafleet's,
no OpenAI counterpart). The body names the adapters by `ft:` name or id:

    {"models": ["ft:…", "ft:…"], "method": "ties", "weights": [0.6, 0.4], "density": 0.5,
     "seed": 0, "suffix": "blend"}

The answer is the merge job as a `fine_tuning.job` object (`lorafleet.kind` "merge"), followed
under /v1/fine_tuning/jobs like any job; the new adapter appears in /v1/models once it succeeded.
Thin: `services.adapter_merging.merge_request` reads the body, `submit_merge` checks the rest
with the caller's tenant (another tenant's adapter is a 404, as one that does not exist).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Body, Depends

from orchestrator.api.auth import Caller, tenant_caller
from orchestrator.api.deps import db_session

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

Tenant = Annotated[Caller, Depends(tenant_caller)]
Db = Annotated["Session", Depends(db_session)]
router = APIRouter(prefix="/v1/fine_tuning/merges", tags=["fine-tuning"])


@router.post("")
def create_merge(caller: Tenant, session: Db, body: Annotated[Any, Body()]) -> dict:
    """Queue a merge of the caller's adapters; the merge job's object."""
    from orchestrator.services.adapter_merging import merge_request, submit_merge
    from orchestrator.services.fine_tuning_views import created_job_object

    job = submit_merge(session, caller.tenant_slug, **merge_request(body))
    return created_job_object(session, job, caller.tenant_slug)
