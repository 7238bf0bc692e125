"""Registering an adapter made elsewhere (`lorafleet adapter import`): a checked copy of its files
under the artifacts root and an adapter row with no job.

The engine checks the folder first (`lora_engine.adapter_import.check_foreign_adapter`); here the
known files are copied into `<artifacts>/<tenant_id>/<adapter_id>/` (a temporary folder renamed
into place, so a failed import leaves nothing), `lorafleet.json` records what the engine needs
to load it again, and the row is written. The folder is hashed once, after the copy.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from orchestrator.artifacts import adapter_path
from orchestrator.config import Settings, get_settings
from orchestrator.registry.models import Adapter, new_id, utcnow
from orchestrator.services._tx import transactional
from orchestrator.services.quotas import check_storage
from orchestrator.services.tenants import tenant_or_404


@transactional
def import_adapter(session: Session, tenant: str, foreign: Any, *,
                   settings: Settings | None = None) -> Adapter:
    """Copy and register `foreign` (a checked lora_engine ForeignAdapter) for `tenant` (slug)."""
    from lora_engine.adapter_folder import write_adapter_meta
    from lora_engine.adapter_import import IMPORTED_FILES
    from lora_engine.atomic import atomic_folder
    from lora_engine.digest import adapter_files_digest

    settings = settings or get_settings()
    owner = tenant_or_404(session, tenant)
    adapter_id = new_id()
    dest = adapter_path(settings, owner.id, adapter_id)
    with atomic_folder(dest) as tmp:
        for name in IMPORTED_FILES:
            if (Path(foreign.folder) / name).is_file():
                shutil.copy2(Path(foreign.folder) / name, tmp / name)
        write_adapter_meta(tmp, foreign.meta())
    try:
        sha256, size = adapter_files_digest(dest)
        check_storage(session, owner, size)
        row = Adapter(id=adapter_id, tenant_id=owner.id, job_id=None, path=str(dest), sha256=sha256,
                      bytes=size,
                      trainable_params=foreign.trainable_params, total_params=foreign.total_params,
                      base_model=foreign.base_model, task=foreign.task, method=foreign.method,
                      rank=foreign.rank, created_at=utcnow())
        session.add(row)
        session.flush()
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)  # no row, no files
        raise
    return row
