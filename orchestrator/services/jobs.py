"""Submitting and managing jobs (the operator's side; the worker's side is in `leases`).

A submission is validated whole before anything is written (`lora_engine.spec.validate_spec`
lists every problem in one SpecError); the jobs row (state `queued`) and its `submitted` event
are written in one transaction. The stored spec is the *resolved* spec (task defaults filled
in), so what runs is recorded even if the defaults change later.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic_core import to_jsonable_python
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from lora_engine.adapters.check import adapter_folder_problems
from lora_engine.catalog import LORA_METHODS, TASKS
from lora_engine.errors import LoraFleetInputError, SpecError
from lora_engine.model_ref import target_problem
from lora_engine.spec import TrainingSpec, validate_spec
from orchestrator import paths
from orchestrator.config import Settings, get_settings
from orchestrator.errors import BatchError, Conflict, InvalidInput, InvalidState, NotFound
from orchestrator.refs import spelled_as_id
from orchestrator.registry import repositories as repo
from orchestrator.registry.models import JOB_STATES, Adapter, Dataset, Job, JobEvent, Tenant, utcnow
from orchestrator.retries import retried_budget
from orchestrator.services._tx import readonly, transactional
from orchestrator.services.adapters import adapter_or_404
from orchestrator.services.datasets import (
    SIZE_VAR,
    check_dataset_files,
    dataset_or_404,
    remove_staged,
    store_dataset,
    stored_file,
    unstored_dataset,
)
from orchestrator.services.enqueue import enqueue_job
from orchestrator.services.estimates import Estimate, estimate_job
from orchestrator.services.events import add_event
from orchestrator.services.ids import resolve_id
from orchestrator.services.inputs import Base, resolve_base
from orchestrator.services.quotas import check_budget, check_queued, check_storage
from orchestrator.services.tenants import tenant_or_404
from orchestrator.services.views import JobDetail
from orchestrator.services.webhook_outbox import job_ended

BATCH_ITEM_KEYS = ("tenant", "spec", "priority", "idempotency_key", "init_from_adapter_id", "tracking")


@dataclass(frozen=True)
class JobLabels:
    """What the tenants' API records beside the spec: the tenant's metadata, the suffix of the
    adapter's model name, a data set of the tenant replacing the held-out split evaluation scores
    (checked by the caller: the tenant's, of the training data's kind); `tracking` False: the job
    stays out of the operator's MLflow (the API's `integrations`, the CLI's `--no-tracking`)."""

    metadata: dict[str, str] | None = None
    suffix: str | None = None
    validation_dataset_id: str | None = None
    tracking: bool = True


@dataclass(frozen=True)
class _Prepared:
    tenant: Tenant
    spec: TrainingSpec  # resolved, as stored: the data set, the adapter and a full-fine-tune base by id
    priority: int
    idempotency_key: str | None
    init_from_adapter_id: str | None
    dataset: Dataset | None = None
    base_adapter_id: str | None = None


def check_priority(priority: Any) -> int:
    """A job's priority, checked (an integer in -1000..1000; InvalidInput otherwise)."""
    if not isinstance(priority, int) or isinstance(priority, bool) or not -1000 <= priority <= 1000:
        raise InvalidInput(f"priority must be an integer between -1000 and 1000 (got {priority!r})")
    return priority


def _start_from(
    session: Session, tenant: Tenant, given: Any, adapter_id: str | None, settings: Settings
) -> tuple[Adapter | None, Path | None]:
    """(the tenant's adapter, None) or (None, a confined adapter folder) to start from, or neither:
    `given` is the spec's init_from (an id or a folder, by spelling), `adapter_id` an id."""
    if given is not None and (not isinstance(given, str) or not given):
        raise SpecError([f"init_from: must be an adapter id or an adapter folder (got {given!r})"])
    if given is not None and adapter_id is not None and given != adapter_id:
        raise InvalidInput("give one adapter to start from: spec.init_from and init_from_adapter_id differ")
    ref = adapter_id if adapter_id is not None else given
    if ref is None:
        return None, None
    if adapter_id is not None or spelled_as_id(ref):
        return adapter_or_404(session, ref, tenant.slug), None
    return None, paths.folder(ref, settings, "init_from")


