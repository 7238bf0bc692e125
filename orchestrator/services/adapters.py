"""Adapters: listing, lookup, deletion, and where a new adapter's files go.

Paths are built from ids only (`<artifacts>/<tenant_id>/<adapter_id>/`), never from names a
user typed, so no tenant input can point the worker or `delete` outside the artifacts root.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path

from sqlalchemy.orm import Session

from orchestrator.config import Settings, get_settings
from orchestrator.registry import repositories as repo
from orchestrator.registry.models import Adapter, utcnow
from orchestrator.services._tx import readonly, transactional
from orchestrator.services.errors import InvalidInput, NotFound
from orchestrator.services.ids import resolve_id
from orchestrator.services.tenants import tenant_or_404


def _uuid(value: str, what: str) -> str:
    try:
        return str(uuid.UUID(value))
    except (ValueError, TypeError, AttributeError) as exc:
        raise InvalidInput(f"{what} must be a UUID (got {value!r})") from exc


def new_adapter_path(settings: Settings, tenant_id: str, adapter_id: str) -> Path:
    """`<artifacts>/<tenant_id>/<adapter_id>` (not created: the engine writes it atomically)."""
    return settings.artifacts / _uuid(tenant_id, "tenant_id") / _uuid(adapter_id, "adapter_id")


def checkpoint_path(settings: Settings, tenant_id: str, job_id: str) -> Path:
    """`<artifacts>/<tenant_id>/checkpoints/<job_id>`: where a job's training checkpoints live, so
    a retry (any worker sharing the artifacts volume) resumes from the last one."""
    return settings.artifacts / _uuid(tenant_id, "tenant_id") / "checkpoints" / _uuid(job_id, "job_id")


@readonly
def list_adapters(
    session: Session, tenant: str | None = None, task: str | None = None, base_model: str | None = None,
    include_deleted: bool = False,
) -> Sequence[Adapter]:
    """Adapters (oldest first), optionally of one tenant (slug), task or base model."""
    tenant_id = tenant_or_404(session, tenant).id if tenant is not None else None
    return repo.adapters(session, tenant_id=tenant_id, task=task, base_model=base_model,
                         include_deleted=include_deleted)


def adapter_or_404(session: Session, adapter_id: str, tenant: str | None = None) -> Adapter:
    tenant_id = tenant_or_404(session, tenant).id if tenant is not None else None
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
