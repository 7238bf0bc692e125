"""Adapters: listing, lookup, deletion, and where a new adapter's files go.

Paths come from `orchestrator.artifacts` (built from ids only); `new_adapter_path` is re-exported
here for the services API.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from lora_engine.errors import AdapterError
from orchestrator.artifacts import adapter_path as new_adapter_path
from orchestrator.config import Settings, get_settings
from orchestrator.errors import NotFound
from orchestrator.registry import repositories as repo
from orchestrator.registry.models import Adapter, utcnow
from orchestrator.services._tx import readonly, transactional
from orchestrator.services.ids import resolve_id
from orchestrator.services.model_names import model_name, parse_model_name
from orchestrator.services.tenants import tenant_or_404

__all__ = [
    "ExportedAdapter",
    "adapter_or_404",
    "delete_adapter",
    "export_adapter",
    "get_adapter",
    "list_adapters",
    "model_names_of",
    "new_adapter_path",
    "parents_of",
    "verified_adapter",
]


@readonly
def list_adapters(
    session: Session, tenant: str | None = None, task: str | None = None, base_model: str | None = None,
    include_deleted: bool = False,
) -> Sequence[Adapter]:
    """Adapters (oldest first), optionally of one tenant (slug), task or base model."""
    tenant_id = tenant_or_404(session, tenant).id if tenant is not None else None
    return repo.adapters(session, tenant_id=tenant_id, task=task, base_model=base_model,
                         include_deleted=include_deleted)


@readonly
def model_names_of(session: Session, adapters: Sequence[Adapter]) -> dict[str, str]:
    """{adapter id: its model name} (`services.model_names`: the tenant's slug, and the suffix of
    the job that trained it, or its task for an adapter without one)."""
    slugs = repo.tenant_slugs(session, {a.tenant_id for a in adapters})
    suffixes = repo.job_suffixes(session, {a.job_id for a in adapters if a.job_id is not None})
    return {a.id: model_name(a, slugs[a.tenant_id], suffixes.get(a.job_id) if a.job_id else None)
            for a in adapters}


@readonly
def parents_of(session: Session, adapters: Sequence[Adapter]) -> dict[str, list[str]]:
    """{adapter id: the ids of the adapters it was merged from} (empty list: not a merge)."""
    found = repo.adapter_parents(session, [a.id for a in adapters])
    return {a.id: found.get(a.id, []) for a in adapters}


def adapter_or_404(session: Session, adapter_id: str, tenant: str | None = None) -> Adapter:
    """The live adapter `adapter_id` names: its id, a unique prefix, or its `ft:` model name."""
    tenant_id = tenant_or_404(session, tenant).id if tenant is not None else None
    adapter_id = parse_model_name(adapter_id) or adapter_id
    adapter_id = resolve_id(session, Adapter, adapter_id, tenant_id=tenant_id, what="adapter id",
                            live_only=True)
    row = repo.adapter(session, adapter_id, tenant_id=tenant_id)
    if row is None:
        scope = f" for tenant {tenant!r}" if tenant is not None else ""
        raise NotFound(f"no adapter {adapter_id!r}{scope} (see `lorafleet adapter list`)")
    return row


@readonly
def get_adapter(session: Session, adapter_id: str, tenant: str | None = None) -> Adapter:
    """A live (not deleted) adapter, or NotFound."""
    return adapter_or_404(session, adapter_id, tenant)


@readonly
def verified_adapter(session: Session, adapter_id: str, tenant: str | None = None) -> Adapter:
    """A live adapter whose files on disk still hash to the registry's sha256 (checked before
    every load: predict, export, a job continuing it). AdapterError when they do not."""
    from lora_engine.adapters.digest import verify_adapter_files

    row = adapter_or_404(session, adapter_id, tenant)
    verify_adapter_files(row.path, row.sha256)
    return row


@transactional
def delete_adapter(
    session: Session, adapter_id: str, tenant: str | None = None, settings: Settings | None = None
) -> Adapter:
    """Remove the adapter's files and mark the row deleted (jobs, metrics and usage keep their
    history; lineage still names it). Files outside the artifacts root are never touched."""
    settings = settings or get_settings()
    row = adapter_or_404(session, adapter_id, tenant)
    row.deleted_at = utcnow()
    path = Path(row.path).resolve()
    root = settings.artifacts.resolve()
    session.flush()
    if path.is_relative_to(root) and path != root:
        shutil.rmtree(path, ignore_errors=True)
    return row


@dataclass(frozen=True)
class ExportedAdapter:
    adapter: Adapter
    path: Path  # where the export went
    merged: bool  # a merged export (a plain transformers folder), else the adapter's own files
    # What a user must know to load it right (a mean-pooled head that the stock loader would
    # feed [CLS]; a merged export's trust_remote_code), or None.
    notice: str | None


@readonly
def export_adapter(
    session: Session, adapter_id: str, dest: Path, tenant: str | None = None,
    settings: Settings | None = None, *, merge: Callable[[Path, Path], Any] | None = None,
) -> ExportedAdapter:
    """Copy a live adapter's folder, its sha256 checked, to `dest`; with `merge`, write its merged
    export there instead: `merge(checked copy, folder)` (the CLI passes
    `lora_engine.adapters.merged_export.write_merged_folder`, which needs torch: the services import
    none) writes the LoRA merged into the base as a plain transformers folder.

    `dest` is checked first (orchestrator.destinations: a new or empty folder, never a device, a
    dangling link, the home or the artifacts root) and the copy is built beside it and renamed
    into place, checked again, so a failure leaves no half-exported folder. InvalidInput for a
    refused place, AdapterError when the adapter's files no longer match the registry.
    """
    from lora_engine.adapters.digest import adapter_files_digest, verify_adapter_files
    from lora_engine.adapters.modelcard import merged_notice
    from lora_engine.atomic import atomic_folder
    from orchestrator.destinations import folder_destination

    settings = settings or get_settings()
    target = folder_destination(dest, settings, "adapter export")
    row = adapter_or_404(session, adapter_id, tenant)
    verify_adapter_files(row.path, row.sha256)
    # An empty folder is removed first (rmdir refuses one that has filled up meanwhile), so the
    # rename below never replaces anything.
    if target.is_dir():
        target.rmdir()
    with atomic_folder(target) as tmp:
        # A merged export copies the adapter aside first: what is merged is what was checked.
        merged = merge is not None
        source = tmp / ".adapter" if merged else tmp
        shutil.copytree(row.path, source, dirs_exist_ok=True)
        if adapter_files_digest(source)[0] != row.sha256:
            raise AdapterError(f"adapter {row.id} changed while it was being exported; nothing was written")
        if merge is not None:
            folder = merge(source, tmp)
            shutil.rmtree(source)
            notice = merged_notice(folder) if folder.remote_code else None
        else:
            notice = _loader_notice(tmp)
    return ExportedAdapter(row, target, merged, notice)


def _loader_notice(folder: Path) -> str | None:
    """`modelcard.loader_notice` of an adapter folder; None when its record cannot say (the files
    are exported as they are either way)."""
    from lora_engine.adapters.folder import read_adapter_meta
    from lora_engine.adapters.modelcard import loader_notice

    try:
        return loader_notice(read_adapter_meta(folder))
    except AdapterError:
        return None
