"""Files, as the tenants' API shows them: a tenant's data sets plus the built-in ones.

A tenant's file IS one of its data sets (`services.datasets`: validated whole at upload, stored
by id with its sha256, counted against the storage quota); its format decides its task kind
(chat and prompt/completion: generation; text/label: classification).

The built-in data sets are files every tenant sees, read-only, with fixed ids:
`builtin-glue-<task>` for the 8 GLUE tasks (`lora_engine.catalog.GLUE_TASKS`: cola, sst2, mrpc,
stsb, rte, qnli, mnli, qqp) and `builtin-e2e`. Training on one trains that task with its official
metric (`training_source`). They cannot be deleted (400, saying why) and their content is not
served (400): they are references to lorafleet's task data, whose rows are not in a format a
tenant uploads. Their `bytes` are the local data files' sizes (train + validation; 0 when the
task reads from the hub instead, since OpenAI's file object has no null size) and their
`created_at` is 0, so they sort as the oldest files.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from lora_engine.catalog import GLUE_TASKS
from orchestrator.config import Settings, get_settings
from orchestrator.errors import InvalidInput, NotFound
from orchestrator.refs import FULL_ID_LENGTH
from orchestrator.registry import repositories as repo
from orchestrator.registry.models import Dataset
from orchestrator.services._tx import readonly, transactional
from orchestrator.services.datasets import dataset_or_404, remove_dataset, stored_file
from orchestrator.services.fine_tuning_views import RESULT_PREFIX, result_file
from orchestrator.services.tenants import tenant_or_404

PURPOSE = "fine-tune"
ORDERS = ("asc", "desc")
BUILTIN_PREFIX = "builtin-"
# file id -> the task it trains (lora_engine.catalog.TASKS' name)
BUILTIN_TASKS: dict[str, str] = {**{f"builtin-glue-{t}": t for t in GLUE_TASKS}, "builtin-e2e": "e2e"}


@dataclass(frozen=True)
class FileView:
    """One file as the API shows it (OpenAI's file object, `to_dict`)."""

    id: str
    bytes: int
    created: float  # Unix seconds, to the microsecond: the list's order (ties: by id)
    filename: str
    builtin: bool = False
    purpose: str = PURPOSE

    @property
    def created_at(self) -> int:
        return int(self.created)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "object": "file", "bytes": self.bytes, "created_at": self.created_at,
                "filename": self.filename, "purpose": self.purpose, "status": "processed"}


def _builtin_files(settings: Settings, task: str) -> list[Path]:
    if task in GLUE_TASKS:
        return [settings.data_dir / "glue" / task / f"{split}.jsonl" for split in ("train", "validation")]
    return [settings.data_dir / "e2e" / f"{split}.csv" for split in ("train", "validation")]


def builtin_view(settings: Settings, file_id: str) -> FileView:
    task = BUILTIN_TASKS[file_id]
    size = sum(p.stat().st_size for p in _builtin_files(settings, task) if p.is_file())
    return FileView(file_id, size, 0.0, f"{task} (built-in)", builtin=True)


def dataset_view(dataset: Dataset) -> FileView:
    return FileView(dataset.id, dataset.bytes, dataset.created_at.timestamp(), dataset.name)


def _dataset(session: Session, file_id: str, tenant: str) -> Dataset:
    tenant_id = tenant_or_404(session, tenant).id
    try:
        if len(file_id) > FULL_ID_LENGTH:  # no id is longer: not worth a query
            raise NotFound(file_id)
        return dataset_or_404(session, file_id, tenant_id)
    except NotFound:
        raise NotFound(f"no file {file_id[:80]!r}") from None


def _builtin_or_404(file_id: str) -> str:
    if file_id not in BUILTIN_TASKS:
        raise NotFound(f"no file {file_id[:80]!r}; the built-in files are {', '.join(BUILTIN_TASKS)}")
    return file_id


