"""What the inference server (`lorafleet serve`, worker/serve) asks of the registry: which adapter a
tenant's model name is (only its own, live), its verified folder, and what each request cost.

`served_adapter` runs on every request the server has not cached (worker/serve/lookup.py), so it is
one statement: the adapter by the caller's tenant id and the parsed id, its tenant's slug and its
job's suffix (its name), and whether that job trained on a chat data set. `record_inference` takes
the rows the server gathered since its last flush (worker/serve/usage.py), in one transaction.

An adapter answers as it was trained: `chat` says its job trained on a chat data set (rendered with
the base's chat template, lora_engine.data.chat), so a chat request is rendered the same way;
otherwise the last user message goes through the adapter's own prompt template (lorafleet.json).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import exists, func, insert, or_, select
from sqlalchemy.orm import Session

from orchestrator.errors import NotFound
from orchestrator.registry import repositories as repo
from orchestrator.registry.models import Adapter, Dataset, InferenceUsage, Job, Tenant
from orchestrator.services._tx import readonly, transactional
from orchestrator.services.adapters import model_names_of, verified_adapter
from orchestrator.services.model_names import model_name, parse_model_name
from orchestrator.services.tenants import tenant_or_404

__all__ = ["InferenceRecord", "ServedAdapter", "inference_totals", "record_inference", "served_adapter",
           "served_adapters", "verified_served"]


@dataclass(frozen=True)
class ServedAdapter:
    id: str
    tenant_id: str
    name: str
    path: str
    sha256: str
    bytes: int
    base_model: str
    task: str
    chat: bool
    created_at: int


def _not_found(model: str) -> NotFound:
    return NotFound(f"The model {model[:200]!r} does not exist or you do not have access to it "
                    "(see GET /v1/models)")


def _trained_on_chat(session: Session, job_id: str | None, tenant_id: str) -> bool:
    if job_id is None:
        return False
    job = session.get(Job, job_id)
    if job is None or job.tenant_id != tenant_id:
        return False
    for dataset_id in (job.dataset_id, job.validation_dataset_id):
        if dataset_id is None:
            continue
        row = repo.dataset(session, dataset_id, tenant_id=tenant_id, include_deleted=True)
        if row is not None and row.format == "chat":
            return True
    return False


def _served(session: Session, row, tenant_id: str) -> ServedAdapter:
    name = model_names_of.__wrapped__(session, [row])[row.id]
    return ServedAdapter(row.id, row.tenant_id, name, row.path, row.sha256, int(row.bytes), row.base_model,
                         row.task, _trained_on_chat(session, row.job_id, tenant_id),
                         int(row.created_at.timestamp()))


@readonly
def served_adapter(session: Session, model: str, tenant_id: str) -> ServedAdapter:
    """The live adapter of tenant `tenant_id` that the `ft:` model name `model` names, in one
    statement; NotFound for anything else (another tenant's adapter, a deleted one, a malformed
    name) alike."""
    adapter_id = parse_model_name(model)
    if adapter_id is None:
        raise _not_found(str(model))
    # As _trained_on_chat: the job's training or validation data set, of the same tenant, in chat rows.
    chat = exists().where(Job.tenant_id == Adapter.tenant_id, Dataset.tenant_id == Adapter.tenant_id,
                          Dataset.format == "chat",
                          or_(Dataset.id == Job.dataset_id, Dataset.id == Job.validation_dataset_id))
    found = session.execute(
        select(Adapter, Tenant.slug, Job.suffix, chat.label("chat"))
        .join(Tenant, Tenant.id == Adapter.tenant_id)
        .outerjoin(Job, Job.id == Adapter.job_id)
        .where(Adapter.id == adapter_id, Adapter.tenant_id == tenant_id, Adapter.deleted_at.is_(None))
    ).first()
    if found is None:
        raise _not_found(model)
    row, slug, suffix, trained_on_chat = found
    return ServedAdapter(row.id, row.tenant_id, model_name(row, slug, suffix if row.job_id else None),
                         row.path, row.sha256, int(row.bytes), row.base_model, row.task,
                         bool(trained_on_chat), int(row.created_at.timestamp()))


@readonly
def verified_served(session: Session, adapter_id: str, tenant: str) -> ServedAdapter:
    """`served_adapter` by id, its files hashed against the registry's sha256 (AdapterError when
    they differ): what the server reads before it loads an adapter."""
    row = verified_adapter.__wrapped__(session, adapter_id, tenant)
    return _served(session, row, row.tenant_id)


@readonly
def served_adapters(session: Session, tenant: str) -> list[ServedAdapter]:
    """The tenant's live adapters, oldest first (GET /v1/models)."""
    owner = tenant_or_404(session, tenant)
    rows = repo.adapters(session, tenant_id=owner.id)
    names = model_names_of.__wrapped__(session, rows)
    return [ServedAdapter(r.id, r.tenant_id, names[r.id], r.path, r.sha256, int(r.bytes), r.base_model,
                          r.task, False, int(r.created_at.timestamp())) for r in rows]


@dataclass(frozen=True)
class InferenceRecord:
    """One served request's cost, charged to its tenant (`device`: as lora_engine names it)."""

    tenant_id: str
    adapter_id: str | None  # None: a base model served alone
    base_model: str
    route: str
    prompt_tokens: int
    completion_tokens: int
    device_seconds: float
    device: str
    at: datetime


@transactional
def record_inference(session: Session, records: Sequence[InferenceRecord]) -> None:
    """The requests' costs, one `inference_usage` row each (its own time: a report's window counts
    it where it was served), in one multi-row insert."""
    if not records:
        return
    session.execute(insert(InferenceUsage), [
        {"tenant_id": r.tenant_id, "adapter_id": r.adapter_id, "base_model": r.base_model[:255],
         "route": r.route[:32], "device": r.device[:128], "requests": 1,
         "prompt_tokens": int(r.prompt_tokens), "completion_tokens": int(r.completion_tokens),
         "device_seconds": float(r.device_seconds), "created_at": r.at}
        for r in records])


@readonly
def inference_totals(session: Session, tenant: str | None = None) -> dict[str, dict[str, float]]:
    """{tenant id: requests, prompt_tokens, completion_tokens, device_seconds} served so far."""
    tenant_id = tenant_or_404(session, tenant).id if tenant is not None else None
    u = InferenceUsage
    stmt = select(u.tenant_id, func.sum(u.requests), func.sum(u.prompt_tokens), func.sum(u.completion_tokens),
                  func.sum(u.device_seconds)).group_by(u.tenant_id)
    if tenant_id is not None:
        stmt = stmt.where(u.tenant_id == tenant_id)
    return {t: {"requests": int(r or 0), "prompt_tokens": int(p or 0), "completion_tokens": int(c or 0),
                "device_seconds": float(d or 0.0)} for t, r, p, c, d in session.execute(stmt)}
