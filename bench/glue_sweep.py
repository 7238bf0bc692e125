"""All 8 GLUE tasks × {LoRA r=8, full fine-tuning} on MiniLM-L6 with the `auto` budget: score,
trivial baseline, wall time and the budget the rule chose. `--methods` takes any method of the
table (every adapter method at r=8 unless `--set rank=N`).

Each run goes through `lora_engine.recipe.train` with the defaults only (auto epochs, batch size
and lr, evaluation on a held-out slice of the training rows, early stopping, the best checkpoint
kept) plus `--set` overrides, one after the other in this process. Writes `sweep.json` and
`sweep.md` into `--out-dir`, refreshed after every run so a long sweep can be watched (and
several sweeps over disjoint tasks can run side by side into different folders).

A score within `baseline.MARGIN` of the task's trivial baseline (the best constant prediction)
is marked "= trivial" in the table: it is no result.

    nice -n 15 .venv/bin/python bench/glue_sweep.py                      # everything (long)
    .venv/bin/python bench/glue_sweep.py --tasks sst2,rte --methods lora --max-steps 5   # smoke
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from benchlib import DEFAULT_DATA, ROOT, parse_overrides

from lora_engine.methods import ADAPTER_METHODS, NAMES

GLUE = ("cola", "sst2", "mrpc", "stsb", "rte", "qnli", "mnli", "qqp")
METHODS = ("lora", "full")




def one_run(task: str, method: str, args, work: Path) -> dict:
    from lora_engine.baseline import task_trivial_scores
    from lora_engine.recipe import TrainHooks, train

    spec = {"task": task, "method": method, "base_model": args.model, **parse_overrides(args.set)}
    if method in ADAPTER_METHODS:
        spec.setdefault("rank", 8)
    if args.max_steps:
        spec["max_steps"] = args.max_steps
    if args.eval_size:
        spec["eval_size"] = args.eval_size
    t0, c0 = time.perf_counter(), time.process_time()
    curve = args.out_dir_path / f"curve-{task}-{method}.jsonl"

    def log_point(p) -> None:  # the learning curve as it comes: evidence even if the run is cut short
        with curve.open("a") as f:
            f.write(json.dumps({"step": p.step, "epoch": p.epoch, "score": p.score, "metrics": p.metrics,
                                "elapsed_s": round(time.perf_counter() - t0, 1),
                                "cpu_s": round(time.process_time() - c0, 1)}) + "\n")

    res = train(spec, work / f"{task}-{method}", data_dir=args.data_dir,
                hooks=TrainHooks(on_evaluate=log_point))
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    meta = json.loads((res.adapter_dir / "lorafleet.json").read_text())
    s, rs = res.stats, meta["spec"]
    return {"task": task, "method": method, "metrics": res.metrics["validation"],
            "trivial": task_trivial_scores(task, data_dir=args.data_dir),
            "selection": res.metrics.get("selection", {}),
            "history": [{"step": p.step, "epoch": p.epoch, "score": p.score} for p in res.eval_history],
            "steps": len(res.losses), "final_loss": res.losses[-1], "wall_s": round(wall, 1),
            "cpu_s": round(cpu, 1),
            "device_s": round(s.device_s, 1), "trainable_params": s.trainable_params,
            "total_params": s.total_params, "adapter_bytes": s.adapter_bytes,
            "peak_mem_mb": round(s.peak_mem_bytes / 2**20),
            **{k: rs.get(k) for k in ("epochs", "max_steps", "batch_size", "lr", "head_lr", "targets",
                                      "pooling", "eval_every", "eval_holdout", "patience")}}


def _score(name: str, value: float, trivial: dict) -> str:
    from lora_engine.baseline import at_baseline

    text = f"{name} {100 * value:.2f}"
    return f"{text} (= trivial)" if name in trivial and at_baseline(value, trivial[name]) else text


def markdown(rows: list[dict]) -> str:
    lines = ["| task | method | pooling | validation score | trivial baseline | epochs chosen (trained) | "
             "batch | lr | steps | best step | wall s | CPU s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['task']} | {r['method']} | | ERROR: {r['error']} | | | | | | | | |")
            continue
        m = ", ".join(_score(k, v, r["trivial"]) for k, v in r["metrics"].items())
        triv = ", ".join(f"{k} {100 * v:.2f}" for k, v in r["trivial"].items())
        sel = r["selection"]
        trained = r["history"][-1]["epoch"] if r["history"] else r["epochs"]
        best = int(sel["best_step"]) if sel else "–"
        early = ", stopped early" if sel.get("stopped_early") else ""
        pooling = r.get("pooling") or "–"  # rows of sweeps before pooling was recorded: unknown
        lines.append(f"| {r['task']} | {r['method']} | {pooling} | {m} | {triv} | "
                     f"{r['epochs']} ({trained}{early}) | {r['batch_size']} | {r['lr']:g} | {r['steps']} | "
                     f"{best} | {r['wall_s']} | {r.get('cpu_s', '–')} |")
    by = {(r["task"], r["method"]): r for r in rows if "error" not in r}
    gaps = []
    for t in GLUE:
        if (t, "lora") in by and (t, "full") in by:
            a = next(iter(by[(t, "lora")]["metrics"].values()))
            b = next(iter(by[(t, "full")]["metrics"].values()))
            gaps.append(f"| {t} | {100 * a:.2f} | {100 * b:.2f} | {100 * (a - b):+.2f} |")
    if gaps:
        lines += ["", "| task | LoRA primary | full primary | LoRA − full (points) |", "|---|---|---|---|"]
        lines += gaps
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", default=",".join(GLUE))
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--model", default="minilm-l6")
    p.add_argument("--max-steps", type=int, default=0, help="cap each run (smoke test); 0: the auto budget")
    p.add_argument("--eval-size", type=int, default=0, help="validation rows to score; 0: all")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override every spec")
    p.add_argument("--data-dir", default=DEFAULT_DATA)
    p.add_argument("--out-dir", default=str(ROOT / "bench" / "results"))
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    tasks = [t for t in args.tasks.split(",") if t]
    methods = [m for m in args.methods.split(",") if m]
    allowed = tuple(m for m in NAMES if m != "none")
    bad = [t for t in tasks if t not in GLUE] + [m for m in methods if m not in allowed]
    if bad:
        raise SystemExit(f"unknown task/method: {bad}; tasks: {', '.join(GLUE)}; "
                         f"methods: {', '.join(allowed)}")

    import torch

    torch.set_num_threads(args.threads)
    out = args.out_dir_path = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as work:
        for task in tasks:
            for method in methods:
                try:
                    row = one_run(task, method, args, Path(work))
                except Exception as exc:  # one failing task must not lose the others' numbers
                    row = {"task": task, "method": method, "error": f"{type(exc).__name__}: {exc}"}
                rows.append(row)
                print(json.dumps(row), flush=True)
                (out / "sweep.json").write_text(json.dumps(rows, indent=2) + "\n")
                (out / "sweep.md").write_text(markdown(rows))
    print(markdown(rows))


if __name__ == "__main__":
    main()
