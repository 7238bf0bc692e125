"""Packed execution: one worker pass trains several compatible queued jobs over one resident base.

With `pack_max_jobs` K > 1 (or "auto") the worker looks at the job fair share would claim next.
When it is a packable training job (`lora_engine.packing.packable`: the one rule, which `Pack.check`
and the partners' claim apply too), it is claimed and a pack starts around it; then,
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

Every packed job is a `worker.attempt.Attempt`, as a job alone is: its lease and heartbeat (its
progress hook, plus a keep-alive thread while it sets up or evaluates), its attempt count, its
cancel flag, its checkpoints, its phases and the Prometheus progress gauges (`worker.train`'s
hooks), its outcome (published, cancelled, requeued or failed by the one retry decision) the moment
it leaves the pack, and its usage: its token share of the packed rounds plus its own optimizer
steps and evaluation. A `packed` event names the jobs it shared rounds with.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from orchestrator.config import Settings, get_settings
from orchestrator.registry.db import session_scope
from orchestrator.services.leases import UsageRecord
from worker.attempt import Attempt, RunResult, device_name, shutting_down
from worker.executor import JobResult, StagedAdapter
from worker.inputs import base_folder, local_base
from worker.presence import device
from worker.runner import WARM_CACHE, cache_for, default_worker_id, run_job
from worker.train import train_hooks

if TYPE_CHECKING:
    from lora_engine.packed.memory import PackPlan, Probe

log = logging.getLogger(__name__)

# While a pack has room, how often it looks for a waiting compatible job (one claim query each).
JOIN_POLL_S = 1.0


def _packable(job, settings: Settings) -> str | None:
    """The packed forward a queued job would take ('encoder' / 'decoder'), or None when it trains
    alone, by `lora_engine.packing.packable` (a training job only; its base and task resolved)."""
    from lora_engine.catalog import task_info
    from lora_engine.methods import PACKABLE_METHODS
    from lora_engine.model_ref import is_folder_name
    from lora_engine.models import resolve_model
    from lora_engine.packing import packable

    if job.kind != "train" or job.method not in PACKABLE_METHODS:  # before resolving its base
        return None
    try:
        if is_folder_name(job.base_model):  # confined again before its config is read
            base_folder(settings, job.base_model)
        arch, kind = resolve_model(job.base_model).arch, task_info(job.task).kind
    except Exception:  # an unknown or refused base, an unknown task: the single path's to report
        return None
    # A job on a full fine-tune (base_adapter_id) reads its base from that adapter, verified on
    # the single path first, as a parent it continues is.
    return packable(method=job.method, arch=arch, kind=kind, evaluates=_evaluates(job),
                    continues_adapter=job.init_from_adapter_id is not None or job.base_adapter_id is not None,
                    recomputes=bool(job.spec.get("gradient_checkpointing")), devices=job.devices,
                    quantize=job.quantize)


def _pooling(base_model: str, spec: dict) -> str:
    """What a job's classifier reads (a pack pools one way): the stored spec's resolved pooling;
    a spec stored before pooling was resolved reads as its base model's own, as it will train."""
    from lora_engine.model_ref import base_pooling

    pooling = spec.get("pooling", "auto")
    return base_pooling(base_model) if pooling == "auto" else pooling


def _evaluates(job) -> bool:
    """A job that evaluates during training (the auto budget's default; unresolved counts)."""
    return bool(job.spec.get("eval_every", 1))


# Activation bytes per token, measured on a pack's first round, once per (base, device) and process.
_probes: dict[tuple[str, str], Probe] = {}


def packing_enabled(settings: Settings) -> bool:
    return settings.pack_max_jobs == "auto" or settings.pack_max_jobs > 1


def run_packed(job_id: str, *, worker_id: str | None = None, settings: Settings | None = None,
               cache: Any = WARM_CACHE) -> list[RunResult]:
    """Claim and run the next job, packed with compatible queued jobs when it can be; one
    RunResult per job claimed. Never raises for a job's own failure (as `run_job`)."""
    from orchestrator.registry import repositories as repo
    from orchestrator.services.leases import claim_job, message_class

    settings = settings or get_settings()
    worker_id = worker_id or default_worker_id()
    with session_scope(settings) as session:
        # The head is a job of the message's class, as `claim_next(message=…)` claims.
        head = repo.claim_candidates(session, limit=1, devices=settings.worker_devices,
                                     device_kind=device()[0], job_class=message_class(session, job_id))
        lead = repo.job(session, head[0][0]) if head else None
        family = _packable(lead, settings) if lead is not None else None
        if family is None or not packing_enabled(settings):
            return [run_job(job_id, worker_id=worker_id, settings=settings, cache=cache)]
        first = claim_job(session, lead.id, worker_id, settings.lease_seconds,
                          devices=settings.worker_devices)
        if first is None:  # taken by another worker in between: claim as usual
            return [run_job(job_id, worker_id=worker_id, settings=settings, cache=cache)]
        cache = cache_for(cache)
        base, attempt = first.base_model, Attempt.of(settings, worker_id, first, cache)
    log.info("claimed %s to train packed on %s as %s", attempt.job_id, base, worker_id)
    return _train_packed(settings, worker_id, base, family, attempt.start(), cache)


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

    def __call__(self, *, now: bool) -> list[Attempt]:
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
                                     base_model=self.base, limit=room, accept=accept)
            joined = [Attempt.of(self.settings, self.worker_id, j, self.cache) for j in claimed]
        if joined:
            log.info("%d job(s) join the pack on %s: %s", len(joined), self.base,
                     ", ".join(a.job_id for a in joined))
        return [a.start() for a in joined]


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


