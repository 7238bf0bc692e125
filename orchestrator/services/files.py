"""Files, as the tenants' API names them: a tenant's data sets plus the built-in ones.

A minimal stand-in (the fine-tuning request's `training_source`) until the files service lands:
the built-in data sets have fixed ids, `builtin-glue-<task>` for the 8 GLUE tasks and
`builtin-e2e`; training on one trains that task with its official metric.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from lora_engine.catalog import GLUE_TASKS
from orchestrator.errors import NotFound
from orchestrator.refs import FULL_ID_LENGTH
from orchestrator.services.datasets import dataset_or_404
from orchestrator.services.tenants import tenant_or_404

BUILTIN_PREFIX = "builtin-"
# file id -> the task it trains (lora_engine.catalog.TASKS' name)
BUILTIN_TASKS: dict[str, str] = {**{f"builtin-glue-{t}": t for t in GLUE_TASKS}, "builtin-e2e": "e2e"}


def training_source(session: Session, file_id: str, tenant: str) -> tuple[str, Any]:
    """Inside a caller's transaction (the job's submission): what `training_file` (or
    `validation_file`) names: ("task", <TASKS name>) for a built-in file, else ("dataset", Dataset)
    for the tenant's own data set. NotFound for anything else, another tenant's files included."""
    if file_id.startswith(BUILTIN_PREFIX):
        if file_id not in BUILTIN_TASKS:
            raise NotFound(f"no file {file_id[:80]!r}; the built-in files are {', '.join(BUILTIN_TASKS)}")
        return "task", BUILTIN_TASKS[file_id]
    tenant_id = tenant_or_404(session, tenant).id
    try:
        if len(file_id) > FULL_ID_LENGTH:
            raise NotFound(file_id)
        return "dataset", dataset_or_404(session, file_id, tenant_id)
    except NotFound:
        raise NotFound(f"no file {file_id[:80]!r}") from None
