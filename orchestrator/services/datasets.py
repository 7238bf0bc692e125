"""Tenants' data sets: upload (validate whole, store a copy by id), list, show, delete, and the
worker's look-up of exactly the stored bytes.

An upload is validated whole before anything is stored (every bad row with its line number, as
`lora_engine.data.custom.validate_jsonl` reports them, plus file-level checks: empty, too large,
too few rows per label, mixed label types); then the file is copied byte for byte to
`<artifacts>/<tenant_id>/datasets/<dataset_id>/data.jsonl` (a validation file beside it as
`data.validation.jsonl`, which the engine reads as the validation split) through a temporary
folder and a rename, and its sha256 is recorded. The same bytes uploaded again by the same
tenant return the existing data set (so a retried `job submit --dataset FILE` stores nothing new).
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.orm import Session

from lora_engine.atomic import atomic_folder
from lora_engine.data.custom import profile_rows, sparse_label_problems, validate_jsonl
from lora_engine.errors import DataValidationError
from orchestrator.config import Settings, get_settings
from orchestrator.errors import InvalidInput, InvalidState, NotFound
from orchestrator.paths import confine
from orchestrator.registry import repositories as repo
from orchestrator.registry.models import Dataset, Tenant, new_id, utcnow
from orchestrator.services._tx import readonly, transactional
from orchestrator.services.ids import resolve_id
from orchestrator.services.tenants import tenant_or_404

KINDS = ("classification", "generation")
DATA_FILE = "data.jsonl"
VALIDATION_FILE = "data.validation.jsonl"
MIN_ROWS_PER_LABEL = 2  # a label seen once can be learnt by heart, never generalised


def dataset_dir(settings: Settings, tenant_id: str, dataset_id: str) -> Path:
    """Where a data set's files live: built from ids only."""
    return settings.artifacts / tenant_id / "datasets" / dataset_id


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class _Checked:
    source: Path
    validation: Path | None
    kind: str
    rows: list[dict]
    validation_rows: list[dict] | None


def check_dataset_files(
    file: str | Path, kind: str, validation: str | Path | None = None, *, settings: Settings | None = None
) -> _Checked:
    """Confine and validate an upload; nothing is written. InvalidInput / DataValidationError."""
    settings = settings or get_settings()
    if kind not in KINDS:
        raise InvalidInput(f"unknown data set kind {kind!r}; allowed: {', '.join(KINDS)}")
    source = confine(file, settings, "dataset")
    if not source.is_file():
        raise InvalidInput(f"dataset: no such file {str(file)!r}")
    rows = validate_jsonl(source, kind, max_bytes=settings.max_dataset_bytes)
    sparse_label_problems(source, kind, MIN_ROWS_PER_LABEL)
    val_path, val_rows = None, None
    if validation is not None:
        val_path = confine(validation, settings, "validation")
        if not val_path.is_file():
            raise InvalidInput(f"validation: no such file {str(validation)!r}")
        val_rows = validate_jsonl(val_path, kind, max_bytes=settings.max_dataset_bytes, min_labels=1)
        if kind == "classification" and type(val_rows[0]["label"]) is not type(rows[0]["label"]):
            raise DataValidationError(str(val_path), [(0, "label type differs from the training file's")])
    return _Checked(source, val_path, kind, rows, val_rows)


def _same_upload(session: Session, tenant: Tenant, checked: _Checked, sha: str, val_sha: str | None):
    for existing in repo.datasets_by_sha256(session, tenant.id, sha):
        if existing.kind == checked.kind and existing.validation_sha256 == val_sha:
            return existing
    return None


def store_dataset(
    session: Session, tenant: Tenant, checked: _Checked, settings: Settings, staged: list[Path] | None = None
) -> Dataset:
    """Inside a caller's transaction: the Dataset row for a checked upload (an identical earlier
    upload of this tenant is reused). New folders are appended to `staged`, for the caller to
    remove if its transaction fails."""
    from orchestrator.services.quotas import check_storage

    sha = sha256_of(checked.source)
    val_sha = sha256_of(checked.validation) if checked.validation else None
    existing = _same_upload(session, tenant, checked, sha, val_sha)
    if existing is not None:
        return existing
    size = checked.source.stat().st_size
    val_size = checked.validation.stat().st_size if checked.validation else None
    check_storage(session, tenant, size + (val_size or 0))
    dataset_id = new_id()
    final = dataset_dir(settings, tenant.id, dataset_id)
    with atomic_folder(final) as tmp:
        shutil.copyfile(checked.source, tmp / DATA_FILE)
        if checked.validation:
            shutil.copyfile(checked.validation, tmp / VALIDATION_FILE)
        if sha256_of(tmp / DATA_FILE) != sha:  # the file changed while it was being copied
            raise InvalidInput(f"dataset: {checked.source.name} changed during the upload; upload it again")
    if staged is not None:
        staged.append(final)
    profile = profile_rows(checked.rows, checked.kind)
    dataset = Dataset(
        id=dataset_id, tenant_id=tenant.id, kind=checked.kind, name=checked.source.name[:255],
        path=str(final),
        sha256=sha, bytes=size, rows=profile.rows, duplicate_rows=profile.duplicate_rows,
        label_counts=profile.label_counts, token_estimate=profile.token_estimate,
        validation_sha256=val_sha, validation_bytes=val_size,
        validation_rows=len(checked.validation_rows) if checked.validation_rows is not None else None,
        created_at=utcnow(),
    )
    session.add(dataset)
    session.flush()
    return dataset


