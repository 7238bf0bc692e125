"""Registering an adapter made elsewhere (`lorafleet adapter import`, and a job's `--init-from DIR`):
a checked copy of its files under the artifacts root and an adapter row with no job.

The folder was confined and walked first (`orchestrator.paths.folder`: inside a data root, no
symlink, device or FIFO anywhere in it) and the engine checked the adapter
(`lora_engine.adapters.importing.check_foreign_adapter`); here the known files are copied, each opened
again without following links, into `<artifacts>/<tenant_id>/<adapter_id>/` (a temporary folder
renamed into place, so a failed import leaves nothing). The copy's adapter_config.json names the
base model as resolved at import (an alias's hub id, a hub id, or a confined folder's absolute
path): never the folder's own, possibly relative or unconfined, `base_model_name_or_path`.
`lorafleet.json` records what the engine needs to load it again, the row is written, and the
folder is hashed once, after the copy.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from orchestrator import paths
from orchestrator.artifacts import adapter_path
from orchestrator.config import Settings, get_settings
from orchestrator.registry import repositories as repo
from orchestrator.registry.models import Adapter, Tenant, new_id, utcnow
from orchestrator.services._tx import readonly, transactional
from orchestrator.services.inputs import Base, resolve_base
from orchestrator.services.quotas import check_storage
from orchestrator.services.tenants import tenant_or_404


def _name_base(config_file: Path, base_model: str) -> None:
    """Rewrite the copy's adapter_config.json to name `base_model` (as PEFT and the Hub read it)."""
    from lora_engine.adapters.folder import write_json
    from lora_engine.model_ref import hub_id_of
    from lora_engine.safe_json import loads

    config = loads(config_file.read_bytes(), what=config_file.name)
    config["base_model_name_or_path"] = hub_id_of(base_model)
    write_json(config_file, config)


def register_adapter(session: Session, owner: Tenant, foreign: Any, base: Base, settings: Settings,
                     staged: list[Path], *, reuse: bool = False) -> Adapter:
    """Inside the caller's transaction: copy and register `foreign` (a checked lora_engine
    ForeignAdapter, loaded here on `base.local`) for `owner`; the row's base model is `base.name`.
    The new folder is appended to `staged`, for the caller to remove if its transaction fails.
    `reuse`: an adapter this tenant registered from the very same files is returned instead."""
    from lora_engine.adapters.digest import adapter_files_digest
    from lora_engine.adapters.folder import CONFIG_NAME, write_adapter_meta
    from lora_engine.adapters.importing import IMPORTED_FILES
    from lora_engine.atomic import atomic_folder

    adapter_id = new_id()
    dest = adapter_path(settings, owner.id, adapter_id)
    source = Path(foreign.folder)
    with atomic_folder(dest) as tmp:
        for name in IMPORTED_FILES:
            if (source / name).is_file():
                paths.copy_file(source / name, settings, "adapter file", tmp / name,
                                cap=settings.max_folder_bytes, cap_var="LORAFLEET_MAX_FOLDER_BYTES")
        _name_base(tmp / CONFIG_NAME, foreign.base_model)
        write_adapter_meta(tmp, foreign.meta())
    staged.append(dest)
    sha256, size = adapter_files_digest(dest)
    same = repo.imported_adapter_by_sha256(session, owner.id, sha256) if reuse else None
    if same is not None:
        shutil.rmtree(dest, ignore_errors=True)
        return same
    check_storage(session, owner, size)
    row = Adapter(id=adapter_id, tenant_id=owner.id, job_id=None, path=str(dest), sha256=sha256, bytes=size,
                  trainable_params=foreign.trainable_params, total_params=foreign.total_params,
                  base_model=base.name, task=foreign.task, method=foreign.method, rank=foreign.rank,
                  created_at=utcnow())
    session.add(row)
    session.flush()
    return row


@readonly
def check_import(session: Session, tenant: str, folder: str | Path, *, task: str | None = None,
                 base_model: str | None = None, settings: Settings | None = None) -> tuple[Any, Base]:
    """The door of `adapter import`; nothing is written. The folder is confined and walked
    (`paths.folder`: a symlink anywhere in it refuses it), its base model resolved as a job's is
    (`services.inputs`): the one given, else the one its adapter_config.json names, so a relative
    or unconfined `base_model_name_or_path` is refused, never stored; then the engine checks the
    adapter against that base (torch). Returns (the checked ForeignAdapter, its Base)."""
    from lora_engine.adapters.check import adapter_folder_problems
    from lora_engine.adapters.importing import check_foreign_adapter, recorded_base
    from lora_engine.errors import AdapterError

    settings = settings or get_settings()
    owner = tenant_or_404(session, tenant)
    path = paths.folder(folder, settings, "adapter import")
    problems = adapter_folder_problems(path, None, what="adapter import")
    if problems:
        raise AdapterError("; ".join(problems))
    value = base_model or recorded_base(path)
    if not value:
        raise AdapterError("the adapter does not name its base model; give --base-model")
    what = "--base-model" if base_model else "the adapter's base_model_name_or_path"
    base = resolve_base(session, owner, value, settings, what=what)
    return check_foreign_adapter(path, task=task, base_model=base.local), base


@transactional
def import_adapter(session: Session, tenant: str, foreign: Any, base: Base | None = None, *,
                   settings: Settings | None = None) -> Adapter:
    """Copy and register `foreign` (a checked lora_engine ForeignAdapter) for `tenant` (slug);
    `base`: its base as resolved at the door (default: the checked adapter's, as named)."""
    settings = settings or get_settings()
    owner = tenant_or_404(session, tenant)
    staged: list[Path] = []
    try:
        return register_adapter(session, owner, foreign, base or Base(foreign.base_model), settings, staged)
    except BaseException:
        for folder in staged:  # no row, no files
            shutil.rmtree(folder, ignore_errors=True)
        raise