def _train_packed(settings: Settings, worker_id: str, base: str, family: str, lead: Attempt,
                  cache: Any) -> list[RunResult]:
    from lora_engine.errors import LoraConfigError, TrainingStopped
    from lora_engine.packed import Pack
    from lora_engine.spec import TrainingSpec

    members = {lead.job_id: lead}
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
        return [_fail(lead, exc)]
    # Members' specs name the base where it is read here (resolve_inputs), the pack likewise; the
    # joiner claims partners by the registry's name for it.
    pack = Pack(model, tokenizer, data_dir=settings.data_dir, base_model=local, max_jobs=1)
    join = _Joiner(settings, worker_id, base, family, pack, cache, _pooling(local, lead.ctx.spec))

    def add(m: Attempt) -> None:
        members[m.job_id] = m
        try:
            spec = TrainingSpec.model_validate(m.resolved_spec())
            pack.add(spec, m.ctx.staging_dir, train_hooks(m.ctx), key=m.job_id)
        except LoraConfigError as exc:  # the pack refuses it (e.g. LoRA on embeddings): alone it may train
            join.skip.add(m.job_id)
            results.append(_release(m, exc))
        except Exception as exc:  # this job cannot start (bad data, a refused spec): it alone
            results.append(_fail(m, exc))

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
                    results.append(_fail(members[jid], exc))
                break
            for outcome in outcomes:
                member = members[outcome.key]
                results.append(_leave(member, outcome, plan, TrainingStopped))
            if measure:
                _probes[(base, pack.device.name)] = pack.probe
                plan = _limits(settings, pack, base)
                if plan is not None:
                    apply(plan)
            for m in join(now=bool(outcomes) or measure):
                add(m)
    finally:
        for m in members.values():  # a job set up but never stepped (the pass failed first) is settled above
            m.close()
        pack.close()
        if cache is not None:
            cache.checkin()
    if lead.job_id in join.skip:  # handed back: the single path claims it (fair share) and trains it
        results.append(run_job(lead.job_id, worker_id=worker_id, settings=settings, cache=cache))
    return results


def _leave(m: Attempt, outcome, plan, stopped_cls) -> RunResult:
    """Settle a job the moment it leaves the pack, as a job alone is settled."""
    from orchestrator.errors import LeaseLost
    from orchestrator.services.leases import record_packed

    try:
        m.stop()
        if outcome.packed_with:
            try:
                with session_scope(m.settings) as session:
                    record_packed(session, m.job_id, m.worker_id, sorted(outcome.packed_with),
                                  limits=plan.to_dict() if plan is not None else None)
            except LeaseLost as lost:
                return RunResult("lost", m.job_id, str(lost))
        if outcome.status == "succeeded":
            stats = outcome.result.stats
            adapter = StagedAdapter(outcome.result.adapter_dir, int(stats.trainable_params),
                                    int(stats.total_params))
            return m.succeed(JobResult(metrics=outcome.result.metrics, usage=UsageRecord.of_run(stats),
                                       adapter=adapter))
        usage = UsageRecord(device=device_name(), device_seconds=outcome.device_s,
                            wall_seconds=time.monotonic() - m.started, examples=outcome.examples,
                            tokens=outcome.tokens)
        exc = outcome.error if outcome.status == "failed" else stopped_cls(outcome.step)
        return m.settle(exc, usage)
    finally:
        m.close()


def _release(m: Attempt, exc: Exception) -> RunResult:
    """A job the pack cannot take goes back to the queue, no attempt used, to train alone."""
    log.info("job %s cannot join the pack (%s): back to the queue to train alone", m.job_id, exc)
    try:
        return m.release(f"not packed: {exc}")
    finally:
        m.close()


def _fail(m: Attempt, exc: Exception) -> RunResult:
    try:
        return m.settle(exc)
    finally:
        m.close()