def _base(session: Session, tenant: Tenant, raw: dict[str, Any], parent: Adapter | None,
          settings: Settings) -> Base | None:
    """The base model the spec names (else the parent adapter's), resolved; the spec is then
    validated against where it is read here (`Base.local`). None: the task's default alias."""
    value = raw.get("base_model")
    if value is None and parent is not None:
        value = parent.base_model  # stored resolved: an alias, a hub id, a folder, a full fine-tune's id
    if not isinstance(value, str) or not value:
        return None  # absent (the task's default), or a type problem for validate_spec to report
    base = resolve_base(session, tenant, value, settings)
    raw["base_model"] = base.local
    return base


def _dataset_ref(session: Session, tenant: Tenant, raw: dict[str, Any], settings: Settings
                 ) -> tuple[Dataset | None, str | None]:
    """(the tenant's data set, None) for an id, (None, the file as given) for a path (confined
    here, copied and validated once the spec is valid), or neither."""
    value = raw.get("dataset")
    if not isinstance(value, str) or not value:
        return None, None
    if spelled_as_id(value):
        dataset = dataset_or_404(session, value, tenant.id, f" for tenant {tenant.slug!r}")
        raw["dataset"] = dataset.id
        return dataset, None
    raw["dataset"] = str(paths.regular_file(value, settings, "dataset", cap=settings.max_dataset_bytes,
                                            cap_var=SIZE_VAR))
    return None, value


def _start_problems(parent: Adapter | None, folder: Path | None, spec: TrainingSpec, base: Base | None
                    ) -> list[str]:
    """Why the adapter to start from does not fit the job (empty: it does)."""
    if folder is not None:  # checked without loading it; registered once the rest is valid
        return adapter_folder_problems(folder, spec.base_model, what="init_from")
    if parent is None:
        return []
    problems = []
    name = base.name if base is not None else spec.base_model
    if name != parent.base_model:
        problems.append(f"init_from: adapter {parent.id} was trained on base model "
                        f"{parent.base_model!r}, the job uses {name!r}")
    parent_kind = TASKS[parent.task].kind if parent.task in TASKS else None
    if parent_kind != spec.info.kind:
        problems.append(f"init_from: adapter {parent.id} is a {parent_kind} adapter ({parent.task}), "
                        f"task {spec.task!r} is {spec.info.kind}")
    return problems


def _register_start(session: Session, tenant: Tenant, folder: Path, spec: TrainingSpec, base: Base | None,
                    settings: Settings, staged: list[Path], dry_run: bool) -> Adapter | None:
    """An adapter folder to start from becomes the tenant's adapter (checked like `adapter import`,
    loaded on the base), so the worker reads it by id like any other; the same files registered
    before are reused. A dry run checks it and registers nothing (None)."""
    from lora_engine.adapters.importing import check_foreign_adapter
    from lora_engine.errors import AdapterError
    from orchestrator.services.imports import register_adapter

    try:
        foreign = check_foreign_adapter(folder, task=spec.task, base_model=spec.base_model)
    except AdapterError as exc:
        raise SpecError([f"init_from: {exc}"]) from None
    if dry_run:
        return None
    return register_adapter(session, tenant, foreign, base or Base(spec.base_model or ""), settings, staged,
                            reuse=True)


