"""Queueing re-evaluations: score existing adapters again, on one resident base per job.

`submit_reevaluation` picks the adapters (live LoRA adapters; full fine-tunes are whole models, not
swappable adapters) of the given tenants / task / base model through the repository, and queues
one job of kind 'reevaluate' per (tenant, base model): its spec lists the adapters (id, task,
folder; `reevaluate_adapter_ids` reads the ids back), and the
worker loads that base once and swaps each adapter in (lora_engine.reevaluation). One job per
tenant rather than per base model alone because a job belongs to one tenant: its quota, its
usage and its metric rows are that tenant's, so no tenant is billed for another's adapters.

Everything is checked before anything is written: an unknown tenant or task, a bad eval size, or
nothing to re-evaluate is a clear error and no job is queued.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy.orm import Session

from lora_engine.catalog import ALL_TASKS, TASKS
from orchestrator.errors import InvalidInput
from orchestrator.refs import spelled_as_id
from orchestrator.registry import repositories as repo
from orchestrator.registry.models import Adapter, Job, Tenant, utcnow
from orchestrator.services._tx import transactional
from orchestrator.services.enqueue import enqueue_job
from orchestrator.services.events import add_event
from orchestrator.services.jobs import attempt_budget, check_priority
from orchestrator.services.quotas import check_queued
from orchestrator.services.tenants import tenant_or_404


def reevaluate_adapter_ids(spec: dict) -> list[str]:
    """The adapters a reevaluate job's spec lists."""
    return [a["id"] for a in spec.get("adapters", [])]


def _tenants(session: Session, tenant: str | Sequence[str] | None) -> list[Tenant] | None:
    if tenant is None:
        return None
    slugs = [tenant] if isinstance(tenant, str) else list(tenant)
    return [tenant_or_404(session, slug) for slug in dict.fromkeys(slugs)] or None


def _scope_text(tenants: list[Tenant] | None, task: str | None, base_model: str | None) -> str:
    parts = [f"tenant {', '.join(t.slug for t in tenants)}" if tenants else "any tenant"]
    if task is not None:
        parts.append(f"task {task}")
    if base_model is not None:
        parts.append(f"base model {base_model}")
    return ", ".join(parts)


@transactional
def submit_reevaluation(
    session: Session,
    tenant: str | Sequence[str] | None = None,
    task: str | None = None,
    base_model: str | None = None,
    eval_size: int | None = None,
    priority: int = 0,
    max_attempts: int | None = None,
) -> list[Job]:
    """Queue re-evaluation jobs (state `queued`, kind 'reevaluate'), one per (tenant, base model)
    of the matching live LoRA adapters; returns them. `eval_size` None: each adapter is scored on
    as many validation rows as its job was."""
    tenants = _tenants(session, tenant)
    if task is not None and task not in TASKS:
        raise InvalidInput(f"unknown task {task!r}; allowed: {', '.join(ALL_TASKS)}")
    ok_size = isinstance(eval_size, int) and not isinstance(eval_size, bool) and eval_size >= 1
    if eval_size is not None and not ok_size:
        raise InvalidInput(f"eval_size must be an integer >= 1 (got {eval_size!r})")
    check_priority(priority)
    attempts = attempt_budget(max_attempts)
    found: list[Adapter] = []
    for t in tenants or [None]:
        found += repo.adapters(session, tenant_id=t.id if t is not None else None, task=task,
                               base_model=base_model, lora_only=True)
    if not found:
        scope = _scope_text(tenants, task, base_model)
        raise InvalidInput(f"nothing to re-evaluate: no LoRA adapters for {scope} "
                           "(see `lorafleet adapter list`)")
    groups: dict[tuple[str, str], list[Adapter]] = {}
    for a in found:
        groups.setdefault((a.tenant_id, a.base_model), []).append(a)
    for tenant_id in sorted({t for t, _ in groups}):  # the same door quota as any submission
        check_queued(session, repo.tenant_by_id(session, tenant_id), sum(t == tenant_id for t, _ in groups))
    jobs = []
    for (tenant_id, base), adapters in sorted(groups.items()):
        tasks = sorted({a.task for a in adapters})
        # The adapters by id (the worker reads each verified folder by it) and their tasks.
        spec = {"adapters": [{"id": a.id, "task": a.task} for a in adapters], "base_model": base}
        if eval_size is not None:
            spec["eval_size"] = eval_size
        job = Job(
            tenant_id=tenant_id, state="queued", kind="reevaluate", spec=spec,
            # One task when there is one; the adapters' own tasks are in their rows.
            task=tasks[0] if len(tasks) == 1 else "mixed", method="none", rank=0, base_model=base,
            priority=priority, attempts=0, max_attempts=attempts, cancel_requested=False, dispatch_count=0,
            # Stored base names are canonical: an id is a tenant's full fine-tune (services.inputs).
            base_adapter_id=base if spelled_as_id(base) else None, created_at=utcnow(),
        )
        session.add(job)
        session.flush()
        add_event(session, job, "submitted", f"re-evaluate {len(adapters)} adapter(s) ({', '.join(tasks)}) "
                  f"on {base}", {"priority": priority, "adapters": len(adapters)})
        enqueue_job(session, job.id)
        jobs.append(job)
    return jobs
