"""Gradient checkpointing: activation memory per training token and step time, with and without.

Two policies against the same baseline (no checkpointing): "plan", ours (`forward/recompute.py`:
attention cores, then the fewest whole layers from the bottom), and "whole", every layer
recomputed whole (what Hugging Face's switch does, and ours before), for comparison.

The issue's setups: MiniLM-L6 classification at batch 32 × 128 tokens and SmolLM2-135M generation
at batch 8 × 256, LoRA r=8 on the default targets, every row full length (consecutive real rows,
SST-2 sentences / E2E MR + reference, joined until they fill it), dropout on as in training.

- Activation memory: peak minus the memory right after the model is loaded (LoRA injected, the
  optimizer built), per training token of one step. Measured in a fresh subprocess per variant
  (`lora_engine.device.PeakMemory`: CUDA max_memory_allocated, or on a CPU the sampled resident
  set and ru_maxrss when it rose), over `--mem-steps` steps.
  On a CPU the subprocess runs with a fixed malloc mmap threshold (MALLOC_MMAP_THRESHOLD_): glibc's
  default raises it as large blocks are freed, after which freed activations stay resident and
  the resident set stops following the live tensors.
- Step time: the three variants in one process on one model, taking their steps in turn
  (checkpointing switched per step), so background load hits them alike; medians of the wall time
  and, on a CPU, of the process's CPU time (with --threads 1, the one that load disturbs least).

Goal (issue 26): ≤ 0.5× the activation memory at ≤ 1.35× the step time.

usage: python bench/bench_grad_ckpt.py [--models minilm,smollm2] [--steps 6] [--device cpu|cuda]
Prints one JSON object. Needs HF_HUB_OFFLINE=1 and LORAFLEET_DATA_DIR (the shared data folder).
"""

from __future__ import annotations

import argparse
import csv
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lora_engine.device import PeakMemory, pick_device
from lora_engine.forward import recompute, training_loss
from lora_engine.inject import LoraSettings, head_module_names, inject_lora, mark_only_lora_as_trainable
from lora_engine.models import load_base_model

VARIANTS = ("off", "whole", "plan")  # no checkpointing; every layer recomputed whole; our plan
SETUPS = {
    "minilm": {"alias": "minilm-l6", "kind": "classification", "batch": 32, "length": 128},
    "smollm2": {"alias": "smollm2-135m", "kind": "generation", "batch": 8, "length": 256},
}


def _data_dir() -> Path:
    return Path(os.environ.get("LORAFLEET_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data"))


