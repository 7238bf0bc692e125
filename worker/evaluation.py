"""The `evaluate` and `reevaluate` executors: scoring without training.

- evaluate (the untuned baseline, method 'none'): `lora_engine.untuned.evaluate_untuned` on the
  job's spec; its metrics are recorded with no adapter.
- reevaluate: `lora_engine.reevaluation.reevaluate` over the adapters the spec lists (the runner
  gave each its verified folder by id, `worker.inputs`: no registry read here), one resident base
  for the lot; progress is one step per adapter, a cancel stops between adapters. The scores go
  back as `reevaluated` {adapter id: metrics}. An adapter that could not be scored (its files
  deleted or changed since the job was queued, a custom data set gone) is logged and left out;
  when none could be scored the job fails with the reasons (another attempt would find the same
  files).

Usage is recorded like any job's: device and wall seconds, peak memory; nothing trained, so no
examples or tokens.
"""

from __future__ import annotations

import logging
from pathlib import Path

from lora_engine.errors import LoraFleetInputError
from orchestrator.services.leases import UsageRecord
from worker.executor import JobContext, JobResult

log = logging.getLogger(__name__)


class NothingScored(LoraFleetInputError):
    """No adapter of a reevaluate job could be scored (permanent: the same files next time)."""


def run_untuned_evaluation(ctx: JobContext) -> JobResult:
    """Score the untuned base model of the job's spec on its task's validation split."""
    from lora_engine.untuned import evaluate_untuned

    result = evaluate_untuned(ctx.spec, data_dir=ctx.settings.data_dir, cache=ctx.cache)
    return JobResult(metrics=result.metrics, usage=UsageRecord.of_run(result.stats))


def run_reevaluation(ctx: JobContext) -> JobResult:
    """Score every adapter the spec lists on one resident base; their scores as `reevaluated`."""
    from lora_engine.reevaluation import AdapterToScore, reevaluate

    listed = ctx.spec.get("adapters")
    if not isinstance(listed, list) or not listed:
        raise LoraFleetInputError("a reevaluate job's spec must list its adapters (id, task)")
    base = ctx.spec["base_model"]
    refused = {a["id"]: a["refused"] for a in listed if not a.get("path")}
    adapters = [AdapterToScore(id=a["id"], folder=Path(a["path"]), task=a["task"], base_model=base)
                for a in listed if a.get("path")]
    if not adapters:
        reasons = "; ".join(f"{i}: {r}" for i, r in sorted(refused.items()))
        raise NothingScored(f"none of the {len(listed)} adapters could be re-evaluated ({reasons})")
    result = reevaluate(adapters, data_dir=ctx.settings.data_dir, cache=ctx.cache,
                        eval_size=ctx.spec.get("eval_size"),
                        on_progress=lambda done, total: ctx.hooks.on_progress(done, total, None, None),
                        should_stop=ctx.hooks.should_stop)
    skipped = {**refused, **result.skipped}
    for adapter_id, reason in sorted(skipped.items()):
        log.warning("job %s: adapter %s not re-evaluated: %s", ctx.job_id, adapter_id, reason)
    if not result.scores:
        reasons = "; ".join(f"{i}: {r}" for i, r in sorted(skipped.items()))
        raise NothingScored(f"none of the {len(listed)} adapters could be re-evaluated ({reasons})")
    log.info("job %s: re-evaluated %d adapters on %s (%d base load(s), %d injection(s), %d swap(s))",
             ctx.job_id, len(result.scores), base, result.base_loads, result.injections, result.swaps)
    return JobResult(metrics={}, usage=UsageRecord.of_run(result.stats), reevaluated=result.scores)
