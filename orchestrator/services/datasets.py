"""Tenants' data sets: upload (validate whole, store a copy by id), list, show, delete, and the
worker's look-up of exactly the stored bytes.

An upload is read once: the user's file is confined and opened by `orchestrator.paths` (a regular
file inside a data root, at most `max_dataset_bytes`) and copied, hashed on the way, into a private
staging folder under the artifacts root; everything after reads that copy. It is validated whole
before anything is registered (every bad row with its line number, as
`lora_engine.data.custom.validate_jsonl` reports them, plus file-level checks: empty, too few rows
per label, mixed label types); then the staging folder is renamed to
`<artifacts>/<tenant_id>/datasets/<dataset_id>/` holding `data.jsonl` (and
`data.validation.jsonl` when a validation file was given, which the engine reads as the validation
split) and its sha256 is recorded. The same bytes uploaded again by the same tenant return the
existing data set (so a retried `job submit --dataset FILE` stores nothing new).

An upload over the network (`upload_stream`, the API's POST /v1/files) is read from its byte
stream into the staging folder, at most `max_dataset_bytes` (TooLarge), and goes on the same way;
its file name is kept for display only. The rows' format (`Dataset.format`, see
`lora_engine.data.custom.FORMATS`) decides the kind when none is given.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from sqlalchemy.orm import Session

from lora_engine.atomic import fsync_tree, move_into_place, private_dir
from lora_engine.data.custom import FORMAT_NAMES, ParsedFile, profile_rows, read_jsonl, sparse_label_problems
from lora_engine.errors import DataValidationError
from orchestrator import paths
from orchestrator.config import Settings, get_settings
from orchestrator.errors import InvalidInput, InvalidState, NotFound, TooLarge
from orchestrator.registry import repositories as repo
from orchestrator.registry.models import Dataset, Tenant, new_id, utcnow
from orchestrator.services._tx import readonly, transactional
from orchestrator.services.ids import resolve_id
from orchestrator.services.tenants import tenant_or_404

KINDS = ("classification", "generation")
DATA_FILE = "data.jsonl"
VALIDATION_FILE = "data.validation.jsonl"
MIN_ROWS_PER_LABEL = 2  # a label seen once can be learnt by heart, never generalised
SIZE_VAR = "LORAFLEET_MAX_DATASET_BYTES"


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
class CheckedUpload:
    """A validated upload, in its private staging folder: moved into place by `store_dataset`,
    removed by `remove_staged` (the caller lists `staging` among its staged folders)."""

    staging: Path  # holds DATA_FILE, and VALIDATION_FILE when a validation file was given
    name: str  # the file's name as the user gave it (display only)
    kind: str
    rows: list[dict]
    sha256: str
    size: int
    validation_rows: list[dict] | None = None
    validation_sha256: str | None = None
    validation_size: int | None = None
    format: str = "text_label"  # lora_engine.data.custom.FORMATS: it decides `kind`

    @property
    def data(self) -> Path:
        """lorafleet's copy of the training file (the engine reads VALIDATION_FILE beside it)."""
        return self.staging / DATA_FILE


def _validated(dest: Path, shown: str, settings: Settings, kind: str | None, min_labels: int) -> ParsedFile:
    """lorafleet's copy `dest` validated whole; problems name the user's file (`shown`)."""
    try:
        parsed = read_jsonl(dest, kind, max_bytes=settings.max_dataset_bytes, min_labels=min_labels)
        if min_labels > 1:
            sparse_label_problems(dest, parsed.kind, MIN_ROWS_PER_LABEL)
    except DataValidationError as exc:
        raise DataValidationError(shown, exc.problems) from None
    return parsed


def _copy_in(file: str | Path, settings: Settings, what: str, dest: Path, kind: str | None, min_labels: int
             ) -> tuple[paths.CopiedFile, ParsedFile]:
    """Copy the user's file to `dest` and validate the copy; problems name the user's file."""
    copied = paths.copy_file(file, settings, what, dest, cap=settings.max_dataset_bytes, cap_var=SIZE_VAR)
    return copied, _validated(dest, str(file), settings, kind, min_labels)


def _check_kind(kind: str | None) -> None:
    if kind is not None and kind not in KINDS:
        raise InvalidInput(f"unknown data set kind {kind!r}; allowed: {', '.join(KINDS)}")


def new_staging(settings: Settings) -> Path:
    """A new private folder under the artifacts root for one upload (removed by its caller)."""
    staging = private_dir(settings.artifacts) / f".incoming-{uuid.uuid4().hex}"
    staging.mkdir(mode=0o700)
    return staging


