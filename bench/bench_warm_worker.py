"""Warm worker: submit → first training step of a second job on the same base model, with and
without the BaseModelCache, side by side in one process.

A LoRA job leaves the base weights untouched, so a worker can keep the base resident and give
the next job on that base only fresh LoRA parameters and a fresh head (lora_engine.cache). This
measures what that saves on the latency a tenant sees, through the real worker code path: each
job is submitted to an embedded registry and executed by `worker.runner.run_job` (claim,
heartbeats, training, adapter publication); the latency is the registry's own record, from the
job's `submitted` event to its first `progress` event (written by the first heartbeat, after the
first optimiser step).

Per round, for each variant (cold: no cache; warm: one cache for the whole process), a first job
primes the variant and a second job on the same base is measured. Rounds alternate the order
cold/warm so background load hits both alike; medians are reported.

usage: python bench/bench_warm_worker.py [--base-model minilm-l6] [--task sst2] [--rounds 3]
Prints one JSON object. Needs HF_HUB_OFFLINE=1 and LORAFLEET_DATA_DIR (the shared data folder).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-model", default="minilm-l6")
    parser.add_argument("--task", default="sst2")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-steps", type=int, default=2)
    args = parser.parse_args()

    from lora_engine.cache import BaseModelCache
    from orchestrator.config import load_settings
    from orchestrator.registry.db import session_scope
    from orchestrator.services.jobs import job_events, submit_job
    from orchestrator.services.tenants import create_tenant
    from worker.runner import run_job

    home = Path(tempfile.mkdtemp(prefix="bench-warm-"))
    settings = load_settings(
        {
            "LORAFLEET_HOME": str(home),
            "LORAFLEET_DATA_DIR": os.environ.get("LORAFLEET_DATA_DIR", str(ROOT.parent / "shared" / "data")),
            "LORAFLEET_CHECKPOINT_EVERY": "0",
        }
    )
    with session_scope(settings) as s:
        create_tenant(s, "bench", max_running=1)
    spec = {
        "task": args.task,
        "base_model": args.base_model,
        "method": "lora",
        "rank": 8,
        "max_steps": args.max_steps,
        "batch_size": 8,
        "eval_size": 8,
    }
    warm_cache = BaseModelCache()
    seed = iter(range(10_000))

    def submit_and_run(cache) -> float:
        """Seconds from `submitted` to the first `progress` event of a freshly submitted job."""
        with session_scope(settings) as s:
            job_id = submit_job(s, "bench", {**spec, "seed": next(seed)}).id
        outcome = run_job(job_id, worker_id="bench", settings=settings, cache=cache)
        assert outcome.outcome == "succeeded", outcome
        with session_scope(settings) as s:
            events = job_events(s, job_id)
        submitted = next(e.ts for e in events if e.kind == "submitted")
        first_step = next(e.ts for e in events if e.kind == "progress")
        return (first_step - submitted).total_seconds()

    results: dict[str, list[float]] = {"cold": [], "warm": []}
    for r in range(args.rounds):
        order = ("cold", "warm") if r % 2 == 0 else ("warm", "cold")
        for variant in order:
            cache = warm_cache if variant == "warm" else None
            submit_and_run(cache)  # the first job on this base (loads it; primes the cache)
            results[variant].append(submit_and_run(cache))
    cold, warm = statistics.median(results["cold"]), statistics.median(results["warm"])
    # The part the cache removes, alone: a cold load of the base vs a warm checkout + checkin
    # (which strips the previous job's LoRA layers and restores the head), alternated.
    from lora_engine.catalog import TASKS
    from lora_engine.models import load_base_model

    info = TASKS[args.task]
    labels = info.num_labels if info.kind == "classification" else None
    loads: dict[str, list[float]] = {"cold": [], "warm": []}
    for _ in range(5):
        t0 = time.perf_counter()
        load_base_model(args.base_model, info.kind, labels)
        loads["cold"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        warm_cache.checkout(args.base_model, info.kind, labels)
        warm_cache.checkin()
        loads["warm"].append(time.perf_counter() - t0)
    print(
        json.dumps(
            {
                "base_model": args.base_model,
                "task": args.task,
                "rounds": args.rounds,
                "submit_to_first_step_s": {
                    "cold_median": round(cold, 3),
                    "warm_median": round(warm, 3),
                    "cold": [round(x, 3) for x in results["cold"]],
                    "warm": [round(x, 3) for x in results["warm"]],
                },
                "speedup": round(cold / warm, 2) if warm > 0 else None,
                "saved_s": round(cold - warm, 3),
                "base_model_median_s": {
                    "cold_load": round(statistics.median(loads["cold"]), 4),
                    "warm_checkout_checkin": round(statistics.median(loads["warm"]), 4),
                },
                "cache": {"loads": warm_cache.loads, "hits": warm_cache.hits},
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
