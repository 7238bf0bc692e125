"""Re-evaluating K adapters of one base: one resident base vs K × (load + evaluate), side by side.

Makes K LoRA adapters of one base model (random LoRA and head tensors: the time of scoring does
not depend on what the adapter learnt), round-robin over GLUE tasks so label counts differ
(2, 3, and 1 for STS-B) and the heads are resized in place, then per repeat, alternately:

- resident: `lora_engine.reevaluation.reevaluate(adapters, cache=BaseModelCache())` — the base
  loaded once, LoRA injected once, every further adapter swapped in place (wall time, all in);
- naive: per adapter `load_base_model` + `load_adapter` + read the validation split + score it,
  timing the base load and the evaluation (read + score) apart.

Reported, in wall and in process-CPU seconds: resident / (one base load + K evaluations), both
from the naive loop of the same repeat (median base load, sum of the K scorings; reading the
validation files is left out of the ideal, the resident side pays it once per task) — the goal
is <= 1.1; and naive / resident. The scores of both sides are compared (the same adapters, the
same data: they must agree to 1e-5).

usage: python bench/bench_reevaluate.py [--base minilm-l6] [--k 20] [--eval-size 200]
       [--tasks sst2,mrpc,rte,stsb,mnli] [--repeats 3] [--device cpu|cuda|auto]
Prints one JSON object (per-repeat figures and the medians).
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

import benchlib

benchlib.ROOT  # noqa: B018 - benchlib sets sys.path and the offline/threading environment
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # no load report per naive load

import torch  # noqa: E402

from lora_engine.adapters.folder import AdapterMeta  # noqa: E402
from lora_engine.adapters.io import load_adapter, save_adapter  # noqa: E402
from lora_engine.cache import BaseModelCache, strip_lora  # noqa: E402
from lora_engine.catalog import TASKS  # noqa: E402
from lora_engine.device import pick_device, synchronize  # noqa: E402
from lora_engine.evaluate import EvalTarget, score_validation, validation_examples  # noqa: E402
from lora_engine.inject import LoraSettings, head_module_names, inject_lora, lora_modules  # noqa: E402
from lora_engine.models import load_base_model  # noqa: E402
from lora_engine.reevaluation import AdapterToScore, reevaluate  # noqa: E402

MAX_LENGTH = 128


def _kind_labels(task: str) -> tuple[str, int | None]:
    info = TASKS[task]
    return info.kind, (info.num_labels if info.kind == "classification" else None)


def make_adapters(base: str, tasks: list[str], k: int, rank: int, eval_size: int, root: Path
                  ) -> list[AdapterToScore]:
    """K adapters with random LoRA and head tensors, saved as the recipe saves them."""
    out = []
    gen = torch.Generator().manual_seed(0)
    for i in range(k):
        task = tasks[i % len(tasks)]
        kind, labels = _kind_labels(task)
        model, _ = load_base_model(base, kind, labels)
        settings = LoraSettings(rank=rank)
        inject_lora(model, settings)
        heads = head_module_names(model)
        with torch.no_grad():
            for _, layer in lora_modules(model):
                layer.lora_B.weight.copy_(torch.randn(layer.lora_B.weight.shape, generator=gen) * 0.02)
            for name, p in model.named_parameters():
                if any(name.startswith(h + ".") for h in heads) and p.ndim == 2 and "classifier" in name:
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
        meta = AdapterMeta.for_task(TASKS[task], base_model=base, method=settings.method,
                                    num_labels=labels or 1, max_length=MAX_LENGTH,
                                    spec={"task": task, "eval_size": eval_size, "max_length": MAX_LENGTH})
        folder = save_adapter(model, root / f"adapter-{i:02d}", base_model_name=base, settings=settings,
                              task_type=kind, modules_to_save=heads, meta=meta)
        strip_lora(model)
        out.append(AdapterToScore(id=f"adapter-{i:02d}", folder=folder, task=task, base_model=base))
    return out


class Clock:
    """Wall and process-CPU seconds together: on a shared, oversubscribed CPU the wall time swings
    with other processes' load, the CPU time this process spent (all its threads) much less."""

    def __init__(self, device):
        self.device = device

    def now(self) -> tuple[float, float]:
        synchronize(self.device)
        return time.perf_counter(), time.process_time()

    @staticmethod
    def since(t0: tuple[float, float], t1: tuple[float, float]) -> tuple[float, float]:
        return t1[0] - t0[0], t1[1] - t0[1]


