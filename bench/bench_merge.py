"""Merged adapters scored against their parents: two SST-2 adapters (MiniLM-L6, two seeds) and two
E2E adapters (SmolLM2-135M, two seeds), each pair merged with linear, ties and dare_linear
(`lora_engine.adapter_merging`, PEFT's add_weighted_adapter arithmetic; equal weights 0.5/0.5,
density 0.5, DARE seed 0), every adapter scored on its task's validation rows with one resident
base per task (`lora_engine.reevaluation.reevaluate`, the same rows for all).

Budgets are small on purpose (a shared 2-core box): the parents are short runs, so the numbers
say how a merge compares with its parents at this budget, not what the task can reach.

usage: python bench/bench_merge.py [--tasks sst2,e2e] [--sst2-steps 100] [--e2e-steps 24]
       [--sst2-eval 400] [--e2e-eval 16] [--seeds 1,2] [--out DIR]
Prints one JSON object and a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import benchlib

DATA = benchlib.DEFAULT_DATA

from lora_engine.adapter_merging.folders import merge_adapter_folders  # noqa: E402
from lora_engine.cache import BaseModelCache  # noqa: E402
from lora_engine.catalog import TASKS  # noqa: E402
from lora_engine.recipe import train  # noqa: E402
from lora_engine.reevaluation import AdapterToScore, reevaluate  # noqa: E402
from lora_engine.untuned import evaluate_untuned  # noqa: E402

BASES = {"sst2": "minilm-l6", "e2e": "smollm2-135m"}
HOWS = ("linear", "ties", "dare_linear")
HEADLINE = {"sst2": "accuracy", "e2e": "bleu"}


def parents(task: str, steps: int, seeds: list[int], root: Path) -> dict[str, Path]:
    out = {}
    for seed in seeds:
        folder = root / f"{task}-seed{seed}"
        out[f"seed {seed}"] = folder
        if (folder / "adapter_config.json").is_file():  # trained by an earlier run with this --out
            continue
        # The run's own evaluation is one row: every adapter is scored below, on the same rows.
        spec = {"task": task, "base_model": BASES[task], "max_steps": steps, "seed": seed,
                "eval_size": 1, "rank": 8}
        t0 = time.perf_counter()
        train(spec, folder, data_dir=DATA)
        print(f"trained {folder.name} in {time.perf_counter() - t0:.0f}s", file=sys.stderr)
    return out


def merges(task: str, parent_folders: dict[str, Path], root: Path) -> dict[str, Path]:
    out = {}
    for how in HOWS:
        folder = root / f"{task}-{how}"
        out[f"merge {how}"] = folder
        if folder.is_dir():
            continue
        merge_adapter_folders(list(parent_folders.values()), folder, how=how,
                              weights=[1 / len(parent_folders)] * len(parent_folders),
                              density=None if how == "linear" else 0.5, seed=0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", default="sst2,e2e")
    ap.add_argument("--sst2-steps", type=int, default=100)
    ap.add_argument("--e2e-steps", type=int, default=24)
    ap.add_argument("--sst2-eval", type=int, default=400)
    ap.add_argument("--e2e-eval", type=int, default=16)
    ap.add_argument("--seeds", default="1,2")
    ap.add_argument("--out", type=Path, default=None,
                    help="keep the adapters here (default: a temp folder); adapters already there are reused")
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    root = args.out or Path(tempfile.mkdtemp(prefix="bench-merge-"))
    report: dict[str, dict[str, dict[str, float]]] = {}
    for task in args.tasks.split(","):
        steps = args.sst2_steps if task == "sst2" else args.e2e_steps
        eval_size = args.sst2_eval if task == "sst2" else args.e2e_eval
        folders = parents(task, steps, seeds, root)
        folders.update(merges(task, folders, root))
        t0 = time.perf_counter()
        scored = reevaluate([AdapterToScore(id=name, folder=f, task=task, base_model=BASES[task])
                             for name, f in folders.items()], data_dir=DATA, cache=BaseModelCache(),
                            eval_size=eval_size, meteor=False)
        print(f"scored {len(folders)} {task} adapters in {time.perf_counter() - t0:.0f}s", file=sys.stderr)
        if scored.skipped:
            print(f"skipped: {scored.skipped}", file=sys.stderr)
        report[task] = {name: scored.scores[name]["validation"] for name in folders if name in scored.scores}
        if TASKS[task].kind == "generation":  # the untuned base as a reference (a classifier's is chance)
            report[task]["untuned base"] = evaluate_untuned(
                {"task": task, "base_model": BASES[task], "method": "none", "eval_size": eval_size},
                data_dir=DATA, meteor=False).metrics["validation"]
        report[task]["_budget"] = {"steps": steps, "eval_size": eval_size}
    print(json.dumps(report, indent=2))
    for task, rows in report.items():
        names = list(next(v for k, v in rows.items() if k != "_budget"))
        print(f"\n{task} ({BASES[task]}, {rows['_budget']['steps']} steps, "
              f"{rows['_budget']['eval_size']} validation {'rows' if task == 'sst2' else 'prompts'})\n")
        print("| adapter | " + " | ".join(names) + " |")
        print("|---|" + "---|" * len(names))
        for name, values in rows.items():
            if name != "_budget":
                print(f"| {name} | " + " | ".join(f"{values.get(n, float('nan')):.4f}" for n in names) + " |")


if __name__ == "__main__":
    main()
