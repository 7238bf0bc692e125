"""Packed execution: one worker pass trains several compatible queued jobs over one resident base.

With `pack_max_jobs` K > 1 the worker looks at the job fair share would claim next. When it is a
packable training job (lora / rslora / dora on a BERT/RoBERTa classification or Llama generation
base, see `lora_engine.packed`), it is claimed together with up to K − 1 more queued training jobs
on the same base whose task takes the same forward, in the same fair-share order and under the
same quotas (`services.claim_partners`: each its own conditional claim). Anything else is left to
`runner.run_job`, unchanged.

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
from typing import Any

from lora_engine.catalog import LORA_METHODS
from orchestrator import artifacts
from orchestrator.config import Settings, get_settings
from orchestrator.registry.db import session_scope
from orchestrator.services.leases import UsageRecord
from worker.executor import JobContext, JobResult, StagedAdapter

# The one lifecycle: a packed job is heartbeated, settled and published exactly as a single one.
from worker.runner import (
    _DEFAULT_CACHE,
    KeepAlive,
    RunResult,
    _failed_usage,
    _Heartbeat,
    _resolve_inputs,
    _settle,
    _succeed,
    default_worker_id,
    model_cache,
    run_job,
)

log = logging.getLogger(__name__)

PACKABLE_METHODS = LORA_METHODS


def _packable(job) -> str | None:
    """The packed forward a queued job would take, or None when it trains alone: not a LoRA
    training job, it continues an adapter (the single path verifies that parent first), or it
    evaluates during training."""
    if (job.kind != "train" or job.method not in PACKABLE_METHODS or job.init_from_adapter_id is not None
            or _evaluates(job)):
        return None
    return _family(job.base_model, job.task)


def _evaluates(job) -> bool:
    """A job that evaluates during training (the auto budget's default; unresolved counts) runs
    alone: the pack has no evaluation and would keep its last step instead of its best."""
    return bool(job.spec.get("eval_every", 1))


def _family(base_model: str, task: str) -> str | None:
    """'encoder' / 'decoder': the packed forward this (base, task) takes; None: not packable."""
    from lora_engine.catalog import task_info
    from lora_engine.models import resolve_model

    try:
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


def run_packed(job_id: str, *, worker_id: str | None = None, settings: Settings | None = None,
               cache: Any = _DEFAULT_CACHE) -> list[RunResult]:
    """Claim and run the next job, packed with compatible queued jobs when it can be; one
    RunResult per job claimed. Never raises for a job's own failure (as `run_job`)."""
    from orchestrator.registry import repositories as repo
    from orchestrator.services import claim_job, claim_partners

    settings = settings or get_settings()
    worker_id = worker_id or default_worker_id()
    with session_scope(settings) as session:
        head = repo.claim_candidates(session, limit=1)
        lead = repo.job(session, head[0][0]) if head else None
        family = _packable(lead) if lead is not None else None
        if family is None or settings.pack_max_jobs < 2:
            return [run_job(job_id, worker_id=worker_id, settings=settings, cache=cache)]
        first = claim_job(session, lead.id, worker_id, settings.lease_seconds)
        if first is None:  # taken by another worker in between: claim as usual
            return [run_job(job_id, worker_id=worker_id, settings=settings, cache=cache)]
        base = first.base_model
        claimed = [first, *claim_partners(
            session, worker_id, settings.lease_seconds, base_model=base, methods=PACKABLE_METHODS,
            limit=settings.pack_max_jobs - 1, accept=lambda job: _packable(job) == family)]
        snapshot = [(j.id, j.tenant_id, dict(j.spec), j.attempts) for j in claimed]
    log.info("claimed %d jobs to train packed on %s as %s", len(snapshot), base, worker_id)
    cache = model_cache() if cache is _DEFAULT_CACHE else cache
    members = {}
    for jid, tenant_id, spec, attempt in snapshot:
        beat = _Heartbeat(settings, jid, worker_id)
        ctx = JobContext(job_id=jid, tenant_id=tenant_id, kind="train", attempt=attempt, spec=spec,
                         settings=settings, hooks=beat.hooks(),
                         staging_dir=artifacts.staging_path(settings, tenant_id, jid, attempt),
                         checkpoint_dir=artifacts.checkpoint_path(settings, tenant_id, jid), cache=cache)
        keepalive = KeepAlive(beat, interval_s=settings.heartbeat_seconds)
        keepalive.start()
        members[jid] = _Member(ctx, beat, keepalive, time.monotonic())
    return _train_packed(settings, worker_id, base, family, members, cache)


def _train_packed(settings: Settings, worker_id: str, base: str, family: str, members: dict[str, _Member],
                  cache: Any) -> list[RunResult]:
    from lora_engine.errors import TrainingStopped
    from lora_engine.packed import Pack
    from lora_engine.recipe import TrainHooks
    from lora_engine.spec import TrainingSpec

    results: list[RunResult] = []
    kind, labels = ("generation", None) if family == "decoder" else ("classification", 2)
    try:
        if cache is not None:
            model, tokenizer = cache.checkout(base, kind, labels)
        else:
            from lora_engine.models import load_base_model

            model, tokenizer = load_base_model(base, kind, labels)
    except Exception as exc:  # the shared base failed to load: each job settles as it would alone
        return [_fail(settings, worker_id, m, exc) for m in members.values()]
    pack = Pack(model, tokenizer, data_dir=settings.data_dir, base_model=base, max_jobs=len(members),
                max_tokens=settings.pack_max_tokens)
    try:
        for jid, m in members.items():
            try:
                spec = TrainingSpec.model_validate(_resolve_inputs(settings, m.ctx.tenant_id, m.ctx.spec))
                pack.add(spec, m.ctx.staging_dir, _hooks(settings, m, TrainHooks), key=jid)
            except Exception as exc:  # this job cannot start (bad data, a refused spec): it alone
                results.append(_fail(settings, worker_id, m, exc))
        while pack.jobs:
            try:
                outcomes = pack.step()
            except Exception as exc:  # the shared pass failed: every job still in it gets the error
                for jid in list(pack.jobs):
                    results.append(_fail(settings, worker_id, members[jid], exc))
                break
            for outcome in outcomes:
                results.append(_leave(settings, worker_id, members[outcome.key], outcome, TrainingStopped))
    finally:
        pack.close()
        if cache is not None:
            cache.checkin()
    return results


def _hooks(settings: Settings, m: _Member, hooks_cls):
    beat = m.beat

    def on_progress(p) -> None:
        beat.on_metrics(p.step, p.epoch, {"loss": p.loss, "lr": p.lr})  # flushed by the heartbeat
        beat.on_progress(p.step, p.total, p.loss)

    return hooks_cls(on_progress=on_progress, should_stop=beat.should_stop,
                     checkpoint_every=settings.checkpoint_every, checkpoint_dir=m.ctx.checkpoint_dir,
                     on_checkpoint=beat.on_checkpoint, on_resume=beat.on_resume,
                     divergence_factor=settings.divergence_factor,
                     divergence_patience=settings.divergence_patience)


def _leave(settings: Settings, worker_id: str, m: _Member, outcome, stopped_cls) -> RunResult:
    """Settle a job the moment it leaves the pack, as `run_job` settles a job alone."""
    from orchestrator.services import LeaseLost, record_packed

    m.keepalive.stop()
    try:
        if outcome.packed_with:
            try:
                with session_scope(settings) as session:
                    record_packed(session, m.ctx.job_id, worker_id, sorted(outcome.packed_with))
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
                       cancel_requested=m.beat.cancel)
    finally:
        _clean_staging(m)


def _fail(settings: Settings, worker_id: str, m: _Member, exc: Exception) -> RunResult:
    m.keepalive.stop()
    try:
        return _settle(settings, m.ctx.job_id, worker_id, m.ctx.attempt, exc,
                       _failed_usage(time.monotonic() - m.started), cancel_requested=m.beat.cancel)
    finally:
        _clean_staging(m)


def _clean_staging(m: _Member) -> None:
    shutil.rmtree(m.ctx.staging_dir, ignore_errors=True)
    with contextlib.suppress(OSError):  # only if no other attempt is staging there
        m.ctx.staging_dir.parent.rmdir()