def check_dataset_files(
    file: str | Path, kind: str | None, validation: str | Path | None = None, *,
    settings: Settings | None = None,
) -> CheckedUpload:
    """Copy an upload (confined, bounded) into a new staging folder and validate it whole; nothing
    is registered. `kind` None: the file's format decides it. PathRefused / InvalidInput /
    DataValidationError (the staging folder removed)."""
    settings = settings or get_settings()
    _check_kind(kind)
    paths.regular_file(file, settings, "dataset", cap=settings.max_dataset_bytes, cap_var=SIZE_VAR)
    staging = new_staging(settings)
    try:
        copied, parsed = _copy_in(file, settings, "dataset", staging / DATA_FILE, kind, 2)
        checked = CheckedUpload(staging, Path(str(file)).name, parsed.kind, parsed.rows, copied.sha256,
                                copied.size, format=parsed.format)
        if validation is not None:
            val, val_parsed = _copy_in(validation, settings, "validation", staging / VALIDATION_FILE,
                                       parsed.kind, 1)
            _same_format(str(validation), parsed, val_parsed)
            checked = dataclasses.replace(checked, validation_rows=val_parsed.rows,
                                          validation_sha256=val.sha256, validation_size=val.size)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return checked


def _same_format(shown: str, train: ParsedFile, validation: ParsedFile) -> None:
    if validation.format != train.format:
        raise DataValidationError(shown, [(0, f"{FORMAT_NAMES[validation.format]} rows, but the training "
                                              f"file's are {FORMAT_NAMES[train.format]}; use one format")])
    if train.format == "text_label" and type(validation.rows[0]["label"]) is not type(train.rows[0]["label"]):
        raise DataValidationError(shown, [(0, "label type differs from the training file's")])


def _read_upload(stream: BinaryIO, dest: Path, cap: int) -> tuple[str, int]:
    """Copy an upload's byte stream into lorafleet's new file `dest` (owner-only), at most `cap`
    bytes (one more is a refusal naming `SIZE_VAR`): (sha256, size)."""
    digest, size = hashlib.sha256(), 0
    with open(os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600), "wb") as out:
        while chunk := stream.read(min(1 << 20, cap + 1 - size)):
            size += len(chunk)
            if size > cap:
                raise TooLarge(f"the file is over the limit of {cap} bytes ({SIZE_VAR})")
            digest.update(chunk)
            out.write(chunk)
    return digest.hexdigest(), size


def _same_upload(session: Session, tenant: Tenant, checked: CheckedUpload) -> Dataset | None:
    for existing in repo.datasets_by_sha256(session, tenant.id, checked.sha256):
        if (existing.kind, existing.format, existing.validation_sha256) == (
                checked.kind, checked.format, checked.validation_sha256):
            return existing
    return None


def store_dataset(
    session: Session, tenant: Tenant, checked: CheckedUpload, settings: Settings,
    staged: list[Path] | None = None,
) -> Dataset:
    """Inside a caller's transaction: the Dataset row for a checked upload, its staging folder
    renamed into place (an identical earlier upload of this tenant is reused, the staging folder
    removed). The new folder is appended to `staged`, for the caller to remove if its transaction
    fails."""
    from orchestrator.services.quotas import check_storage

    existing = _same_upload(session, tenant, checked)
    if existing is not None:
        shutil.rmtree(checked.staging, ignore_errors=True)
        return existing
    check_storage(session, tenant, checked.size + (checked.validation_size or 0))
    dataset_id = new_id()
    final = dataset_dir(settings, tenant.id, dataset_id)
    fsync_tree(checked.staging)
    move_into_place(checked.staging, private_dir(final.parent) / final.name)
    if staged is not None:
        staged.append(final)
    profile = profile_rows(checked.rows, checked.kind)
    dataset = Dataset(
        id=dataset_id, tenant_id=tenant.id, kind=checked.kind, format=checked.format, name=checked.name[:255],
        path=str(final),
        sha256=checked.sha256, bytes=checked.size, rows=profile.rows, duplicate_rows=profile.duplicate_rows,
        label_counts=profile.label_counts, token_estimate=profile.token_estimate,
        validation_sha256=checked.validation_sha256, validation_bytes=checked.validation_size,
        validation_rows=len(checked.validation_rows) if checked.validation_rows is not None else None,
        created_at=utcnow(),
    )
    session.add(dataset)
    session.flush()
    return dataset


