"""One training step: lora_engine's LoRA vs PEFT's LoRA (and vs our own full fine-tuning), side by side.

Same base weights, rank, targets, batch (the very same padded tensors), seed and optimizer on both
sides; the PEFT side is set up as in the textbook recipe (`../shared/reference/peft_textbook_glue.py`:
`get_peft_model` with a `LoraConfig`, AdamW, linear warm-up schedule, rows padded to the full
length) and runs the model's Hugging Face forward. Our side (LoRA and full fine-tuning) runs
`lora_engine.forward.training_loss`, the forward our recipe trains with: padding-free, the last
encoder layer on first tokens only, the LM head on labelled positions only.

- MiniLM-L6 (sequence classification, SST-2 rows): batch 32, length 64, r=8, alpha 16, query+value.
- SmolLM2-135M (causal LM on E2E rows, MR and reference tokenised apart, loss on the reference only,
  as the E2E anchor trains): batch 8, length 64, r=4, alpha 8, q_proj+v_proj.

Step time: the three variants (ours, peft, full) live in one process and take their steps in turn
(round-robin), so background load hits them alike; we report medians over the timed steps.
Memory, two views:
- `saved_bytes`: what autograd keeps for the backward pass in one step (unique storages seen by a
  saved-tensors hook): the activation memory a LoRA implementation controls, exact and noise-free.
- `peak_rss_mb` (CPU) / `peak_alloc_mb` (CUDA): the whole process, measured in a fresh subprocess
  per variant (ru_maxrss cannot be reset inside a process), including weights and optimizer state.
The FLOP floor of LoRA ÷ full fine-tuning is about 2/3: LoRA skips the weight-gradient GEMMs (one
of forward, input-grad, weight-grad) but keeps the rest.

usage: python bench/bench_step.py [--models minilm,smollm2] [--warmup N] [--steps N]
                                  [--device cpu|cuda] [--threads 2]
Prints one JSON object. Needs HF_HUB_OFFLINE=1 and LORAFLEET_DATA_DIR (the shared data folder).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from peft import PeftModel

from lora_engine.forward import training_loss
from lora_engine.inject import (
    LoraSettings,
    head_module_names,
    inject_lora,
    mark_only_lora_as_trainable,
)
from lora_engine.models import load_base_model

SETUPS = {
    "minilm": {"alias": "minilm-l6", "kind": "classification", "batch": 32, "length": 64, "rank": 8,
               "targets": ["query", "value"], "lora_lr": 5e-4, "full_lr": 5e-5, "warmup": 3, "steps": 10},
    "smollm2": {"alias": "smollm2-135m", "kind": "generation", "batch": 8, "length": 64, "rank": 4,
                "targets": ["q_proj", "v_proj"], "lora_lr": 2e-4, "full_lr": 2e-5, "warmup": 2, "steps": 6},
}
VARIANTS = ("ours", "peft", "full")
SEED = 42


def _data_dir() -> Path:
    return Path(os.environ.get("LORAFLEET_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data"))


def make_batch(setup: dict, tokenizer, device: str) -> dict:
    """A real batch padded to the full length, as the textbook recipe does."""
    n, length = setup["batch"], setup["length"]
    if setup["kind"] == "classification":
        with open(_data_dir() / "glue/sst2/train.jsonl", encoding="utf-8") as f:
            rows = [json.loads(line) for _, line in zip(range(n), f, strict=False)]
        enc = tokenizer([r["sentence"] for r in rows], truncation=True, max_length=length,
                        padding="max_length", return_tensors="pt")
        enc["labels"] = torch.tensor([r["label"] for r in rows])
    else:
        with open(_data_dir() / "e2e/train.csv", newline="", encoding="utf-8") as f:
            rows = [r for _, r in zip(range(n), csv.DictReader(f), strict=False)]
        # E2E as the anchor trains it: MR and reference tokenised apart, loss on the reference only.
        ids = torch.full((n, length), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((n, length), dtype=torch.long)
        labels = torch.full((n, length), -100, dtype=torch.long)
        for i, r in enumerate(rows):
            prompt = tokenizer(r["mr"] + "\n")["input_ids"]
            row = (prompt + tokenizer(r["ref"])["input_ids"] + [tokenizer.eos_token_id])[:length]
            ids[i, :len(row)] = torch.tensor(row)
            mask[i, :len(row)] = 1
            labels[i, len(prompt):len(row)] = ids[i, len(prompt):len(row)]
        enc = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    return {k: v.to(device) for k, v in enc.items()}


def build(variant: str, setup: dict, device: str):
    """(model, optimizer, scheduler, trainable count) for one variant, from identical base weights."""
    from transformers import get_linear_schedule_with_warmup

    torch.manual_seed(SEED)  # the same fresh head on every side
    labels = 2 if setup["kind"] == "classification" else None
    model, tok = load_base_model(setup["alias"], setup["kind"], labels)
    r = setup["rank"]
    if variant == "ours":
        inject_lora(model, LoraSettings(method="lora", rank=r, alpha=2 * r, targets=setup["targets"]))
        mark_only_lora_as_trainable(model, modules_to_save=head_module_names(model))
        lr = setup["lora_lr"]
    elif variant == "peft":
        from peft import LoraConfig, TaskType, get_peft_model

        task = TaskType.SEQ_CLS if setup["kind"] == "classification" else TaskType.CAUSAL_LM
        model = get_peft_model(model, LoraConfig(task_type=task, r=r, lora_alpha=2 * r,
                                                 target_modules=setup["targets"]))
        lr = setup["lora_lr"]
    else:
        lr = setup["full_lr"]
    model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    sched = get_linear_schedule_with_warmup(opt, 2, 1000)
    return model, tok, opt, sched, sum(p.numel() for p in params)


def loss_of(model, batch: dict) -> torch.Tensor:
    """PEFT's step runs the model's own forward; ours (LoRA and full) runs lora_engine's forward."""
    if isinstance(model, PeftModel):
        return model(**batch).loss
    kind = "classification" if batch["labels"].dim() == 1 else "generation"
    return training_loss(model, batch, kind)