def _prepare(
    session: Session,
    tenant_slug: str,
    spec_dict: Mapping[str, Any],
    priority: int,
    idempotency_key: str | None,
    init_from_adapter_id: str | None,
    staged: list[Path],
    settings: Settings | None = None,
    *,
    dry_run: bool = False,
) -> _Prepared:
    """Validate one submission against the registry and the spec; raise on the first kind of
    problem (InvalidInput/NotFound, a refused path) or one SpecError listing every spec problem.

    Each reference is resolved once, by its spelling (`orchestrator.refs`): a data set, an adapter
    to start from and a full fine-tune as base model end up named by id in the stored spec and in
    the job's columns; a path is confined (`orchestrator.paths`). A data set given as a file is
    copied in and uploaded, an adapter folder to start from is registered; their new folders are
    appended to `staged` (the caller removes them if its transaction fails). `dry_run`: both are
    checked, neither stored (the caller removes `staged`)."""
    settings = settings or get_settings()
    tenant = tenant_or_404(session, tenant_slug)
    check_priority(priority)
    key_ok = isinstance(idempotency_key, str) and 0 < len(idempotency_key) <= 255
    if idempotency_key is not None and not key_ok:
        raise InvalidInput("idempotency_key must be a non-empty string of at most 255 characters")
    raw = dict(spec_dict)
    parent, folder = _start_from(session, tenant, raw.pop("init_from", None), init_from_adapter_id, settings)
    base = _base(session, tenant, raw, parent, settings)
    if parent is not None or folder is not None:
        raw["init_from"] = parent.path if parent is not None else str(folder)
    dataset, upload = _dataset_ref(session, tenant, raw, settings)
    spec = validate_spec(raw).resolved()
    problems = _start_problems(parent, folder, spec, base) + devices_problems(spec.devices, tenant, settings)
    if spec.method in LORA_METHODS:
        problems += filter(None, [target_problem(spec.base_model or "", spec.targets)])
    if problems:
        raise SpecError(problems)
    data_file = stored_file(settings, dataset) if dataset is not None else None
    if upload is not None:
        checked = check_dataset_files(upload, spec.info.kind, settings=settings)
        staged.append(checked.staging)
        if dry_run:
            dataset, data_file = unstored_dataset(tenant, checked), checked.data
        else:
            dataset = store_dataset(session, tenant, checked, settings, staged)
            data_file = stored_file(settings, dataset)
    if dataset is not None and dataset.kind != spec.info.kind:
        raise SpecError([f"dataset: data set {dataset.id} holds {dataset.kind} rows, task {spec.task!r} "
                         f"needs {spec.info.kind} rows"])
    spec = _resolve_auto(spec, data_file, settings)
    if folder is not None:
        parent = _register_start(session, tenant, folder, spec, base, settings, staged, dry_run)
    update: dict[str, Any] = {"init_from": parent.id if parent is not None else spec.init_from}
    if base is not None:
        update["base_model"] = base.name
    if dataset is not None and dataset.id is not None:
        update["dataset"] = dataset.id
    return _Prepared(tenant, spec.model_copy(update=update), priority, idempotency_key,
                     parent.id if parent is not None else None, dataset,
                     base.adapter_id if base is not None else None)


def devices_problems(devices: int, tenant: Tenant, settings: Settings) -> list[str]:
    """A job's devices beyond what this fleet allows one job, or beyond its tenant's running
    quota (it counts its devices: it could never start). A quota of 0 holds every job of the
    tenant back on purpose (until it is raised): nothing is refused for it."""
    if devices > settings.max_job_devices:
        return [f"devices: at most {settings.max_job_devices} per job on this fleet (got {devices}; "
                "LORAFLEET_MAX_JOB_DEVICES)"]
    if 0 < tenant.max_running < devices:
        return [f"devices: tenant {tenant.slug!r} may run {tenant.max_running} device(s) at once and "
                f"this job needs {devices}: it could never start; raise it (`lorafleet tenant set-quota "
                f"{tenant.slug} --max-running {devices}`)"]
    return []


def _resolve_auto(spec: TrainingSpec, data_file: Path | None, settings: Settings) -> TrainingSpec:
    """Fill the `auto` budget from the training split's size, so the stored spec says what runs
    (and the dry run's estimate counts it); `data_file` is lorafleet's copy of a custom task's
    data. A file that cannot be read here leaves "auto" for the worker."""
    if not spec.needs_train_rows:
        return spec
    from lora_engine.data import count_train_rows

    try:
        rows = count_train_rows(spec.task, data_dir=settings.data_dir,
                                dataset=str(data_file) if data_file is not None else None)
    except (OSError, LoraFleetInputError):
        return spec  # the file's own problems are the data set checks' to report, not the budget's
    return spec.resolved(train_rows=rows)


def _spec_json(spec: TrainingSpec) -> dict[str, Any]:
    return spec.model_dump(mode="json", exclude_none=True)