def _texts(kind: str):
    if kind == "classification":
        with open(_data_dir() / "glue/sst2/train.jsonl", encoding="utf-8") as f:
            for line in f:
                yield json.loads(line)["sentence"]
    else:
        with open(_data_dir() / "e2e/train.csv", newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                yield f"{row['mr']}\n{row['ref']}"


def make_batch(setup: dict, tokenizer, device: str) -> dict:
    """`batch` rows of exactly `length` real tokens (no padding: the activations are the batch's)."""
    n, length = setup["batch"], setup["length"]
    texts, rows = _texts(setup["kind"]), []
    while len(rows) < n:
        ids: list[int] = []
        while len(ids) < length:
            ids += tokenizer(next(texts))["input_ids"]
        rows.append(ids[:length])
    ids = torch.tensor(rows)
    enc = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    enc["labels"] = torch.arange(n) % 2 if setup["kind"] == "classification" else ids.clone()
    return {k: v.to(device) for k, v in enc.items()}


def build(setup: dict, device: str):
    torch.manual_seed(42)
    labels = 2 if setup["kind"] == "classification" else None
    model, tok = load_base_model(setup["alias"], setup["kind"], labels)
    inject_lora(model, LoraSettings(method="lora", rank=8, alpha=16, dropout=0.05, targets=None))
    mark_only_lora_as_trainable(model, modules_to_save=head_module_names(model))
    model.to(device).train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    return model, tok, opt


PLANNED: dict[str, int] = {}  # what the plan chose at the last step: layers recomputed whole, cores only


@contextmanager
def variant(model, name: str):
    """Run steps as `name` says: "off", "plan" (recompute.plan's choice) or "whole" (its choice
    replaced by every layer recomputed whole)."""
    recompute.set_enabled(model, name != "off")
    chosen = recompute.plan
    if name == "whole":
        recompute.plan = lambda m, layers, outside: [recompute.LAYER] * len(layers)
    elif name == "plan":
        def recorded(*args, **kwargs):
            modes = chosen(*args, **kwargs)
            PLANNED.update(whole_layers=modes.count(recompute.LAYER), cores=modes.count(recompute.ATTENTION))
            return modes

        recompute.plan = recorded
    try:
        yield
    finally:
        recompute.plan = chosen


def one_step(model, opt, batch: dict, kind: str, device: str) -> float:
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device == "cuda" else nullcontext()
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    with autocast:
        loss = training_loss(model, batch, kind)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def measure_memory(name: str, policy: str, steps: int, device: str) -> dict:
    """In this (fresh) process: peak minus loaded memory over `steps` steps."""
    setup = SETUPS[name]
    info = pick_device(device)
    mem = PeakMemory(info, interval=0.005)
    model, tok, opt = build(setup, device)
    batch = make_batch(setup, tok, device)
    gc.collect()
    mem.start()
    mem.mark_loaded()
    with variant(model, policy):
        for _ in range(steps):
            one_step(model, opt, batch, setup["kind"], device)
    mem.peak_bytes()
    tokens = setup["batch"] * setup["length"]
    return {"loaded_bytes": mem.loaded, "peak_bytes": mem.peak, "activation_bytes": mem.activation_bytes(),
            "activation_bytes_per_token": mem.activation_bytes() / tokens}


def memory_in_subprocess(name: str, policy: str, args) -> dict:
    cmd = [sys.executable, __file__, "--measure", name, "--policy", policy,
           "--mem-steps", str(args.mem_steps), "--device", args.device]
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def step_times(name: str, args) -> dict:
    setup = SETUPS[name]
    model, tok, opt = build(setup, args.device)
    batch = make_batch(setup, tok, args.device)
    wall: dict[str, list[float]] = {v: [] for v in VARIANTS}
    cpu: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for i in range(args.warmup + args.steps):
        for name_ in VARIANTS:
            with variant(model, name_):
                c0 = time.process_time()
                took = one_step(model, opt, batch, setup["kind"], args.device)
            if i >= args.warmup:
                wall[name_].append(took)
                cpu[name_].append(time.process_time() - c0)
    med = statistics.median
    return {"step_s": {v: med(wall[v]) for v in VARIANTS}, "cpu_s": {v: med(cpu[v]) for v in VARIANTS}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="minilm,smollm2")
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--mem-steps", type=int, default=2)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--measure", help=argparse.SUPPRESS)
    p.add_argument("--policy", choices=VARIANTS, default="off", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.measure:
        print(json.dumps(measure_memory(args.measure, args.policy, args.mem_steps, args.device)))
        return
    out: dict = {"device": args.device, "load_avg_start": os.getloadavg()[0], "models": {}}
    for name in args.models.split(","):
        memory = {v: memory_in_subprocess(name, v, args) for v in VARIANTS}
        times = step_times(name, args)
        setup = SETUPS[name]
        tokens, plain = setup["batch"] * setup["length"], memory["off"]["activation_bytes"]
        m = out["models"][name] = {"batch": f"{setup['batch']} x {setup['length']}",
                                   "step_s_off": round(times["step_s"]["off"], 3),
                                   "activation_mb_per_1k_tokens_off": round(plain / tokens * 1000 / 1e6, 3)}
        for v in VARIANTS[1:]:
            kept = memory[v]["activation_bytes"]
            m[v] = {"activation_mb_per_1k_tokens": round(kept / tokens * 1000 / 1e6, 3),
                    "memory_ratio": round(kept / max(plain, 1), 3),
                    "step_s": round(times["step_s"][v], 3),
                    "time_ratio": round(times["step_s"][v] / times["step_s"]["off"], 3),
                    "cpu_time_ratio": (round(times["cpu_s"][v] / times["cpu_s"]["off"], 3)
                                       if args.device == "cpu" else None)}
            ratio = m[v]["cpu_time_ratio"] if args.device == "cpu" else m[v]["time_ratio"]
            m[v]["goal_met"] = m[v]["memory_ratio"] <= 0.5 and ratio <= 1.35
        m["plan"]["chose"] = dict(PLANNED)
        m["memory"] = memory
    out["load_avg_end"] = os.getloadavg()[0]
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