def unstored_dataset(tenant: Tenant, checked: _Checked) -> Dataset:
    """A Dataset object describing a checked file, not stored nor added to the session (dry run)."""
    profile = profile_rows(checked.rows, checked.kind)
    name = checked.source.name[:255]
    return Dataset(id=None, tenant_id=tenant.id, kind=checked.kind, name=name, path="",
                   sha256="", bytes=checked.source.stat().st_size, rows=profile.rows,
                   duplicate_rows=profile.duplicate_rows, label_counts=profile.label_counts,
                   token_estimate=profile.token_estimate,
                   validation_sha256="given" if checked.validation else None)


def remove_staged(staged: list[Path]) -> None:
    for folder in staged:
        shutil.rmtree(folder, ignore_errors=True)


@transactional
def upload_dataset(
    session: Session,
    tenant_slug: str,
    file: str | Path,
    kind: str = "classification",
    validation: str | Path | None = None,
    settings: Settings | None = None,
) -> Dataset:
    """Validate a tenant's JSONL file whole and store a copy by id (see the module docstring)."""
    settings = settings or get_settings()
    tenant = tenant_or_404(session, tenant_slug)
    checked = check_dataset_files(file, kind, validation, settings=settings)
    staged: list[Path] = []
    try:
        dataset = store_dataset(session, tenant, checked, settings, staged)
        session.flush()
    except BaseException:
        remove_staged(staged)
        raise
    return dataset


@readonly
def list_datasets(
    session: Session, tenant: str | None = None, include_deleted: bool = False
) -> Sequence[Dataset]:
    tenant_id = tenant_or_404(session, tenant).id if tenant is not None else None
    return repo.datasets(session, tenant_id=tenant_id, include_deleted=include_deleted)


def dataset_or_404(session: Session, dataset_id: str, tenant_id: str | None, scope: str = "") -> Dataset:
    """The live data set `dataset_id` (a full id or a unique prefix, as `dataset list` shows)."""
    dataset_id = resolve_id(session, Dataset, dataset_id, tenant_id=tenant_id, what="data set id",
                            live_only=True)
    dataset = repo.dataset(session, dataset_id, tenant_id=tenant_id)
    if dataset is None:
        raise NotFound(f"no data set {dataset_id!r}{scope} (see `lorafleet dataset list`)")
    return dataset


@readonly
def get_dataset(session: Session, dataset_id: str, tenant: str | None = None) -> Dataset:
    tenant_id = tenant_or_404(session, tenant).id if tenant is not None else None
    return dataset_or_404(session, dataset_id, tenant_id, f" for tenant {tenant!r}" if tenant else "")


@transactional
def delete_dataset(
    session: Session, dataset_id: str, tenant: str | None = None, settings: Settings | None = None
) -> Dataset:
    """Remove a data set's files (the row stays, marked deleted, for the jobs that used it).
    Refused while a queued or running job needs it."""
    settings = settings or get_settings()
    tenant_id = tenant_or_404(session, tenant).id if tenant is not None else None
    dataset = dataset_or_404(session, dataset_id, tenant_id, f" for tenant {tenant!r}" if tenant else "")
    waiting = repo.active_jobs_of_dataset(session, dataset.id)
    if waiting:
        raise InvalidState(f"data set {dataset.id} is used by {len(waiting)} queued or running job(s) "
                           f"({', '.join(waiting[:3])}); cancel them or wait for them to end")
    dataset.deleted_at = utcnow()
    session.flush()
    shutil.rmtree(dataset_dir(settings, dataset.tenant_id, dataset.id), ignore_errors=True)
    return dataset


@readonly
def dataset_for_training(
    session: Session, dataset_id: str, tenant_id: str, settings: Settings | None = None
) -> Path:
    """The worker's side: the stored `data.jsonl` of the job's data set, after checking that its
    bytes are exactly the validated ones (sha256). DataValidationError (permanent) otherwise."""
    settings = settings or get_settings()
    dataset = repo.dataset(session, dataset_id, tenant_id=tenant_id)
    if dataset is None:
        raise DataValidationError(dataset_id, [(0, "data set deleted or not this tenant's; nothing trained")])
    path = dataset_dir(settings, tenant_id, dataset.id) / DATA_FILE
    if not path.is_file():
        raise DataValidationError(dataset_id, [(0, f"stored file {path} is missing; upload the data again")])
    if sha256_of(path) != dataset.sha256:
        raise DataValidationError(dataset_id, [(0, "stored file no longer matches the sha256 recorded at "
                                                   "upload; refusing to train on changed data")])
    val = path.with_name(VALIDATION_FILE)
    if dataset.validation_sha256 and (not val.is_file() or sha256_of(val) != dataset.validation_sha256):
        raise DataValidationError(dataset_id, [(0, "stored validation file missing or changed since upload")])
    return path