def _same_spec(stored: dict[str, Any], spec: TrainingSpec) -> bool:
    """Whether a stored spec is this one. A spec stored before a field was added lacks it, and meant
    that field's default: a missing field matches the default, not another value."""
    given = _spec_json(spec)
    for name in set(stored) | set(given):
        if name in stored and name in given:
            if stored[name] != given[name]:
                return False
        elif name in stored or to_jsonable_python(TrainingSpec.model_fields[name].default) != given[name]:
            return False
    return True


def _existing_for_key(session: Session, p: _Prepared) -> Job | None:
    """The job already submitted under this idempotency key (Conflict if its spec differs)."""
    if p.idempotency_key is None:
        return None
    existing = repo.job_by_idempotency_key(session, p.tenant.id, p.idempotency_key)
    if existing is not None and not _same_spec(existing.spec, p.spec):
        raise Conflict(
            f"idempotency key {p.idempotency_key!r} of tenant {p.tenant.slug!r} was used for job "
            f"{existing.id} with a different spec; use a new key for a new job"
        )
    return existing


def _insert(session: Session, p: _Prepared, max_attempts: int, labels: JobLabels | None = None) -> Job:
    labels = labels or JobLabels()
    spec = p.spec
    job = Job(
        metadata_=labels.metadata, suffix=labels.suffix, validation_dataset_id=labels.validation_dataset_id,
        tracking=labels.tracking,
        tenant_id=p.tenant.id, state="queued", kind="evaluate" if spec.method == "none" else "train",
        spec=_spec_json(spec), task=spec.task, method=spec.method,
        rank=spec.rank, base_model=spec.base_model or "", gradient_checkpointing=spec.gradient_checkpointing,
        priority=p.priority, devices=spec.devices, quantize=spec.quantize,
        idempotency_key=p.idempotency_key, attempts=0, max_attempts=max_attempts,
        cancel_requested=False, init_from_adapter_id=p.init_from_adapter_id, dispatch_count=0,
        dataset_id=p.dataset.id if p.dataset is not None else None, base_adapter_id=p.base_adapter_id,
        created_at=utcnow(),
    )
    session.add(job)
    session.flush()
    what = "untuned baseline" if job.kind == "evaluate" else f"{spec.method} r={spec.rank}"
    add_event(session, job, "submitted", f"{spec.task} {what} on {spec.base_model}",
              {"priority": p.priority, "init_from_adapter_id": p.init_from_adapter_id})
    return job


def attempt_budget(max_attempts: int | None) -> int:
    """A job's attempt budget: `max_attempts` checked (>= 1), or the configured default."""
    value = get_settings().max_attempts if max_attempts is None else max_attempts
    if not isinstance(value, int) or value < 1:
        raise InvalidInput(f"max_attempts must be an integer >= 1 (got {value!r})")
    return value


def _admit(session: Session, p: _Prepared, settings: Settings, queued_adding: int = 1) -> Estimate | None:
    """The tenant's door quotas: queued jobs, room left in its storage quota (a job adds an
    adapter), and the month's device-hour budget (estimated)."""
    check_queued(session, p.tenant, queued_adding)
    check_storage(session, p.tenant, None)
    if p.tenant.device_hours_per_month is None:
        return None
    estimate = estimate_job(session, p.spec, p.dataset, settings)
    check_budget(session, p.tenant, estimate.device_seconds)
    return estimate


def _sent_if_queued(session: Session, job: Job) -> Job:
    """A submitted job, its message sent after the commit while it is queued (a job found by its
    idempotency key too: an interrupted earlier submission may have lost its message)."""
    if job.state == "queued":
        enqueue_job(session, job.id)
    return job


@transactional
def submit_job(
    session: Session,
    tenant_slug: str,
    spec_dict: Mapping[str, Any],
    priority: int = 0,
    idempotency_key: str | None = None,
    init_from_adapter_id: str | None = None,
    max_attempts: int | None = None,
    settings: Settings | None = None,
    *,
    labels: JobLabels | None = None,
) -> Job:
    """Queue one job; returns it (state `queued`). Nothing is written when anything is invalid.

    `spec_dict["dataset"]` is a data set id of the tenant, or a JSONL file, validated and
    uploaded in the same transaction (nothing stays stored if the submission fails).
    With an idempotency key already used by this tenant for the same spec, the existing job is
    returned (whatever its state) and nothing new is written; for a different spec: Conflict.
    """
    return submit_within(session, tenant_slug, spec_dict, priority, idempotency_key, init_from_adapter_id,
                         max_attempts, settings, labels=labels)


