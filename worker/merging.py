"""The `merge` executor: the parents' LoRA matrices merged into a new adapter of the same base.

The runner gave each parent's verified folder by id (`worker.inputs`: sha256 checked, the job's
tenant's; no registry read here); `lora_engine.adapter_merging.folders.merge_adapter_folders`
reads them, checks them again against each other, and writes the new adapter into the staging
folder, which the attempt publishes and hashes like a trained one. No base model is loaded: the
merge is arithmetic on the adapters' tensors, on the CPU, so the usage is that CPU time, and
nothing is trained (no examples, tokens or training metrics).
"""

from __future__ import annotations

import time

from lora_engine.errors import LoraFleetInputError
from orchestrator.services.leases import UsageRecord
from worker.executor import JobContext, JobResult, StagedAdapter


def run_merge(ctx: JobContext) -> JobResult:
    from lora_engine.adapter_merging.folders import merge_adapter_folders

    parents = ctx.spec.get("parents")
    if not isinstance(parents, list) or not all(isinstance(p, dict) and p.get("path") for p in parents):
        raise LoraFleetInputError("a merge job's spec must list its parents (id, weight) with their folders")
    started = time.monotonic()
    ctx.hooks.on_progress(0, 1, None)
    merged = merge_adapter_folders([p["path"] for p in parents], ctx.staging_dir, how=ctx.spec["how"],
                                   weights=[float(p["weight"]) for p in parents],
                                   density=ctx.spec.get("density"), seed=ctx.spec.get("seed") or 0,
                                   parent_ids=[p["id"] for p in parents])
    ctx.hooks.on_progress(1, 1, None)
    wall = time.monotonic() - started
    usage = UsageRecord(device="cpu", device_seconds=wall, wall_seconds=wall)
    total = int(ctx.spec.get("base_params") or 0) + merged.trainable_params
    return JobResult(metrics={}, usage=usage,
                     adapter=StagedAdapter(merged.folder, merged.trainable_params, total))