def naive(adapters: list[AdapterToScore], base: str, eval_size: int, clock: Clock) -> dict:
    """K × (load the base + the adapter, read the validation split, score): what K separate
    evaluation jobs on cold workers would do. Base load, adapter load, data read and scoring are
    timed apart."""
    parts: dict[str, list[tuple[float, float]]] = {
        "base_load": [], "adapter_load": [], "read": [], "score": []}
    scores = {}
    device = clock.device
    for a in adapters:
        kind, labels = _kind_labels(a.task)
        t0 = clock.now()
        model, tokenizer = load_base_model(base, kind, labels)
        model.to(device.device)
        t1 = clock.now()
        load_adapter(model, a.folder)
        model.to(device.device).eval()
        t2 = clock.now()
        target = EvalTarget(task=a.task, max_length=MAX_LENGTH, eval_size=eval_size)
        examples = validation_examples(target, data_dir=benchlib.DEFAULT_DATA)
        t3 = clock.now()
        scores[a.id] = score_validation(model, tokenizer, target, examples, device=device)
        t4 = clock.now()
        for name, (u, v) in zip(parts, ((t0, t1), (t1, t2), (t2, t3), (t3, t4)), strict=True):
            parts[name].append(Clock.since(u, v))
        del model
    return {"parts": parts, "scores": scores}


def resident(adapters: list[AdapterToScore], clock: Clock) -> dict:
    t0 = clock.now()
    res = reevaluate(adapters, data_dir=benchlib.DEFAULT_DATA, cache=BaseModelCache(), device=clock.device)
    total = Clock.since(t0, clock.now())
    if res.skipped:
        raise SystemExit(f"adapters skipped: {res.skipped}")
    return {"total": total, "base_loads": res.base_loads, "injections": res.injections, "swaps": res.swaps,
            "scores": res.scores}


def _figures(nv: dict, rs: dict, which: int) -> dict:
    """which: 0 wall, 1 CPU. ideal = one base load (median of the naive loads) + K scorings."""
    parts = {name: [x[which] for x in xs] for name, xs in nv["parts"].items()}
    naive_total = sum(sum(xs) for xs in parts.values())
    one_load = statistics.median(parts["base_load"])
    k_scores = sum(parts["score"])
    resident_total = rs["total"][which]
    return {
        "resident_s": round(resident_total, 3),
        "naive_s": round(naive_total, 3),
        "one_base_load_s": round(one_load, 3),
        "k_evaluations_s": round(k_scores, 3),
        "k_reads_s": round(sum(parts["read"]), 3),
        "resident_over_ideal": round(resident_total / (one_load + k_scores), 3),
        "naive_over_resident": round(naive_total / resident_total, 3),
    }


def _max_score_diff(a: dict, b: dict) -> float:
    return max(abs(a[i]["validation"][n] - b[i]["validation"][n]) for i in a for n in a[i]["validation"])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--base", default="minilm-l6")
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--eval-size", type=int, default=200)
    parser.add_argument("--tasks", default="sst2,mrpc,rte,stsb,mnli")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"))
    args = parser.parse_args(argv)
    device = pick_device(None if args.device == "auto" else args.device)
    tasks = args.tasks.split(",")
    clock = Clock(device)
    with tempfile.TemporaryDirectory(prefix="bench-reeval-") as tmp:
        adapters = make_adapters(args.base, tasks, args.k, args.rank, args.eval_size, Path(tmp))
        # Warm-up, measured by neither side: the page cache, and the first forward's one-time costs.
        naive(adapters[:1], args.base, args.eval_size, clock)
        runs = []
        for r in range(args.repeats):
            # Alternate which side goes first, so a drift in machine load hits both alike.
            order = ("resident", "naive") if r % 2 == 0 else ("naive", "resident")
            out = {}
            for side in order:
                out[side] = resident(adapters, clock) if side == "resident" else naive(
                    adapters, args.base, args.eval_size, clock)
            nv, rs = out["naive"], out["resident"]
            runs.append({
                "first": order[0],
                "wall": _figures(nv, rs, 0),
                "cpu": _figures(nv, rs, 1),
                "base_loads": rs["base_loads"], "injections": rs["injections"], "swaps": rs["swaps"],
                "max_score_diff": _max_score_diff(rs["scores"], nv["scores"]),
            })
    result = {
        "base": args.base, "k": args.k, "rank": args.rank, "tasks": tasks, "eval_size": args.eval_size,
        "device": device.name, "torch_threads": torch.get_num_threads(), "runs": runs,
        "median": {clock_name: {key: statistics.median(r[clock_name][key] for r in runs)
                                for key in ("resident_over_ideal", "naive_over_resident")}
                   for clock_name in ("wall", "cpu")},
    }
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
