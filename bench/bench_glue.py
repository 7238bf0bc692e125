"""Whole-run speed and quality of our LoRA recipe against the textbook PEFT script, side by side.

Runs, on the same machine and one after the other (never concurrently):

1. the anchor, `../shared/reference/peft_textbook_glue.py` (PEFT LoRA r=8 on query+value, lr 5e-4,
   batch 32, every row padded to 64), as a subprocess;
2. our recipe (`lora_engine.recipe.train`, the task's catalog defaults) as a subprocess of this
   script (`--ours`), so both pay their own imports and model loading.

Reports the whole-process wall time of each and their ratio (goal: ours ≤ 0.5 × textbook), the
training-loop time of each, and both validation scores. One JSON object on stdout (and `--out`).

    .venv/bin/python bench/bench_glue.py                      # one epoch of SST-2 (minutes)
    .venv/bin/python bench/bench_glue.py --max-steps 20       # smoke run
    .venv/bin/python bench/bench_glue.py --set method=full --skip-reference
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from benchlib import DEFAULT_DATA, ROOT, parse_overrides

REFERENCE = ROOT.parent / "shared" / "reference" / "peft_textbook_glue.py"


def run_json(cmd: list[str], env: dict) -> tuple[dict, float]:
    """Run `cmd`, return (its last stdout line as JSON, whole-process wall seconds)."""
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"command failed ({proc.returncode}): {' '.join(cmd)}")
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    return json.loads(lines[-1]), wall


def ours(args) -> None:
    """Child mode: one training run with our recipe; prints one JSON line."""
    import torch

    torch.set_num_threads(args.threads)
    from lora_engine.recipe import train

    spec = {"task": args.task, "base_model": args.model, "batch_size": 32, **parse_overrides(args.set)}
    if args.max_steps:
        spec["max_steps"] = args.max_steps
    out = Path(args.work) / "ours"
    t_steps = []
    last = [time.perf_counter()]

    def on_progress(p):
        now = time.perf_counter()
        t_steps.append(now - last[0])
        last[0] = now

    from lora_engine.recipe import TrainHooks

    res = train(spec, out, data_dir=args.data_dir, hooks=TrainHooks(on_progress=on_progress))
    train_s = sum(t_steps)
    steady = sorted(t_steps[min(10, len(t_steps) - 1):])
    print(json.dumps({
        "spec": json.loads((out / "lorafleet.json").read_text())["spec"],
        "steps": len(res.losses), "train_s": round(train_s, 2),
        "step_s_median": round(steady[len(steady) // 2], 4) if steady else None,
        "final_loss": res.losses[-1], "metrics": res.metrics["validation"],
        "stats": {k: getattr(res.stats, k) for k in res.stats.__dataclass_fields__},
    }))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="sst2")
    p.add_argument("--model", default="minilm-l6", help="base model alias (the reference gets its folder)")
    p.add_argument("--data-dir", default=DEFAULT_DATA)
    p.add_argument("--max-steps", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override our spec")
    p.add_argument("--skip-reference", action="store_true")
    p.add_argument("--out", help="also write the JSON report here")
    p.add_argument("--work", default=None, help=argparse.SUPPRESS)
    p.add_argument("--ours", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.ours:
        ours(args)
        return

    import tempfile

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "LORAFLEET_DATA_DIR": args.data_dir,
           "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(ROOT),
           # Both runs alike: libgomp's busy-waiting makes a shared CPU up to 10x slower.
           "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    report: dict = {"task": args.task, "model": args.model, "max_steps": args.max_steps or None}
    if not args.skip_reference:
        from lora_engine.models import resolve_model

        folder = resolve_model(args.model).path
        cmd = [sys.executable, str(REFERENCE), "--model", folder, "--data-dir", args.data_dir,
               "--task", args.task, "--threads", str(args.threads)]
        if args.max_steps:
            cmd += ["--max-steps", str(args.max_steps)]
        ref, ref_wall = run_json(cmd, env)
        report["textbook"] = {**ref, "wall_s": round(ref_wall, 2)}
    with tempfile.TemporaryDirectory() as work:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--ours", "--work", work, "--task", args.task,
               "--model", args.model, "--data-dir", args.data_dir, "--threads", str(args.threads)]
        cmd += ["--max-steps", str(args.max_steps)] if args.max_steps else []
        for item in args.set:
            cmd += ["--set", item]
        mine, my_wall = run_json(cmd, env)
    report["ours"] = {**mine, "wall_s": round(my_wall, 2)}
    if "textbook" in report:
        ref = report["textbook"]
        report["wall_ratio"] = round(my_wall / ref["wall_s"], 3)
        report["train_ratio"] = round(mine["train_s"] / ref["train_s"], 3)
        report["goal_wall_ratio_le"] = 0.5
        primary = next(iter(mine["metrics"].values()))
        report["score_delta_vs_textbook"] = round(primary - ref["validation_score"], 4)
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
