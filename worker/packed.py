"""Packed execution: one worker pass trains several compatible queued jobs over one resident base.

With `pack_max_jobs` K > 1 (or "auto") the worker looks at the job fair share would claim next.
When it is a packable training job (lora / rslora / dora on a BERT/RoBERTa classification or
Llama generation base, see `lora_engine.packed`), it is claimed and a pack starts around it; then,
at every step boundary where the pack has room, more queued training jobs on the same base whose
task takes the same forward, with the same classifier pooling, are claimed into it, in the same
fair-share order and under the same quotas (`services.claim_partners`: each its own conditional
claim): its first partners at once, later a job submitted while the pack trains, or one whose
tenant's quota a leaving job freed. Anything else is left to `runner.run_job`, unchanged, and so
is a job the pack refuses when it tries to add it (LoRA on an embedding layer): it goes back to
the queue, no attempt used.

K and the token budget per round, where not configured, come from memory: the pack's first round
is measured (activation bytes per token, once per base and process) and planned against free
memory (`lora_engine.packed.memory`); until then the pack holds its first job alone. The limits
and the probe are logged and kept in each job's `packed` event.

Every packed job keeps the lifecycle `runner.run_job` gives a job alone, built from the runner's
own parts: its lease and heartbeat (its progress hook, plus a keep-alive thread while it sets up
or evaluates), its attempt count, its cancel flag, its checkpoints, its outcome (published,
cancelled, requeued or failed by the one retry policy) the moment it leaves the pack, and its
usage: its token share of the packed rounds plus its own optimizer steps and evaluation. A
`packed` event names the jobs it shared rounds with.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lora_engine.catalog import LORA_METHODS
from orchestrator import artifacts
from orchestrator.config import Settings, get_settings
from orchestrator.registry.db import session_scope
from orchestrator.services.leases import UsageRecord
from worker.executor import JobContext, JobResult, StagedAdapter
from worker.inputs import JobInputs, base_folder, local_base, resolve_inputs

# The one lifecycle: a packed job is heartbeated, settled and published exactly as a single one.
from worker.runner import (
    _DEFAULT_CACHE,
    KeepAlive,
    RunResult,
    _failed_usage,
    _Heartbeat,
    _record,
    _settle,
    _succeed,
    default_worker_id,
    model_cache,
    run_job,
    shutting_down,
)

if TYPE_CHECKING:
    from lora_engine.packed.memory import PackPlan, Probe

log = logging.getLogger(__name__)

PACKABLE_METHODS = LORA_METHODS
# While a pack has room, how often it looks for a waiting compatible job (one claim query each).
JOIN_POLL_S = 1.0


def _packable(job, settings: Settings) -> str | None:
    """The packed forward a queued job would take, or None when it trains alone: not a LoRA
    training job, it continues an adapter or trains on a full fine-tune (the single path verifies
    those first), or it evaluates during training."""
    if (job.kind != "train" or job.method not in PACKABLE_METHODS or job.init_from_adapter_id is not None
            or job.base_adapter_id is not None or _evaluates(job)):
        return None
    return _family(job.base_model, job.task, settings)


def _pooling(base_model: str, spec: dict) -> str:
    """What a job's classifier reads (a pack pools one way): the stored spec's resolved pooling;
    a spec stored before pooling was resolved reads as its base model's own, as it will train."""
    from lora_engine.model_ref import base_pooling

    pooling = spec.get("pooling", "auto")
    return base_pooling(base_model) if pooling == "auto" else pooling


def _evaluates(job) -> bool:
    """A job that evaluates during training (the auto budget's default; unresolved counts) runs
    alone: the pack has no evaluation and would keep its last step instead of its best."""
    return bool(job.spec.get("eval_every", 1))


def _family(base_model: str, task: str, settings: Settings) -> str | None:
    """'encoder' / 'decoder': the packed forward this (base, task) takes; None: not packable. A
    base folder is confined again before its config is read (refused: the single path says why)."""
    from lora_engine.catalog import task_info
    from lora_engine.model_ref import is_folder_name
    from lora_engine.models import resolve_model

    try:
        if is_folder_name(base_model):
            base_folder(settings, base_model)
        arch, kind = resolve_model(base_model).arch, task_info(task).kind
    except Exception:  # an unknown base or task is the single path's to report
        return None
    if arch in ("bert", "roberta") and kind != "generation":
        return "encoder"
    if arch == "llama" and kind == "generation":
        return "decoder"
    return None


@dataclass
class _Member:
    ctx: JobContext
    beat: _Heartbeat
    keepalive: KeepAlive
    started: float
    inputs: JobInputs