def submit_within(
    session: Session,
    tenant_slug: str,
    spec_dict: Mapping[str, Any],
    priority: int = 0,
    idempotency_key: str | None = None,
    init_from_adapter_id: str | None = None,
    max_attempts: int | None = None,
    settings: Settings | None = None,
    *,
    labels: JobLabels | None = None,
) -> Job:
    """Inside a service's transaction: `submit_job`'s work (the API's fine-tuning request adds
    its `labels`)."""
    settings = settings or get_settings()
    staged: list[Path] = []
    try:
        p = _prepare(session, tenant_slug, spec_dict, priority, idempotency_key, init_from_adapter_id, staged,
                     settings)
        existing = _existing_for_key(session, p)
        if existing is not None:
            return _sent_if_queued(session, existing)
        attempts = attempt_budget(max_attempts)
        _admit(session, p, settings)
        if p.idempotency_key is None:
            # Nothing to collide with: no savepoint, whose 2 round trips ran under the tenant's lock.
            return _sent_if_queued(session, _insert(session, p, attempts, labels))
        try:
            with session.begin_nested():
                job = _insert(session, p, attempts, labels)
        except IntegrityError:
            # The same key submitted concurrently: the other transaction won, return its job.
            job = _existing_for_key(session, p)
            if job is None:
                raise
        return _sent_if_queued(session, job)
    except BaseException:
        remove_staged(staged)
        raise


@dataclass(frozen=True)
class Plan:
    """What `job submit --dry-run` reports: the resolved spec, the data set, the estimate."""

    tenant: str
    spec: dict[str, Any]
    dataset: dict[str, Any] | None
    estimate: Estimate

    def to_dict(self) -> dict[str, Any]:
        return {"tenant": self.tenant, "spec": self.spec, "dataset": self.dataset,
                "estimate": self.estimate.to_dict(), "written": False}


@readonly
def plan_job(
    session: Session,
    tenant_slug: str,
    spec_dict: Mapping[str, Any],
    priority: int = 0,
    init_from_adapter_id: str | None = None,
    settings: Settings | None = None,
) -> Plan:
    """Validate a submission exactly as `submit_job` does (quotas included) and estimate it;
    nothing is written (a data set file is validated and profiled, not stored)."""
    settings = settings or get_settings()
    staged: list[Path] = []  # a data set file's staging copy, removed whatever happens
    try:
        p = _prepare(session, tenant_slug, spec_dict, priority, None, init_from_adapter_id, staged, settings,
                     dry_run=True)
        check_queued(session, p.tenant, 1)
        check_storage(session, p.tenant, None)
        estimate = estimate_job(session, p.spec, p.dataset, settings)
        if p.tenant.device_hours_per_month is not None:
            check_budget(session, p.tenant, estimate.device_seconds)
    finally:
        remove_staged(staged)
    data = None
    if p.dataset is not None:
        d = p.dataset
        data = {"id": d.id, "rows": d.rows, "duplicate_rows": d.duplicate_rows,
                "label_counts": d.label_counts, "token_estimate": d.token_estimate,
                "stored": d.id is not None}
    return Plan(p.tenant.slug, _spec_json(p.spec), data, estimate)


def _split_item(item: Any) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """(tenant slug, spec dict, options) of a batch item: `{"tenant", "spec": {...}, ...}` or a
    flat `{"tenant", "task", "rank", ...}` whose non-option keys are the spec."""
    if not isinstance(item, Mapping):
        raise InvalidInput(f"must be a mapping with a 'tenant' and the spec, got {type(item).__name__}")
    tenant = item.get("tenant")
    if not isinstance(tenant, str):
        raise InvalidInput("missing 'tenant' (the tenant's slug)")
    options = {k: item[k] for k in ("priority", "idempotency_key", "init_from_adapter_id", "tracking")
               if k in item}
    if not isinstance(options.get("tracking", True), bool):
        raise InvalidInput(f"'tracking' must be true or false (got {options['tracking']!r})")
    if "spec" in item:
        extra = sorted(set(item) - set(BATCH_ITEM_KEYS))
        if extra:
            raise InvalidInput(f"unknown keys {extra}; allowed next to 'spec': {', '.join(BATCH_ITEM_KEYS)}")
        spec = item["spec"]
        if not isinstance(spec, Mapping):
            raise InvalidInput("'spec' must be a mapping of spec fields")
        return tenant, dict(spec), options
    spec = {k: v for k, v in item.items() if k not in BATCH_ITEM_KEYS}
    return tenant, spec, options


