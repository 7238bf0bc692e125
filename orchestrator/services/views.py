"""Plain-dict views of registry rows with stable keys (what `--json` prints)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from orchestrator.registry.models import Adapter, Dataset, Job, JobEvent, Tenant, Usage
from orchestrator.services.model_names import model_name


def _ts(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def tenant_dict(t: Tenant) -> dict[str, Any]:
    return {"id": t.id, "slug": t.slug, "name": t.name, "max_running": t.max_running,
            "max_queued": t.max_queued, "device_hours_per_month": t.device_hours_per_month,
            "max_storage_bytes": t.max_storage_bytes, "created_at": _ts(t.created_at)}


def dataset_dict(d: Dataset, tenant_slug: str | None = None) -> dict[str, Any]:
    return {"id": d.id, "tenant_id": d.tenant_id, "tenant": tenant_slug, "kind": d.kind, "format": d.format,
            "name": d.name,
            "rows": d.rows, "duplicate_rows": d.duplicate_rows, "label_counts": d.label_counts,
            "token_estimate": d.token_estimate, "bytes": d.bytes, "sha256": d.sha256,
            "validation_rows": d.validation_rows, "validation_sha256": d.validation_sha256,
            "created_at": _ts(d.created_at), "deleted_at": _ts(d.deleted_at)}


def job_dict(job: Job, tenant_slug: str | None = None) -> dict[str, Any]:
    return {
        "id": job.id,
        "tenant_id": job.tenant_id,
        "tenant": tenant_slug,
        "state": job.state,
        "kind": job.kind,
        "task": job.task,
        "method": job.method,
        "rank": job.rank,
        "base_model": job.base_model,
        "quantize": job.quantize,
        "priority": job.priority,
        "idempotency_key": job.idempotency_key,
        "attempts": job.attempts,
        "max_attempts": job.max_attempts,
        "cancel_requested": job.cancel_requested,
        "pause_requested": job.pause_requested,
        "error": job.error,
        "init_from_adapter_id": job.init_from_adapter_id,
        "base_adapter_id": job.base_adapter_id,
        "validation_dataset_id": job.validation_dataset_id,
        "suffix": job.suffix,
        "metadata": job.metadata_,
        "lease_owner": job.lease_owner,
        "lease_expires_at": _ts(job.lease_expires_at),
        "progress": {"step": job.progress_step, "total": job.progress_total, "loss": job.last_loss},
        "created_at": _ts(job.created_at),
        "started_at": _ts(job.started_at),
        "finished_at": _ts(job.finished_at),
        "spec": job.spec,
    }


def adapter_dict(a: Adapter, model: str | None = None, parents: Sequence[str] = ()) -> dict[str, Any]:
    """`model`: the adapter's name (services.model_names; adapters.model_names_of); `parents`: the
    adapters it was merged from (adapters.parents_of; empty for a trained or imported one)."""
    return {
        "id": a.id, "tenant_id": a.tenant_id, "job_id": a.job_id, "model": model, "path": a.path,
        "sha256": a.sha256,
        "bytes": a.bytes, "trainable_params": a.trainable_params, "total_params": a.total_params,
        "base_model": a.base_model, "task": a.task, "method": a.method, "rank": a.rank,
        "stored_rank": a.stored_rank,
        "parent_adapter_id": a.parent_adapter_id, "parents": list(parents), "created_at": _ts(a.created_at),
        "deleted_at": _ts(a.deleted_at),
    }


def event_dict(e: JobEvent) -> dict[str, Any]:
    return {"id": e.id, "job_id": e.job_id, "ts": _ts(e.ts), "kind": e.kind, "message": e.message,
            "data": e.data}


def usage_dict(u: Usage) -> dict[str, Any]:
    return {"attempt": u.attempt, "device": u.device, "device_seconds": u.device_seconds,
            "wall_seconds": u.wall_seconds, "peak_memory_bytes": u.peak_memory_bytes,
            "examples": u.examples, "tokens": u.tokens, "activation_memory_bytes": u.activation_memory_bytes,
            "step_seconds": u.step_seconds}


@dataclass
class JobDetail:
    """A job with what `job show` needs: tenant slug, adapter, metrics {split: {name: value}}, usage."""

    job: Job
    tenant_slug: str
    adapter: Adapter | None = None
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    usage: Sequence[Usage] = ()
    # A reevaluate job's scores {adapter_id: {split: {name: value}}}; empty for the other kinds.
    reevaluated: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    # A merge job's adapter's parents (its spec lists them too); empty for the other kinds.
    parents: Sequence[str] = ()

    def to_dict(self) -> dict[str, Any]:
        out = job_dict(self.job, self.tenant_slug)
        adapter = self.adapter
        out["adapter"] = adapter_dict(adapter, model_name(adapter, self.tenant_slug, self.job.suffix),
                                      self.parents) if adapter is not None else None
        out["metrics"] = self.metrics
        out["reevaluated"] = self.reevaluated
        out["usage"] = [usage_dict(u) for u in self.usage]
        return out
