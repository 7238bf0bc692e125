"""Queueing a merge of adapters (`lorafleet adapter merge`): a job of kind 'merge'.

Everything is checked at the door, before anything is written: the options
(`lora_engine.adapter_merging.merge_options_problems`), the parents by id within the tenant (another
tenant's adapter is as unknown as one that never existed), and what makes them mergeable: one base
model, one task, one method that is plain LoRA (a DoRA adapter's magnitude vector has no weighted
merge; a full fine-tune is a whole model), their files intact (sha256) and of one rank unless
`cat` (the rank the files hold), and for a classifier the same label set (its head is averaged).
The job's spec lists the parents by id with their weights; the worker reads each verified folder
by id (`worker.inputs`) and writes the new adapter (`worker.merging`). On success
`record_parents` links the new adapter to its parents (`adapter_parents`), in the transaction
that registers it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy.orm import Session

from lora_engine.adapter_merging import (
    HOWS,
    MAX_PARENTS,
    RANDOM,
    USES_DENSITY,
    default_weights,
    merge_options_problems,
    method_problem,
    rank_problems,
)
from lora_engine.catalog import TASKS
from lora_engine.errors import AdapterError, shown
from orchestrator.errors import InvalidInput
from orchestrator.registry.models import Adapter, AdapterParent, Job, utcnow
from orchestrator.services._tx import transactional
from orchestrator.services.adapters import adapter_or_404
from orchestrator.services.enqueue import enqueue_job
from orchestrator.services.events import add_event
from orchestrator.services.fine_tuning import MAX_SUFFIX, SUFFIX_RE
from orchestrator.services.jobs import attempt_budget, check_priority
from orchestrator.services.quotas import check_budget, check_queued, check_storage
from orchestrator.services.tenants import tenant_or_404

MAX_SEED = 2**31 - 1
# The API's request body (`merge_request`): its field -> submit_merge's argument.
REQUEST_FIELDS = {"models": "adapters", "method": "how", "weights": "weights", "density": "density",
                  "seed": "seed", "suffix": "suffix"}
MAX_REF_CHARS = 300


def _label_names(row: Adapter) -> tuple[str, ...]:
    from lora_engine.adapters.folder import read_adapter_meta

    return tuple(read_adapter_meta(row.path).label_names)


def _file_rank(row: Adapter) -> int:
    """The rank the adapter's files hold (sha256 checked first): what the merge multiplies. (A
    method that trains at one rank and stores another records the stored one in its config.)"""
    from lora_engine.adapters.digest import verify_adapter_files
    from lora_engine.adapters.folder import read_adapter_config

    verify_adapter_files(row.path, row.sha256)
    rank = read_adapter_config(row.path).get("r")
    if type(rank) is not int or rank < 1:
        raise AdapterError(f"adapter {row.id}: its adapter_config.json holds no rank")
    return rank


def registry_problems(parents: Sequence[Adapter], how: str) -> list[str]:
    """Why these (registry) adapters cannot be merged together, from their registry rows."""
    problems = []
    for row in parents:
        why = method_problem(row.method)
        if why:
            problems.append(f"adapter {row.id}: {why}")
    for what, get in (("base model", lambda a: a.base_model), ("task", lambda a: a.task),
                      ("method", lambda a: a.method)):
        values = sorted({get(a) for a in parents})
        if len(values) > 1:
            problems.append(f"the adapters differ in {what} ({', '.join(values)}): they must share it")
    return problems


@transactional
def submit_merge(
    session: Session,
    tenant: str,
    adapters: Sequence[str],
    how: str,
    weights: Sequence[float] | None = None,
    density: float | None = None,
    *,
    seed: int | None = None,
    suffix: str | None = None,
    priority: int = 0,
    max_attempts: int | None = None,
) -> Job:
    """Queue a merge of the tenant's `adapters` (ids, unique prefixes or model names) into a new
    adapter (state `queued`, kind 'merge'); InvalidInput listing every problem, NotFound for an
    adapter the tenant has not. `weights` None: equal weights summing to 1; `density` None: 0.5
    for the methods that prune; `seed`: DARE's random draws (recorded; default 0)."""
    owner = tenant_or_404(session, tenant)
    check_priority(priority)
    attempts = attempt_budget(max_attempts)
    problems = merge_options_problems(how, None if weights is None else list(weights), density, len(adapters))
    if seed is not None and (type(seed) is not int or not 0 <= seed <= MAX_SEED):
        problems.append(f"seed must be an integer from 0 to {MAX_SEED} (got {shown(seed)})")
    if suffix is not None and (not isinstance(suffix, str) or len(suffix) > MAX_SUFFIX
                               or not SUFFIX_RE.match(suffix)):
        problems.append(f"suffix must be 1 to {MAX_SUFFIX} letters, digits, '.', '_' or '-'")
    if problems:
        raise InvalidInput("cannot merge: " + "; ".join(problems))
    parents = [adapter_or_404(session, ref, owner.slug) for ref in adapters]
    repeated = sorted({a.id for a in parents if sum(b.id == a.id for b in parents) > 1})
    if repeated:
        raise InvalidInput(f"cannot merge: adapter {', '.join(repeated)} is given more than once")
    problems = registry_problems(parents, how)
    if problems:
        raise InvalidInput("cannot merge: " + "; ".join(problems))
    weights = default_weights(len(parents)) if weights is None else [float(w) for w in weights]
    task = parents[0].task
    has_head = task in TASKS and TASKS[task].kind != "generation"
    try:  # the files, as the worker will read them (it checks them again)
        ranks = [_file_rank(a) for a in parents]
        labels = {_label_names(a) for a in parents} if has_head else set()
    except AdapterError as exc:
        raise InvalidInput(f"cannot merge: {exc}") from None
    problems = rank_problems(ranks, how)
    if has_head:
        problems += merge_options_problems(how, weights, density, len(parents), has_head=True)
        if len(labels) > 1:
            sets = " / ".join(",".join(x) or "-" for x in sorted(labels))
            problems.append(f"the classifiers have different label sets ({sets}): their heads cannot be "
                            "averaged")
    if problems:
        raise InvalidInput("cannot merge: " + "; ".join(problems))
    check_queued(session, owner, 1)
    check_storage(session, owner, None)
    check_budget(session, owner, None)
    first = parents[0]
    rank = sum(ranks) if how == "cat" else ranks[0]
    spec: dict[str, Any] = {
        "how": how, "parents": [{"id": a.id, "weight": w} for a, w in zip(parents, weights, strict=True)],
        "density": (0.5 if density is None else float(density)) if how in USES_DENSITY else None,
        "seed": (seed or 0) if how in RANDOM else None,
        # The frozen base's parameters: the new adapter's total is these plus its own.
        "base_params": first.total_params - first.trainable_params,
    }
    job = Job(tenant_id=owner.id, state="queued", kind="merge", spec=spec, task=task, method="lora",
              rank=rank, base_model=first.base_model, priority=priority, attempts=0, max_attempts=attempts,
              cancel_requested=False, dispatch_count=0, suffix=suffix or f"merge-{how}", created_at=utcnow())
    session.add(job)
    session.flush()
    add_event(session, job, "submitted", f"merge {len(parents)} adapters ({how}) on {first.base_model}",
              {"priority": priority, "parents": [a.id for a in parents], "how": how})
    enqueue_job(session, job.id)
    return job