@transactional
def submit_batch(
    session: Session, items: Sequence[Any], max_attempts: int | None = None, settings: Settings | None = None
) -> list[Job]:
    """Queue many jobs, all or nothing; every item is validated before anything is written.

    Raises BatchError with the problems of every invalid item by index (0-based). Items with an
    idempotency key already used (same spec) return the existing job in their place.
    """
    if not items:
        raise InvalidInput("empty batch: nothing to submit")
    settings = settings or get_settings()
    attempts = attempt_budget(max_attempts)
    problems: dict[int, list[str]] = {}
    prepared: list[_Prepared] = []
    labels: list[JobLabels] = []  # beside `prepared`: an item's `tracking: false`
    seen_keys: dict[tuple[str, str], int] = {}
    staged: list[Path] = []
    try:
        for i, item in enumerate(items):
            try:
                tenant, spec, options = _split_item(item)
                p = _prepare(session, tenant, spec, options.get("priority", 0),
                             options.get("idempotency_key"), options.get("init_from_adapter_id"), staged,
                             settings)
                _existing_for_key(session, p)
            except SpecError as exc:
                problems[i] = list(exc.problems)
                continue
            except (LoraFleetInputError, NotFound, Conflict) as exc:
                problems[i] = [str(exc)]
                continue
            if p.idempotency_key is not None:
                key = (p.tenant.id, p.idempotency_key)
                if key in seen_keys:
                    problems[i] = [f"idempotency key {p.idempotency_key!r} repeats item {seen_keys[key]}"]
                    continue
                seen_keys[key] = i
            prepared.append(p)
            labels.append(JobLabels(tracking=options.get("tracking", True)))
        if problems:
            raise BatchError(problems)
        fresh = [p for p in prepared if _existing_for_key(session, p) is None]
        per_tenant: dict[str, list[_Prepared]] = {}
        for p in fresh:
            per_tenant.setdefault(p.tenant.id, []).append(p)
        for _, group in sorted(per_tenant.items()):  # tenant-id order: quota locks never deadlock
            check_queued(session, group[0].tenant, len(group))
            for p in group:
                _admit(session, p, settings, queued_adding=len(group))
        return [_sent_if_queued(session, _existing_for_key(session, p) or _insert(session, p, attempts, lab))
                for p, lab in zip(prepared, labels, strict=True)]
    except BaseException:
        remove_staged(staged)
        raise


@readonly
def list_jobs(
    session: Session, tenant: str | None = None, state: str | None = None, limit: int | None = None,
    offset: int = 0,
) -> Sequence[Job]:
    """Jobs, newest first, optionally of one tenant (slug) and/or one state; a page of them
    with `limit`/`offset`."""
    return jobs_page(session, tenant, state, limit, offset)


def jobs_page(session: Session, tenant: str | None, state: str | None, limit: int | None,
              offset: int) -> Sequence[Job]:
    """Inside a service: `list_jobs`'s rows."""
    if state is not None and state not in JOB_STATES:
        raise InvalidInput(f"unknown state {state!r}; allowed: {', '.join(JOB_STATES)}")
    tenant_id = tenant_or_404(session, tenant).id if tenant is not None else None
    return repo.jobs(session, tenant_id=tenant_id, state=state, limit=limit, offset=offset)


def job_or_404(session: Session, job_id: str, tenant: str | None = None) -> Job:
    """Inside a service: the job (of `tenant` when given), or NotFound."""
    tenant_id = tenant_or_404(session, tenant).id if tenant is not None else None
    job_id = resolve_id(session, Job, job_id, tenant_id=tenant_id, what="job id")
    job = repo.job(session, job_id, tenant_id=tenant_id)
    if job is None:
        scope = f" for tenant {tenant!r}" if tenant is not None else ""
        raise NotFound(f"no job {job_id!r}{scope} (see `lorafleet job list`)")
    return job


