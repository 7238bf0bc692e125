"""The job service: what the CLI, the worker tasks and the reconciler call. SQL stays below here.

Conventions: every function takes a SQLAlchemy `Session` first (from
`orchestrator.registry.db.session_scope(settings)`), runs as ONE transaction and commits it
(rolls back on error); returned rows stay readable after the commit (expire_on_commit=False).
Relationships are lazy="raise": use the returned fields/views, not `job.tenant`.
Ids are UUID strings. Timestamps are tz-aware UTC. `tenant` arguments are slugs; None = all.
Errors live on the ground floor (orchestrator.errors, imported from there): NotFound, Conflict,
InvalidState, InvalidInput (a LoraFleetInputError), BatchError(problems={index: [..]}), LeaseLost;
lora_engine SpecError for a bad spec. No retry policy here: the caller classifies.

API
---
registry.db:      session_scope(settings=None, *, url=None) -> ctx[Session]; ensure_schema(settings);
                  upgrade(url, "head"); downgrade(url, "base"); check(url); current_revision(url);
                  dispose_engines()  (after fork); make_engine(url); session_factory(url)
tenants:          create_tenant(s, slug, name=None, max_running=None) -> Tenant
                  list_tenants(s) -> [Tenant]; get_tenant(s, slug) -> Tenant
                  set_tenant_quota(s, slug, max_running=None, *, max_queued=None,
                             device_hours_per_month=KEEP|None|h, max_storage_bytes=KEEP|None|n)
                  validate_slug(slug)
quotas:           tenant_quota_usage(s, slug) -> QuotaUsage (running/queued/device-hours this
                             month/storage against each limit); refusals raise QuotaExceeded
                             (an InvalidInput) with the figures
datasets:         upload_dataset(s, tenant_slug, file, kind="classification", validation=None)
                             -> Dataset (validated whole, stored by id, sha256; same bytes: same row)
                  list_datasets(s, tenant=None); get_dataset(s, id, tenant=None);
                  delete_dataset(s, id, tenant=None) (refused while queued/running jobs use it)
                  dataset_for_training(s, id, tenant_id) -> the stored file, sha256 checked (worker)
                  Paths a user passes are confined to settings.data_roots (orchestrator.paths).
jobs:             submit_job(s, tenant_slug, spec_dict, priority=0, idempotency_key=None,
                             init_from_adapter_id=None, max_attempts=None, settings=None) -> Job
                             (queued); spec "dataset": a data set id or a JSONL file (uploaded);
                             "init_from": an adapter id or folder (registered); "base_model": an
                             alias, hub id, folder or full fine-tune id (jobs.base_adapter_id);
                             ids or paths by spelling (orchestrator.refs), paths confined
                             quotas: max queued, the month's device-hour budget (estimated)
                  plan_job(s, tenant_slug, spec_dict, ...) -> Plan (dry run: spec, data set,
                             Estimate(examples, tokens, device_seconds, money, basis)); writes nothing
                  submit_batch(s, items, max_attempts=None) -> [Job]   items: {"tenant", "spec": {..},
                             "priority"?, "idempotency_key"?, "init_from_adapter_id"?} or flat
                             {"tenant", "task", "rank", ...}; all or nothing (BatchError)
                  submit_job with spec method "none" -> Job kind "evaluate" (untuned baseline)
reevaluation:     submit_reevaluation(s, tenant=None|slug|[slugs], task=None, base_model=None,
                             eval_size=None, priority=0, max_attempts=None) -> [Job kind
                             "reevaluate"], one per (tenant, base model); nothing found: InvalidInput
                  list_jobs(s, tenant=None, state=None, limit=None, offset=0) -> [Job] newest first
                  get_job(s, job_id, tenant=None) -> JobDetail(job, tenant_slug, adapter, metrics, usage)
                             .to_dict() -> {"id", "state", "attempts", "metrics",
                                            "adapter": {"id", "path", ..} | None, ...}
                  job_events(s, job_id, after_id=None, tenant=None) -> [JobEvent] (ordered by id)
                  cancel_job(s, job_id, tenant=None) -> Job   (queued: cancelled; running: flag)
                  retry_job(s, job_id, tenant=None) -> Job    (failed|cancelled -> queued, a fresh budget)
leases (worker):  claim_job(s, job_id, worker_id, lease_seconds, now=None) -> Job | None
                  claim_next(s, worker_id, lease_seconds, now=None) -> Job | None   (fair share)
                  unclaimable_reason(s, job_id) -> str
                  heartbeat(s, job_id, worker_id, step, total, loss, lease_seconds, now=None,
                            event_interval_s=5.0) -> bool (cancel requested)   raises LeaseLost
                  record_checkpoint(s, job_id, worker_id, step, path=None)
                  record_phase(s, job_id, worker_id, "evaluating"|"saving", step)   (a `phase` event)
                  record_resume(s, job_id, worker_id, step, path=None)   (a `resumed` event)
                  finish_job_success(s, job_id, worker_id, AdapterRecord(id, path, sha256, bytes,
                            trainable_params, total_params) | None, metrics={split: {name: value}},
                            usage=UsageRecord(device, device_seconds, wall_seconds, peak_memory_bytes,
                            examples, tokens) or a dict of those,
                            reevaluated={adapter_id: {split: {name: value}}})
                            -> Adapter | None   (train: adapter; evaluate: None; reevaluate: scores)
                  fail_job(s, job_id, worker_id, reason, usage=None) -> Job
                  mark_cancelled(s, job_id, worker_id, step=None, usage=None) -> Job
                  requeue_job(s, job_id, worker_id, reason, usage=None) -> "queued" | "failed"
                  (services.leases) return_job(s, job_id, worker_id, reason) -> "queued" (a worker
                            fault: the attempt given back) | "cancelled"
workers:          (services.workers, imported from there) register_worker(s, WorkerInfo(id, hostname, pid,
                            queue, device_kind, device_name, beat_seconds), now=None) -> Worker
                  worker_beat(s, worker_id, job_id|None, now=None, *, unhealthy=reason|None)
                            -> bool (False: no row, or stopped)
                  mark_worker_stopped(s, worker_id, now=None)
                  worker_state(row, now) -> alive|unhealthy|lost|stopped
reconcile:        (services.reconcile, imported from there: the package attribute `reconcile` is
                  that submodule once it is imported, so the function cannot be offered here too)
                  reconcile(s, now=None, *, lease_grace_s=5, redispatch_after_s=60)
                            -> ReconcileResult(dispatch=[ids to send], requeued=[..], failed=[..],
                               cancelled=[..])
                  mark_dispatched(s, job_ids)   (after sending the messages for new jobs)
adapters:         new_adapter_path(settings, tenant_id, adapter_id) -> <artifacts>/<tenant>/<adapter>
                  (from orchestrator.artifacts, the one home of every artifact path)
                  list_adapters(s, tenant=None, task=None, base_model=None, include_deleted=False)
                  get_adapter(s, adapter_id, tenant=None) -> Adapter
                  verified_adapter(s, adapter_id, tenant=None) -> Adapter (files match its sha256,
                            else lora_engine AdapterError; call before loading an adapter)
                  delete_adapter(s, adapter_id, tenant=None, settings=None) -> Adapter (files removed)
summary:          tenant_summary(s, tenant=None) -> [TenantSummary(slug, name, max_running,
                            jobs={state: n}, adapters, adapter_bytes, device_seconds, wall_seconds,
                            examples, tokens)] (.to_dict())
views:            tenant_dict, job_dict, adapter_dict, event_dict, usage_dict (stable JSON keys)
registry.models:  new_id() (for a new adapter id), JOB_STATES, TERMINAL_STATES
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# public name -> the module that defines it (loaded on first use, PEP 562: importing one
# service module, as the CLI's commands do, does not import every other one)
_PUBLIC = {
    "delete_adapter": "orchestrator.services.adapters",
    "get_adapter": "orchestrator.services.adapters",
    "list_adapters": "orchestrator.services.adapters",
    "new_adapter_path": "orchestrator.services.adapters",
    "verified_adapter": "orchestrator.services.adapters",
    "cancel_job": "orchestrator.services.jobs",
    "get_job": "orchestrator.services.jobs",
    "job_events": "orchestrator.services.jobs",
    "list_jobs": "orchestrator.services.jobs",
    "retry_job": "orchestrator.services.jobs",
    "submit_batch": "orchestrator.services.jobs",
    "submit_job": "orchestrator.services.jobs",
    "AdapterRecord": "orchestrator.services.leases",
    "UsageRecord": "orchestrator.services.leases",
    "claim_job": "orchestrator.services.leases",
    "claim_next": "orchestrator.services.leases",
    "claim_partners": "orchestrator.services.leases",
    "fail_job": "orchestrator.services.leases",
    "finish_job_success": "orchestrator.services.leases",
    "heartbeat": "orchestrator.services.leases",
    "mark_cancelled": "orchestrator.services.leases",
    "record_checkpoint": "orchestrator.services.leases",
    "record_phase": "orchestrator.services.leases",
    "record_packed": "orchestrator.services.leases",
    "record_resume": "orchestrator.services.leases",
    "requeue_job": "orchestrator.services.leases",
    "unclaimable_reason": "orchestrator.services.leases",
    "ReconcileResult": "orchestrator.services.reconcile",
    "mark_dispatched": "orchestrator.services.reconcile",
    "submit_reevaluation": "orchestrator.services.reevaluation",
    "TenantSummary": "orchestrator.services.summary",
    "tenant_summary": "orchestrator.services.summary",
    "create_tenant": "orchestrator.services.tenants",
    "get_tenant": "orchestrator.services.tenants",
    "list_tenants": "orchestrator.services.tenants",
    "set_tenant_quota": "orchestrator.services.tenants",
    "JobDetail": "orchestrator.services.views",
}

__all__ = [  # the same names as _PUBLIC (a test checks)
    "AdapterRecord", "JobDetail",
    "ReconcileResult", "TenantSummary", "UsageRecord", "cancel_job",
    "claim_job", "claim_next", "claim_partners",
    "create_tenant", "delete_adapter", "fail_job", "finish_job_success", "get_adapter", "get_job",
    "get_tenant", "heartbeat", "job_events", "list_adapters", "list_jobs", "list_tenants", "mark_cancelled",
    "mark_dispatched", "new_adapter_path", "record_checkpoint", "record_packed", "record_phase",
    "record_resume", "requeue_job", "retry_job", "set_tenant_quota", "submit_batch", "submit_job",
    "submit_reevaluation",
    "tenant_summary", "unclaimable_reason", "verified_adapter",
]

if TYPE_CHECKING:
    from orchestrator.services.adapters import (
        delete_adapter,
        get_adapter,
        list_adapters,
        new_adapter_path,
        verified_adapter,
    )
    from orchestrator.services.jobs import (
        cancel_job,
        get_job,
        job_events,
        list_jobs,
        retry_job,
        submit_batch,
        submit_job,
    )
    from orchestrator.services.leases import (
        AdapterRecord,
        UsageRecord,
        claim_job,
        claim_next,
        claim_partners,
        fail_job,
        finish_job_success,
        heartbeat,
        mark_cancelled,
        record_checkpoint,
        record_packed,
        record_phase,
        record_resume,
        requeue_job,
        unclaimable_reason,
    )
    from orchestrator.services.reconcile import ReconcileResult, mark_dispatched
    from orchestrator.services.reevaluation import submit_reevaluation
    from orchestrator.services.summary import TenantSummary, tenant_summary
    from orchestrator.services.tenants import create_tenant, get_tenant, list_tenants, set_tenant_quota
    from orchestrator.services.views import JobDetail


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