def unstored_dataset(tenant: Tenant, checked: CheckedUpload) -> Dataset:
    """A Dataset object describing a checked upload, not stored nor added to the session (dry run)."""
    profile = profile_rows(checked.rows, checked.kind)
    return Dataset(id=None, tenant_id=tenant.id, kind=checked.kind, format=checked.format,
                   name=checked.name[:255], path="",
                   sha256=checked.sha256, bytes=checked.size, rows=profile.rows,
                   duplicate_rows=profile.duplicate_rows, label_counts=profile.label_counts,
                   token_estimate=profile.token_estimate,
                   validation_sha256=checked.validation_sha256)


def remove_staged(staged: list[Path]) -> None:
    for folder in staged:
        shutil.rmtree(folder, ignore_errors=True)


@transactional
def upload_dataset(
    session: Session,
    tenant_slug: str,
    file: str | Path,
    kind: str | None = "classification",
    validation: str | Path | None = None,
    settings: Settings | None = None,
) -> Dataset:
    """Validate a tenant's JSONL file whole and store a copy by id (see the module docstring).
    `kind` None: the file's format decides it (chat, prompt/completion: generation; text/label:
    classification)."""
    settings = settings or get_settings()
    tenant = tenant_or_404(session, tenant_slug)
    checked = check_dataset_files(file, kind, validation, settings=settings)
    staged: list[Path] = [checked.staging]
    try:
        dataset = store_dataset(session, tenant, checked, settings, staged)
        session.flush()
    except BaseException:
        remove_staged(staged)
        raise
    return dataset


def display_name(filename: str | None) -> str:
    """An uploaded file's name as the registry keeps it (shown, never a path): at most 255
    characters, without what a database text column refuses (NUL, lone surrogates)."""
    name = (filename or "upload.jsonl").encode("utf-8", "replace").decode("utf-8").replace("\x00", "\ufffd")
    return name[:255] or "upload.jsonl"


@transactional
def upload_stream(
    session: Session,
    tenant_slug: str,
    stream: BinaryIO,
    filename: str | None,
    kind: str | None = None,
    settings: Settings | None = None,
) -> Dataset:
    """`upload_dataset` for bytes that arrive over the network (the API's POST /v1/files): read
    into a staging folder (at most `max_dataset_bytes`: TooLarge), validated whole, stored by id.
    `kind` None: the file's format decides it. `filename` is kept for display only."""
    settings = settings or get_settings()
    _check_kind(kind)
    tenant = tenant_or_404(session, tenant_slug)
    name = display_name(filename)
    staged: list[Path] = [new_staging(settings)]
    try:
        sha256, size = _read_upload(stream, staged[0] / DATA_FILE, settings.max_dataset_bytes)
        parsed = _validated(staged[0] / DATA_FILE, name, settings, kind, 2)
        checked = CheckedUpload(staged[0], name, parsed.kind, parsed.rows, sha256, size, format=parsed.format)
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
    return remove_dataset(session, dataset, settings)


def remove_dataset(session: Session, dataset: Dataset, settings: Settings) -> Dataset:
    """Inside a caller's transaction: `delete_dataset` of a data set already looked up."""
    waiting = repo.active_jobs_of_dataset(session, dataset.id)
    if waiting:
        raise InvalidState(f"data set {dataset.id} is used by {len(waiting)} queued, running or paused "
                           f"job(s) ({', '.join(waiting[:3])}); cancel them or wait for them to end")
    dataset.deleted_at = utcnow()
    session.flush()
    shutil.rmtree(dataset_dir(settings, dataset.tenant_id, dataset.id), ignore_errors=True)
    return dataset


def stored_file(settings: Settings, dataset: Dataset) -> Path:
    """The stored `data.jsonl` of a registered data set (its folder is built from ids only)."""
    return dataset_dir(settings, dataset.tenant_id, dataset.id) / DATA_FILE


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
    path = stored_file(settings, dataset)
    if not path.is_file():
        raise DataValidationError(dataset_id, [(0, f"stored file {path} is missing; upload the data again")])
    if sha256_of(path) != dataset.sha256:
        raise DataValidationError(dataset_id, [(0, "stored file no longer matches the sha256 recorded at "
                                                   "upload; refusing to train on changed data")])
    val = path.with_name(VALIDATION_FILE)
    if dataset.validation_sha256 and (not val.is_file() or sha256_of(val) != dataset.validation_sha256):
        raise DataValidationError(dataset_id, [(0, "stored validation file missing or changed since upload")])
    return path

