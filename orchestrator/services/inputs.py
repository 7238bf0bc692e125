"""A submission's base model, resolved once at the door into what the registry stores.

    alias ('minilm-l6')          -> stored as given
    hub id ('org/name')          -> stored as given (`validate_spec` checks it is usable)
    folder ('./m', '/data/m')    -> confined by `orchestrator.paths` (every file in it regular),
                                    stored resolved (absolute): never a relative path that a
                                    worker would resolve against its own folder
    adapter id ('3f2a1b9c')      -> the tenant's own full fine-tune: stored as its id, in
                                    `jobs.base_adapter_id` too; its folder is the registry's, never
                                    one a user names

Which of these a string is follows from its spelling (`orchestrator.refs`). The worker reads the
stored form and the column; it runs the path resolver again on a folder (`worker.inputs`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.orm import Session

from lora_engine.model_ref import MODEL_ALIASES, alias_of
from orchestrator import paths
from orchestrator.config import Settings
from orchestrator.errors import InvalidInput
from orchestrator.refs import spelled_as_id, spelled_as_path
from orchestrator.registry.models import Adapter, Tenant
from orchestrator.services.adapters import adapter_or_404


@dataclass(frozen=True)
class Base:
    """A base model as the registry stores it, and where it is read from on this machine."""

    name: str  # spec.base_model and jobs.base_model: an alias, a hub id, a resolved folder, an adapter id
    adapter_id: str | None = None  # jobs.base_adapter_id: the tenant's own full fine-tune
    folder: Path | None = None  # the confined folder, or the full fine-tune's (None: alias or hub id)

    @property
    def local(self) -> str:
        """The name the engine reads here (checks without torch, loading): the folder, if any."""
        return str(self.folder) if self.folder is not None else self.name


def full_fine_tune(session: Session, tenant: Tenant, value: str, what: str) -> Adapter:
    """The tenant's live full fine-tune `value` (an id or a unique prefix), to train on as a base."""
    row = adapter_or_404(session, value, tenant.slug)
    if row.method != "full":
        raise InvalidInput(f"{what}: adapter {row.id} is a {row.method} adapter, not a full fine-tune; "
                           f"continue it with --init-from {row.id[:8]}, or give a base model: an alias "
                           f"({', '.join(MODEL_ALIASES)}), a folder ('./name') or a hub id ('org/name')")
    return row


def resolve_base(session: Session, tenant: Tenant, value: str, settings: Settings, what: str = "base_model"
                 ) -> Base:
    """The base model a user named (see the module docstring); PathRefused / NotFound / InvalidInput
    when it names what the tenant may not use."""
    if value in MODEL_ALIASES:
        return Base(value)
    if spelled_as_path(value):
        folder = paths.folder(value, settings, what)
        return Base(str(folder), folder=folder)
    if spelled_as_id(value):
        row = full_fine_tune(session, tenant, value, what)
        return Base(row.id, adapter_id=row.id, folder=Path(row.path))
    return Base(alias_of(value))  # a hub id (a shipped alias's hub id reads as the alias)