def _number(value: Any) -> bool:
    return type(value) in (int, float)


def merge_request(body: Any) -> dict[str, Any]:
    """submit_merge's arguments from the API's JSON body (shapes only; the service checks the
    rest): InvalidInput naming every field that is wrong or unknown."""
    if not isinstance(body, dict):
        raise InvalidInput("the body must be a JSON object: {\"models\": [...], \"method\": ...}")
    problems = [f"unknown field {str(k)[:40]!r}; allowed: {', '.join(REQUEST_FIELDS)}"
                for k in body if k not in REQUEST_FIELDS][:5]
    models, how = body.get("models"), body.get("method")
    if not (isinstance(models, list) and 2 <= len(models) <= MAX_PARENTS
            and all(isinstance(m, str) and 0 < len(m) <= MAX_REF_CHARS for m in models)):
        problems.append(f"models: a list of 2 to {MAX_PARENTS} adapter names (ft:…) or ids")
    if not isinstance(how, str):
        problems.append(f"method: one of {', '.join(HOWS)}")
    weights = body.get("weights")
    if weights is not None and not (isinstance(weights, list) and len(weights) <= MAX_PARENTS
                                    and all(_number(w) for w in weights)):
        problems.append("weights: a list of numbers, one per model")
    if body.get("density") is not None and not _number(body["density"]):
        problems.append("density: a number in (0, 1]")
    if body.get("seed") is not None and type(body["seed"]) is not int:
        problems.append(f"seed: an integer from 0 to {MAX_SEED}")
    if body.get("suffix") is not None and not isinstance(body["suffix"], str):
        problems.append(f"suffix: 1 to {MAX_SUFFIX} letters, digits, '.', '_' or '-'")
    if problems:
        raise InvalidInput("cannot merge: " + "; ".join(problems))
    return {REQUEST_FIELDS[k]: v for k, v in body.items()}


def merge_parent_ids(spec: dict) -> list[str]:
    """The parents a merge job's spec lists, in order."""
    return [p["id"] for p in spec.get("parents", [])]


def record_parents(session: Session, job: Job, adapter: Adapter) -> None:
    """Link a merge job's new adapter to its parents (in the transaction that registers it)."""
    for position, parent in enumerate(job.spec.get("parents", [])):
        session.add(AdapterParent(adapter_id=adapter.id, position=position, parent_id=parent["id"],
                                  tenant_id=job.tenant_id, weight=float(parent["weight"])))