@readonly
def get_job(session: Session, job_id: str, tenant: str | None = None) -> JobDetail:
    """A job with its tenant slug, adapter (once trained), metrics and usage."""
    job = job_or_404(session, job_id, tenant)
    adapter = repo.adapter_of_job(session, job.id)
    return JobDetail(
        job=job,
        tenant_slug=repo.tenant_slugs(session, [job.tenant_id])[job.tenant_id],
        adapter=adapter,
        parents=repo.adapter_parents(session, [adapter.id]).get(adapter.id, []) if adapter else [],
        metrics=repo.metrics_of_job(session, job.id, tenant_id=job.tenant_id),
        usage=repo.usage_of_job(session, job.id, tenant_id=job.tenant_id),
        reevaluated=repo.reevaluation_metrics_of_job(session, job.id, tenant_id=job.tenant_id),
    )


@readonly
def job_events(
    session: Session, job_id: str, after_id: int | None = None, tenant: str | None = None
) -> Sequence[JobEvent]:
    """The job's events in order; `after_id` returns only newer ones (for --follow)."""
    job = job_or_404(session, job_id, tenant)
    return repo.events(session, job.id, tenant_id=job.tenant_id, after_id=after_id)


@transactional
def cancel_job(session: Session, job_id: str, tenant: str | None = None) -> Job:
    """Cancel: a queued or paused job is cancelled now; a running one gets `cancel_requested` (the worker
    stops at its next progress hook and calls `mark_cancelled`); a finished one: InvalidState.
    Cancelling a running job twice is a no-op the second time."""
    job = job_or_404(session, job_id, tenant)
    session.refresh(job, with_for_update=True)  # serialise with a concurrent claim
    if job.state in ("queued", "paused"):
        was = job.state
        job.state, job.finished_at = "cancelled", utcnow()
        add_event(session, job, "cancelled", f"cancelled while {was}")
        job_ended(session, job)
    elif job.state == "running":
        if not job.cancel_requested:
            job.cancel_requested = True
            add_event(session, job, "cancel_requested", f"cancel requested; {job.lease_owner} will stop")
    else:
        raise InvalidState(
            f"job {job.id} is already {job.state}; only queued, running or paused jobs can be cancelled"
        )
    return job


@transactional
def retry_job(session: Session, job_id: str, tenant: str | None = None) -> Job:
    """Put a failed or cancelled job back in the queue.

    An operator's retry is a fresh decision: it grants a fresh budget of `max_attempts` (the
    configured default) on top of the attempts already made. `attempts` keeps counting up, so
    every attempt keeps its own usage row and its events stay in order. The job joins the queue
    again, so the tenant's door quotas apply as to a submission: its queued jobs, room left in its
    storage, and a month's device-hour budget not yet used up (QuotaExceeded, nothing changed).
    """
    def retryable() -> None:
        if job.state not in ("failed", "cancelled"):
            raise InvalidState(f"job {job.id} is {job.state}; only failed or cancelled jobs can be retried")

    job = job_or_404(session, job_id, tenant)
    retryable()
    owner = repo.tenant_by_id(session, job.tenant_id)
    assert owner is not None  # jobs.tenant_id is a non-null foreign key
    check_queued(session, owner, 1)  # the tenant's lock first, then the job's, as a claim takes them
    session.refresh(job, with_for_update=True)
    retryable()
    check_storage(session, owner, None)
    check_budget(session, owner, None)
    previous = job.state
    job.max_attempts = retried_budget(job.attempts, get_settings().max_attempts)
    job.state, job.cancel_requested, job.error = "queued", False, None
    job.lease_owner = job.lease_expires_at = job.finished_at = job.started_at = None
    job.dispatched_at, job.dispatch_count = None, 0
    add_event(session, job, "retried", f"retried by the operator (was {previous}); "
              f"attempts {job.attempts + 1}..{job.max_attempts} allowed",
              {"attempts": job.attempts, "max_attempts": job.max_attempts})
    enqueue_job(session, job.id)
    return job