@readonly
def list_files(
    session: Session, tenant: str, *, after: str | None = None, limit: int = 20, order: str = "desc",
    purpose: str | None = None, settings: Settings | None = None,
) -> tuple[list[FileView], bool]:
    """(a page of the tenant's files, whether more follow), by `created_at` then id in `order`;
    the page starts after the file `after` (an id from an earlier page: NotFound if none)."""
    settings = settings or get_settings()
    if order not in ORDERS:
        raise InvalidInput(f"order must be one of {', '.join(ORDERS)} (got {str(order)[:40]!r})")
    if purpose is not None and purpose != PURPOSE:
        return [], False  # no file of another purpose exists
    tenant_id = tenant_or_404(session, tenant).id
    views = [builtin_view(settings, file_id) for file_id in BUILTIN_TASKS]
    views += [dataset_view(d) for d in repo.datasets(session, tenant_id=tenant_id)]
    views.sort(key=lambda v: (v.created, v.id), reverse=order == "desc")
    start = 0
    if after is not None:
        ids = [v.id for v in views]
        if after not in ids:
            raise NotFound(f"no file {after[:80]!r} to list after")
        start = ids.index(after) + 1
    page = views[start:start + limit]
    return page, start + limit < len(views)


def _result_file(session: Session, file_id: str, tenant: str) -> tuple[FileView, str]:
    view, content = result_file(session, file_id, tenant)
    return FileView(view["id"], view["bytes"], float(view["created_at"]), view["filename"],
                    purpose=view["purpose"]), content


# get_file, file_content and delete_file send a job's result file (`result-<job id>`, its metrics
# history as CSV: services.fine_tuning_views.result_file) to that service, anything else to the
# data sets' own; each answer is one service call, one transaction.


def get_file(session: Session, file_id: str, tenant: str, settings: Settings | None = None) -> FileView:
    if file_id.startswith(RESULT_PREFIX):
        return _result_file(session, file_id, tenant)[0]
    return _get_file(session, file_id, tenant, settings)


def file_content(session: Session, file_id: str, tenant: str, settings: Settings | None = None
                 ) -> Path | bytes:
    """A tenant's file as uploaded (the path of its stored `data.jsonl`), or a result file's CSV."""
    if file_id.startswith(RESULT_PREFIX):
        return _result_file(session, file_id, tenant)[1].encode()
    return _file_content(session, file_id, tenant, settings)


def delete_file(session: Session, file_id: str, tenant: str, settings: Settings | None = None) -> str:
    """Delete a tenant's file (its data set: refused while queued, running or paused jobs use it,
    naming them); a built-in file or a job's result file is refused. Returns the deleted id."""
    if file_id.startswith(RESULT_PREFIX):
        _result_file(session, file_id, tenant)  # NotFound unless it is the tenant's
        raise InvalidInput(f"{file_id[:80]} is a job's result file: it is kept with its job and cannot be "
                           f"deleted")
    return _delete_file(session, file_id, tenant, settings)


@readonly
def _get_file(session: Session, file_id: str, tenant: str, settings: Settings | None = None) -> FileView:
    settings = settings or get_settings()
    if file_id.startswith(BUILTIN_PREFIX):
        return builtin_view(settings, _builtin_or_404(file_id))
    return dataset_view(_dataset(session, file_id, tenant))


@readonly
def _file_content(session: Session, file_id: str, tenant: str, settings: Settings | None = None) -> Path:
    settings = settings or get_settings()
    if file_id.startswith(BUILTIN_PREFIX):
        _builtin_or_404(file_id)
        raise InvalidInput(f"{file_id} is a built-in data set: its content is lorafleet's task data and "
                           f"is not served; train on it by its id")
    path = stored_file(settings, _dataset(session, file_id, tenant))
    if not path.is_file():
        raise NotFound(f"file {file_id} has no stored content (its files are gone); upload it again")
    return path


@transactional
def _delete_file(session: Session, file_id: str, tenant: str, settings: Settings | None = None) -> str:
    if file_id.startswith(BUILTIN_PREFIX):
        _builtin_or_404(file_id)
        raise InvalidInput(f"{file_id} is a built-in data set, shared by every tenant and read-only: it "
                           f"cannot be deleted")
    return remove_dataset(session, _dataset(session, file_id, tenant), settings or get_settings()).id


def training_source(session: Session, file_id: str, tenant: str) -> tuple[str, Any]:
    """Inside a caller's transaction (the job's submission): what `training_file` (or
    `validation_file`) names: ("task", <TASKS name>) for a built-in file (("task", "sst2") for
    builtin-glue-sst2, ("task", "e2e") for builtin-e2e), else ("dataset", Dataset) for the
    tenant's own data set (its `kind` and `format` decide the task kind). NotFound for anything
    else, another tenant's files included."""
    if file_id.startswith(BUILTIN_PREFIX):
        return "task", BUILTIN_TASKS[_builtin_or_404(file_id)]
    return "dataset", _dataset(session, file_id, tenant)
