"""What the inference server (`lorafleet serve`, worker/serve) asks of the registry: which adapter a
tenant's model name is (only its own, live), its verified folder, and what each request cost.

An adapter answers as it was trained: `chat` says its job trained on a chat data set (rendered with
the base's chat template, lora_engine.data.chat), so a chat request is rendered the same way;
otherwise the last user message goes through the adapter's own prompt template (lorafleet.json).
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from orchestrator.errors import NotFound
from orchestrator.registry import repositories as repo
from orchestrator.registry.models import InferenceUsage, Job, utcnow
from orchestrator.services._tx import readonly, transactional
from orchestrator.services.adapters import adapter_or_404, model_names_of, verified_adapter
from orchestrator.services.model_names import parse_model_name
from orchestrator.services.tenants import tenant_or_404

__all__ = ["ServedAdapter", "inference_totals", "record_inference", "served_adapter", "served_adapters",
           "verified_served"]


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
def served_adapter(session: Session, model: str, tenant: str) -> ServedAdapter:
    """The live adapter of `tenant` (slug) that the `ft:` model name `model` names; NotFound for
    anything else (another tenant's adapter, a deleted one, a malformed name) alike."""
    adapter_id = parse_model_name(model)
    if adapter_id is None:
        raise _not_found(str(model))
    try:
        row = adapter_or_404(session, adapter_id, tenant)
    except NotFound:
        raise _not_found(model) from None
    return _served(session, row, row.tenant_id)


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


@transactional
def record_inference(session: Session, tenant_id: str, *, adapter_id: str | None, base_model: str,
                     route: str, prompt_tokens: int, completion_tokens: int, device_seconds: float,
                     device: str) -> None:
    """One served request's cost, charged to its tenant (`device`: as lora_engine names it)."""
    session.add(InferenceUsage(tenant_id=tenant_id, adapter_id=adapter_id, base_model=base_model[:255],
                               route=route[:32], device=device[:128], requests=1,
                               prompt_tokens=int(prompt_tokens), completion_tokens=int(completion_tokens),
                               device_seconds=float(device_seconds), created_at=utcnow()))


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