# Activation bytes per token, measured on a pack's first round, once per (base, device) and process.
_probes: dict[tuple[str, str], Probe] = {}


def packing_enabled(settings: Settings) -> bool:
    return settings.pack_max_jobs == "auto" or settings.pack_max_jobs > 1


def run_packed(job_id: str, *, worker_id: str | None = None, settings: Settings | None = None,
               cache: Any = _DEFAULT_CACHE) -> list[RunResult]:
    """Claim and run the next job, packed with compatible queued jobs when it can be; one
    RunResult per job claimed. Never raises for a job's own failure (as `run_job`)."""
    from orchestrator.registry import repositories as repo
    from orchestrator.services.leases import claim_job

    settings = settings or get_settings()
    worker_id = worker_id or default_worker_id()
    with session_scope(settings) as session:
        head = repo.claim_candidates(session, limit=1)
        lead = repo.job(session, head[0][0]) if head else None
        family = _packable(lead, settings) if lead is not None else None
        if family is None or not packing_enabled(settings):
            return [run_job(job_id, worker_id=worker_id, settings=settings, cache=cache)]
        first = claim_job(session, lead.id, worker_id, settings.lease_seconds)
        if first is None:  # taken by another worker in between: claim as usual
            return [run_job(job_id, worker_id=worker_id, settings=settings, cache=cache)]
        base, snapshot = first.base_model, _snapshot(first)
    log.info("claimed %s to train packed on %s as %s", snapshot[0], base, worker_id)
    cache = model_cache() if cache is _DEFAULT_CACHE else cache
    lead_member = _member(settings, worker_id, snapshot, cache)
    return _train_packed(settings, worker_id, base, family, lead_member, cache)


def _snapshot(job) -> tuple:
    return job.id, job.tenant_id, dict(job.spec), job.attempts, JobInputs.of(job)


def _member(settings: Settings, worker_id: str, snapshot: tuple, cache: Any) -> _Member:
    """A claimed job's lifecycle, as `run_job` sets it up: heartbeat, keep-alive, staging."""
    jid, tenant_id, spec, attempt, inputs = snapshot
    for earlier in range(1, attempt):  # left by a killed worker (as run_job clears them)
        shutil.rmtree(artifacts.staging_path(settings, tenant_id, jid, earlier), ignore_errors=True)
    beat = _Heartbeat(settings, jid, worker_id)
    ctx = JobContext(job_id=jid, tenant_id=tenant_id, kind="train", attempt=attempt, spec=spec,
                     settings=settings, hooks=beat.hooks(),
                     staging_dir=artifacts.staging_path(settings, tenant_id, jid, attempt),
                     checkpoint_dir=artifacts.checkpoint_path(settings, tenant_id, jid), cache=cache)
    keepalive = KeepAlive(beat, interval_s=settings.heartbeat_seconds)
    keepalive.start()
    return _Member(ctx, beat, keepalive, time.monotonic(), inputs)


class _Joiner:
    """Fills the pack at step boundaries: the partners of the first job, then waiting compatible
    jobs whenever there is room (at once when a job has just left, else every JOIN_POLL_S), by
    the repository's fair-share claim and quotas (`services.claim_partners`, each its own claim)."""

    def __init__(self, settings: Settings, worker_id: str, base: str, family: str, pack, cache: Any,
                 pooling: str):
        self.settings, self.worker_id, self.base, self.family = settings, worker_id, base, family
        self.pooling = pooling
        self.pack, self.cache = pack, cache
        self.last = float("-inf")
        self.skip: set[str] = set()  # jobs this pack refused and handed back: not claimed again

    def __call__(self, *, now: bool) -> list[_Member]:
        from orchestrator.services.leases import claim_partners

        pack = self.pack
        room = pack.max_jobs - len(pack.jobs)
        if room < 1 or not pack.jobs or shutting_down():
            return []
        if not now and time.monotonic() - self.last < JOIN_POLL_S:
            return []
        self.last = time.monotonic()
        tokens_left = None if pack.max_tokens is None else pack.max_tokens - pack.planned_tokens

        def accept(job) -> bool:
            nonlocal tokens_left
            if (job.id in self.skip or _packable(job, self.settings) != self.family
                    or _pooling(job.base_model, job.spec) != self.pooling):
                return False
            if tokens_left is not None:
                need = _round_tokens(job)
                if need is None or need > tokens_left:
                    return False
                tokens_left -= need
            return True

        with session_scope(self.settings) as session:
            claimed = claim_partners(session, self.worker_id, self.settings.lease_seconds,
                                     base_model=self.base, methods=PACKABLE_METHODS, limit=room,
                                     accept=accept)
            snapshots = [_snapshot(j) for j in claimed]
        if snapshots:
            log.info("%d job(s) join the pack on %s: %s", len(snapshots), self.base,
                     ", ".join(s[0] for s in snapshots))
        return [_member(self.settings, self.worker_id, s, self.cache) for s in snapshots]