def step(model, opt, sched, batch, device: str) -> float:
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device == "cuda" else nullcontext()
    start = time.perf_counter()
    with autocast:
        loss = loss_of(model, batch)
    loss.backward()
    opt.step()
    sched.step()
    opt.zero_grad()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def saved_bytes(model, batch, device: str) -> int:
    """Bytes autograd saves for backward in one forward (unique storages), i.e. activation memory."""
    seen: dict[int, int] = {}

    def pack(t):
        if t.device.type != "meta":
            storage = t.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device == "cuda" else nullcontext()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), autocast:
        loss = loss_of(model, batch)
    loss.backward()
    model.zero_grad(set_to_none=True)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    return sum(n for ptr, n in seen.items() if ptr not in params)  # weights are not activations


def _rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def worker(name: str, variant: str, device: str, steps: int) -> dict:
    """Peak memory of one variant alone in this (fresh) process.

    Loading a model peaks higher than a step (file buffers, conversion copies), so on Linux the
    peak-RSS mark is reset after loading (`5` > /proc/self/clear_refs) and `train_peak_rss_mb` is
    the peak during the steps alone: weights + gradients + optimizer state + activations.
    """
    setup = SETUPS[name]
    model, tok, opt, sched, _ = build(variant, setup, device)
    batch = make_batch(setup, tok, device)
    try:
        Path("/proc/self/clear_refs").write_text("5")
        reset = True
    except OSError:
        reset = False
    before = _rss_kb("VmRSS")
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for _ in range(steps):
        step(model, opt, sched, batch, device)
    peak = _rss_kb("VmHWM")
    out = {"peak_rss_mb": round(peak / 1024, 1), "rss_before_steps_mb": round(before / 1024, 1),
           "peak_reset_after_load": reset}
    if device == "cuda":
        out["peak_alloc_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return out


def run_model(name: str, args) -> dict:
    setup = SETUPS[name]
    built = {v: build(v, setup, args.device) for v in VARIANTS}
    batch = make_batch(setup, built["ours"][1], args.device)
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    warmup = setup["warmup"] if args.warmup is None else args.warmup
    steps = setup["steps"] if args.steps is None else args.steps
    for i in range(warmup + steps):
        order = VARIANTS if i % 2 == 0 else tuple(reversed(VARIANTS))  # nobody always goes first
        for v in order:
            model, _, opt, sched, _ = built[v]
            t = step(model, opt, sched, batch, args.device)
            if i >= warmup:
                times[v].append(t)
    saved = {v: saved_bytes(built[v][0], batch, args.device) for v in VARIANTS}
    trainable = {v: built[v][4] for v in VARIANTS}
    del built
    memory = {}
    for v in VARIANTS:
        cmd = [sys.executable, __file__, "--worker", f"{name}:{v}", "--device", args.device,
               "--threads", str(args.threads), "--steps", "2"]
        cmd += [f"--model-dir={item}" for item in args.model_dir]
        res = subprocess.run(cmd, capture_output=True, text=True, check=True)
        memory[v] = json.loads(res.stdout.strip().splitlines()[-1])
    med = {v: statistics.median(ts) for v, ts in times.items()}
    mem_key = "peak_alloc_mb" if args.device == "cuda" else "peak_rss_mb"
    return {
        "setup": {k: setup[k] for k in ("alias", "batch", "length", "rank", "targets")},
        "trainable_params": trainable,
        "step_s_median": {v: round(t, 4) for v, t in med.items()},
        "warmup_steps": warmup,
        "timed_steps": steps,
        "step_s_min_max": {v: [round(min(ts), 4), round(max(ts), 4)] for v, ts in times.items()},
        "saved_activation_mb": {v: round(b / 2**20, 1) for v, b in saved.items()},
        "peak_memory_mb": {v: memory[v][mem_key] for v in VARIANTS},
        "memory_detail": memory,
        "ratios": {
            "step_time_ours_over_peft": round(med["ours"] / med["peft"], 3),
            "saved_activations_ours_over_peft": round(saved["ours"] / saved["peft"], 3),
            "peak_memory_ours_over_peft": round(memory["ours"][mem_key] / memory["peft"][mem_key], 3),
            "lora_step_over_full_step": round(med["ours"] / med["full"], 3),
            # The fastest step is the least disturbed by other load on a shared machine.
            "min_step_time_ours_over_peft": round(min(times["ours"]) / min(times["peft"]), 3),
            "min_lora_step_over_full_step": round(min(times["ours"]) / min(times["full"]), 3),
        },
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="minilm,smollm2")
    p.add_argument("--warmup", type=int, default=None, help="default: per model (3 MiniLM, 2 SmolLM2)")
    p.add_argument("--steps", type=int, default=None, help="timed steps; default: 10 MiniLM, 6 SmolLM2")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   choices=["cpu", "cuda"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--model-dir", action="append", default=[], metavar="NAME=DIR",
                   help="load NAME (minilm|smollm2) from a local folder instead of its alias, e.g. the same "
                        "config with random weights on a GPU box without the model packages")
    args = p.parse_args()
    for item in args.model_dir:
        name, _, folder = item.partition("=")
        SETUPS[name]["alias"] = folder
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(args.threads)
    if args.worker:
        name, variant = args.worker.split(":")
        print(json.dumps(worker(name, variant, args.device, args.steps or 2)))
        return
    start = time.perf_counter()
    results = {"device": args.device, "threads": args.threads, "torch": torch.__version__}
    for name in args.models.split(","):
        load = os.getloadavg()[0]
        results[name] = run_model(name, args)
        results[name]["load_avg_1min"] = [round(load, 2), round(os.getloadavg()[0], 2)]  # start, end
        print(json.dumps({name: results[name]}), file=sys.stderr, flush=True)  # partial results early
    results["wall_s"] = round(time.perf_counter() - start, 1)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