def _round_tokens(job) -> int | None:
    """A queued job's batch_size × max_length (what a pack's token budget counts); None: unknown
    until its data is read (an "auto" batch size) or its spec does not validate."""
    from lora_engine.packed.trainer import round_tokens
    from lora_engine.spec import TrainingSpec

    try:
        spec = TrainingSpec.model_validate(job.spec).resolved()
    except Exception:
        return None
    return None if spec.batch_size == "auto" else round_tokens(spec)


def _limits(settings: Settings, pack, base: str) -> PackPlan | None:
    """The pack's K and token budget: configured, else planned from the measured activation bytes
    per token of this base against free memory; None while a needed probe is not measured yet."""
    from lora_engine.packed.memory import PackPlan, free_memory, plan_pack

    jobs = None if settings.pack_max_jobs == "auto" else settings.pack_max_jobs
    tokens = settings.pack_max_tokens
    if jobs is not None and tokens is not None:
        return PackPlan(jobs, tokens)
    probe = _probes.get((base, pack.device.name))
    if probe is None or not pack.jobs:
        return None
    free = free_memory(pack.device.device)
    fraction = settings.pack_memory_fraction
    jobs, tokens = plan_pack(free_bytes=free, bytes_per_token=probe.bytes_per_token,
                             job_tokens=max(pack.planned_tokens // len(pack.jobs), 1), fraction=fraction,
                             max_jobs=jobs, max_tokens=tokens)
    plan = PackPlan(jobs, tokens, free, fraction, probe.bytes_per_token, probe.tokens)
    log.info("pack limits on %s (%s): %d jobs, %d tokens per round, from %.0f activation bytes per token "
             "(measured over %d tokens) and %d bytes free x %.2f", base, pack.device.name, jobs, tokens,
             probe.bytes_per_token, probe.tokens, free, fraction)
    return plan


def _train_packed(settings: Settings, worker_id: str, base: str, family: str, lead: _Member,
                  cache: Any) -> list[RunResult]:
    from lora_engine.errors import LoraConfigError, TrainingStopped
    from lora_engine.packed import Pack

    members = {lead.ctx.job_id: lead}
    results: list[RunResult] = []
    kind, labels = ("generation", None) if family == "decoder" else ("classification", 2)
    try:
        local = local_base(settings, lead.inputs)  # a base folder confined again, before it is opened
        if cache is not None:
            model, tokenizer = cache.checkout(local, kind, labels)
        else:
            from lora_engine.models import load_base_model

            model, tokenizer = load_base_model(local, kind, labels)
    except Exception as exc:  # the shared base failed to load: the job settles as it would alone
        return [_fail(settings, worker_id, lead, exc)]
    # Members' specs name the base where it is read here (resolve_inputs), the pack likewise; the
    # joiner claims partners by the registry's name for it.
    pack = Pack(model, tokenizer, data_dir=settings.data_dir, base_model=local, max_jobs=1)
    join = _Joiner(settings, worker_id, base, family, pack, cache, _pooling(local, lead.ctx.spec))

    def add(m: _Member) -> None:
        members[m.ctx.job_id] = m
        try:
            pack.add(_spec(settings, m), m.ctx.staging_dir, _hooks(settings, m), key=m.ctx.job_id)
        except LoraConfigError as exc:  # the pack refuses it (e.g. LoRA on embeddings): alone it may train
            join.skip.add(m.ctx.job_id)
            results.append(_release(settings, worker_id, m, exc))
        except Exception as exc:  # this job cannot start (bad data, a refused spec): it alone
            results.append(_fail(settings, worker_id, m, exc))

    def apply(plan) -> None:
        pack.max_jobs, pack.max_tokens = plan.max_jobs, plan.max_tokens

    try:
        add(lead)
        plan = _limits(settings, pack, base)
        if plan is not None:
            apply(plan)
            for m in join(now=True):
                add(m)
        while pack.jobs:
            measure = plan is None
            try:
                outcomes = pack.step(measure=measure)
            except Exception as exc:  # the shared pass failed: every job still in it gets the error
                for jid in list(pack.jobs):
                    results.append(_fail(settings, worker_id, members[jid], exc))
                break
            for outcome in outcomes:
                member = members[outcome.key]
                results.append(_leave(settings, worker_id, member, outcome, plan, TrainingStopped))
            if measure:
                _probes[(base, pack.device.name)] = pack.probe
                plan = _limits(settings, pack, base)
                if plan is not None:
                    apply(plan)
            for m in join(now=bool(outcomes) or measure):
                add(m)
    finally:
        for m in members.values():  # a job set up but never stepped (the pass failed first) is settled above
            m.keepalive.stop()
        pack.close()
        if cache is not None:
            cache.checkin()
    if lead.ctx.job_id in join.skip:  # handed back: the single path claims it (fair share) and trains it
        results.append(run_job(lead.ctx.job_id, worker_id=worker_id, settings=settings, cache=cache))
    return results


def _spec(settings: Settings, m: _Member):
    from lora_engine.spec import TrainingSpec

    return TrainingSpec.model_validate(resolve_inputs(settings, m.inputs, m.ctx.spec))


def _hooks(settings: Settings, m: _Member):
    from lora_engine.recipe import TrainHooks

    beat = m.beat

    def on_progress(p) -> None:
        beat.on_metrics(p.step, p.epoch, {"loss": p.loss, "lr": p.lr})  # flushed by the heartbeat
        beat.on_progress(p.step, p.total, p.loss)

    return TrainHooks(on_progress=on_progress, should_stop=beat.should_stop,
                     checkpoint_every=settings.checkpoint_every, checkpoint_dir=m.ctx.checkpoint_dir,
                     on_checkpoint=beat.on_checkpoint, on_resume=beat.on_resume,
                     divergence_factor=settings.divergence_factor,
                     divergence_patience=settings.divergence_patience)


def _leave(settings: Settings, worker_id: str, m: _Member, outcome, plan, stopped_cls) -> RunResult:
    """Settle a job the moment it leaves the pack, as `run_job` settles a job alone."""
    from orchestrator.errors import LeaseLost
    from orchestrator.services.leases import record_packed

    m.keepalive.stop()
    try:
        if outcome.packed_with:
            try:
                with session_scope(settings) as session:
                    record_packed(session, m.ctx.job_id, worker_id, sorted(outcome.packed_with),
                                  limits=plan.to_dict() if plan is not None else None)
            except LeaseLost as lost:
                return RunResult("lost", m.ctx.job_id, str(lost))
        if outcome.status == "succeeded":
            stats = outcome.result.stats
            usage = UsageRecord(device=stats.device, device_seconds=float(stats.device_s),
                                wall_seconds=float(stats.wall_s), peak_memory_bytes=stats.peak_mem_bytes,
                                examples=int(stats.examples), tokens=int(stats.tokens))
            adapter = StagedAdapter(outcome.result.adapter_dir, int(stats.trainable_params),
                                    int(stats.total_params))
            return _succeed(m.ctx, worker_id, JobResult(metrics=outcome.result.metrics, usage=usage,
                                                        adapter=adapter))
        usage = UsageRecord(device=_failed_usage(0.0).device, device_seconds=outcome.device_s,
                            wall_seconds=time.monotonic() - m.started, examples=outcome.examples,
                            tokens=outcome.tokens)
        exc = outcome.error if outcome.status == "failed" else stopped_cls(outcome.step)
        return _settle(settings, m.ctx.job_id, worker_id, m.ctx.attempt, exc, usage,
                       cancel_requested=m.beat.cancel, spec=m.ctx.spec)
    finally:
        _clean_staging(m)


def _release(settings: Settings, worker_id: str, m: _Member, exc: Exception) -> RunResult:
    """A job the pack cannot take goes back to the queue, no attempt used, to train alone."""
    from orchestrator.errors import LeaseLost
    from orchestrator.services.leases import requeue_job

    m.keepalive.stop()
    reason = f"not packed: {exc}"
    log.info("job %s cannot join the pack (%s): back to the queue to train alone", m.ctx.job_id, exc)
    try:
        _record(settings, lambda s: requeue_job(s, m.ctx.job_id, worker_id, reason, release=True))
    except LeaseLost as lost:
        return RunResult("lost", m.ctx.job_id, str(lost))
    finally:
        _clean_staging(m)
    return RunResult("requeued", m.ctx.job_id, reason)


def _fail(settings: Settings, worker_id: str, m: _Member, exc: Exception) -> RunResult:
    m.keepalive.stop()
    try:
        return _settle(settings, m.ctx.job_id, worker_id, m.ctx.attempt, exc,
                       _failed_usage(time.monotonic() - m.started), cancel_requested=m.beat.cancel,
                       spec=m.ctx.spec)
    finally:
        _clean_staging(m)


def _clean_staging(m: _Member) -> None:
    shutil.rmtree(m.ctx.staging_dir, ignore_errors=True)
    with contextlib.suppress(OSError):  # only if no other attempt is staging there
        m.ctx.staging_dir.parent.rmdir()
