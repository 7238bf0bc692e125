"""Packed training vs one job after another, side by side in one script.

K jobs on one resident base (MiniLM-L6: SST-2, MRPC, RTE, CoLA, ... cycled, batch 8 each, seeds
differ), trained either one after another through `recipe.train` on a warm `BaseModelCache` (what a
warm worker does today) or together in one `lora_engine.packed.Pack`. Each variant runs in its own
child process (so its peak RSS is its own), the variants alternate, and the whole is repeated;
medians of the per-round ratios are reported.

Per variant: training examples/s (from the step-1 to the step-S progress events of every job,
so set-up and evaluation are left out), time to finish all jobs (set-up, training, evaluation,
adapter folders), peak memory, and for the pack the real-token share (real tokens over the padded
slots of the jobs' own attention layouts; the token-wise work is padding-free: 100 %).

`--step` compares the training step alone, in one process on the very same batches (one packed
forward + backward of K jobs, with per-job and with fused routing, vs the K solo ones,
interleaved), which is what shared-machine noise disturbs least; on CUDA it runs in bf16 autocast
with the device synchronised around every timing. `--routing` instead times the multi-adapter
LoRA layer's routing mechanisms on MiniLM's shapes (forward + backward): a slice per job fused
into addmm (what `MultiLoRALinear` does), an index_select / index_add_ loop (mLoRA's kernel
layout), gather + bmm over a zero-padded stack, and one folded-weight GEMM per job.

usage: nice -n 10 python bench/bench_packed.py [--ks 2,4,8] [--steps 30] [--rounds 3]
       nice -n 10 python bench/bench_packed.py --step [--ks 2,4,8] [--rounds 5]
       python bench/bench_packed.py --model smollm2-135m --ks 4 --steps 4 --rounds 1
       python bench/bench_packed.py --routing
Prints JSON lines, then a summary.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import DEFAULT_DATA

TASKS = ["sst2", "mrpc", "rte", "cola"]


def _gen_dataset(folder: Path, i: int) -> str:
    """A custom-generation data set (E2E-like rows, a different slice per job)."""
    from lora_engine.data import load_examples

    rows = load_examples("e2e", "train", data_dir=DEFAULT_DATA)[i * 400:(i + 1) * 400]
    path = folder / f"gen{i}.jsonl"
    lines = [json.dumps({"prompt": r.prompt, "completion": r.completion}) + "\n" for r in rows]
    path.write_text("".join(lines))
    return str(path)


def job_specs(model: str, k: int, steps: int, folder: Path) -> list[dict]:
    if model == "smollm2-135m":
        return [{"task": "custom-generation", "dataset": _gen_dataset(folder, i), "base_model": model,
                 "batch_size": 8, "max_steps": steps, "max_length": 64, "eval_size": 8, "seed": i}
                for i in range(k)]
    return [{"task": TASKS[i % len(TASKS)], "base_model": model, "batch_size": 8, "max_steps": steps,
             "max_length": 128, "eval_size": 128, "seed": i} for i in range(k)]


def run_variant(variant: str, model: str, k: int, steps: int) -> dict:
    """One variant in this (child) process; returns its measurements."""
    import torch

    from lora_engine.cache import BaseModelCache
    from lora_engine.catalog import task_info
    from lora_engine.generate import DecodeSettings
    from lora_engine.packed import Pack
    from lora_engine.recipe import TrainHooks, train

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    decode = DecodeSettings(num_beams=1, no_repeat_ngram_size=0, max_new_tokens=16)
    folder = Path(tempfile.mkdtemp(prefix="bench-packed-"))
    specs = job_specs(model, k, steps, folder)
    cache = BaseModelCache()
    kind = task_info(specs[0]["task"]).kind
    cache.checkout(model, kind, 2 if kind == "classification" else None)  # both variants start warm
    cache.checkin()
    marks: dict[int, dict[int, float]] = {i: {} for i in range(k)}
    cpu: dict[int, dict[int, float]] = {i: {} for i in range(k)}

    def mark(i: int, step: int) -> None:
        marks[i].setdefault(step, time.perf_counter())
        cpu[i].setdefault(step, time.process_time())

    def hooks(i: int) -> TrainHooks:
        return TrainHooks(on_progress=lambda p: mark(i, p.step))

    t0 = time.perf_counter()
    out: dict = {"variant": variant, "model": model, "k": k, "steps": steps}
    if variant == "sequential":
        for i, spec in enumerate(specs):
            train(spec, folder / f"out{i}", data_dir=DEFAULT_DATA, hooks=hooks(i), cache=cache, decode=decode,
                  meteor=False)
        train_s = sum(marks[i][steps] - marks[i][1] for i in range(k))
        train_cpu = sum(cpu[i][steps] - cpu[i][1] for i in range(k))
    else:
        model_obj, tok = cache.checkout(model, kind, 2 if kind == "classification" else None)
        pack = Pack(model_obj, tok, data_dir=DEFAULT_DATA, base_model=model, max_jobs=k, decode=decode,
                    meteor=False)
        for i, spec in enumerate(specs):
            pack.add(spec, folder / f"out{i}", hooks(i), key=str(i))
        outcomes = pack.run()
        bad = {key: repr(o.error) for key, o in outcomes.items() if o.status != "succeeded"}
        if bad:
            raise SystemExit(f"packed jobs failed: {bad}")
        pack.close()
        cache.checkin()
        # Round s ends when its first job reports step s (the others' optimizer steps follow).
        train_s = min(m[steps] for m in marks.values()) - min(m[1] for m in marks.values())
        train_cpu = min(m[steps] for m in cpu.values()) - min(m[1] for m in cpu.values())
        out["real_token_share_attention"] = round(pack.real_token_share, 4)
    out["finish_all_s"] = round(time.perf_counter() - t0, 2)
    examples = sum(s["batch_size"] for s in specs) * (steps - 1)
    out["train_s"] = round(train_s, 3)
    out["examples_per_s"] = round(examples / train_s, 2)
    out["examples_per_cpu_s"] = round(examples / train_cpu, 2)  # work, less sensitive to other load
    out["outside_training_s"] = round(out["finish_all_s"] - train_s, 2)
    out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return out


def step_bench(model_name: str, k: int, repeats: int = 5, steps: int = 4) -> dict:
    """In one process, on the very same batches: one packed forward+backward of K jobs (per-job
    routing, and fused routing: what CUDA runs) vs the K solo forward+backwards (each on its job's
    solo view of the model), interleaved; CPU and wall seconds per round, medians. Optimizer steps
    are per job in all three and left out. On CUDA: bf16 autocast as in training, and the device
    synchronised before every clock reading (the CPU seconds are then the host's, not the work)."""
    import torch

    from lora_engine.cache import BaseModelCache
    from lora_engine.catalog import task_info
    from lora_engine.device import autocast, pick_device, synchronize
    from lora_engine.forward import training_loss
    from lora_engine.packed import Pack
    from lora_engine.packed.forward import PackedBatch, packed_losses

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    device = pick_device()
    folder = Path(tempfile.mkdtemp(prefix="bench-packed-"))
    specs = job_specs(model_name, k, 100, folder)
    kind = task_info(specs[0]["task"]).kind
    model, tok = BaseModelCache().checkout(model_name, kind, 2 if kind == "classification" else None)
    pack = Pack(model, tok, data_dir=DEFAULT_DATA, base_model=model_name, device=device)
    for i, spec in enumerate(specs):
        pack.add(spec, folder / f"out{i}", key=str(i))
    jobs = list(pack.jobs.values())
    batches = [[{n: t.to(device.device) for n, t in next(j.batches).inputs.items()} for _ in range(steps)]
               for j in jobs]
    model.train()

    def packed(r, fused=False):
        pack.routing.fused = fused
        pb = [PackedBatch(j.slot, batches[i][r], j.run.info.kind, j.heads, j.stream)
              for i, j in enumerate(jobs)]
        with autocast(device):
            losses = packed_losses(model, pb, pack.routing)
        torch.stack(losses).sum().backward()

    def fused(r):
        packed(r, fused=True)

    def solo(r):
        for i, j in enumerate(jobs):
            with pack._view(j), j.stream.active():
                with autocast(device):
                    loss = training_loss(model, batches[i][r], j.run.info.kind)
                loss.backward()

    variants = {"packed": packed, "fused": fused, "solo": solo}
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}
    for _ in range(2 if device.is_cuda else 1):  # warm-up (CUDA: kernels chosen, memory pooled)
        for fn in variants.values():
            fn(0)
    for rep in range(repeats):
        order = list(variants.items())
        for name, fn in order if rep % 2 == 0 else order[::-1]:
            synchronize(device)
            t, c = time.perf_counter(), time.process_time()
            for r in range(steps):
                fn(r)
            synchronize(device)
            times[name].append(((time.perf_counter() - t) / steps, (time.process_time() - c) / steps))
    med = {n: (statistics.median(x[0] for x in v), statistics.median(x[1] for x in v))
           for n, v in times.items()}
    tokens = sum(int(b[0]["attention_mask"].sum()) for b in batches)
    out = {"model": model_name, "k": k, "device": device.name, "tokens_per_round": tokens}
    for name in ("packed", "fused", "solo"):
        out[f"{name}_wall_s"], out[f"{name}_cpu_s"] = round(med[name][0], 4), round(med[name][1], 4)
    for name in ("packed", "fused"):  # solo / packed: > 1 means packing wins
        out[f"speedup_wall_{name}"] = round(med["solo"][0] / med[name][0], 3)
        out[f"speedup_cpu_{name}"] = round(med["solo"][1] / med[name][1], 3)
    return out


def routing_bench(repeats: int = 30) -> list[dict]:
    """Forward + backward of one 384→384 layer with K=4 rank-8 adapters, per mechanism."""
    import torch
    import torch.nn.functional as F

    torch.manual_seed(0)
    rows = [180, 420, 560, 90]  # tokens per job of a packed MiniLM step (SST-2, MRPC, RTE, CoLA)
    d, r, k = 384, 8, len(rows)
    w = torch.randn(d, d) * 0.05
    bias = torch.zeros(d)
    a = [torch.randn(r, d, requires_grad=True) for _ in range(k)]
    b = [torch.randn(d, r, requires_grad=True) for _ in range(k)]
    offsets = [0]
    for n in rows:
        offsets.append(offsets[-1] + n)
    total = offsets[-1]
    index = [torch.arange(offsets[i], offsets[i + 1]) for i in range(k)]

    sizes = rows

    def split(x):  # what MultiLoRALinear does
        y0 = F.linear(x, w)
        parts = [torch.addmm(y, F.linear(xs, a[i]), b[i].t(), alpha=2.0)
                 for i, (y, xs) in enumerate(zip(y0.split(sizes), x.split(sizes), strict=True))]
        return torch.cat(parts) + bias

    def slices(x):
        y0 = F.linear(x, w)
        parts = [torch.addmm(y0[o:o + n], F.linear(x[o:o + n], a[i]), b[i].t(), alpha=2.0)
                 for i, (o, n) in enumerate(zip(offsets[:-1], sizes, strict=True))]
        return torch.cat(parts) + bias

    def inplace(x):
        y = F.linear(x, w, bias)
        for i, (o, n) in enumerate(zip(offsets[:-1], sizes, strict=True)):
            y[o:o + n].addmm_(F.linear(x[o:o + n], a[i]), b[i].t(), alpha=2.0)
        return y

    def index_add(x):
        y = F.linear(x, w, bias)
        for i in range(k):
            xs = x.index_select(0, index[i])
            y = y.index_add(0, index[i], F.linear(F.linear(xs, a[i]), b[i]), alpha=2.0)
        return y

    def gather_bmm(x):
        y = F.linear(x, w, bias)
        stack = x.new_zeros(k, max(rows), d)
        for i, (o, n) in enumerate(zip(offsets[:-1], sizes, strict=True)):
            stack[i, :n] = x[o:o + n]
        delta = torch.bmm(torch.bmm(stack, torch.stack(a).transpose(1, 2)), torch.stack(b).transpose(1, 2))
        return y + 2.0 * torch.cat([delta[i, :rows[i]] for i in range(k)])

    def folded(x):
        return torch.cat([F.linear(xs, torch.addmm(w, b[i], a[i], alpha=2.0), bias)
                          for i, xs in enumerate(x.split(sizes))])

    mechanisms = {"split+addmm (ours)": split, "slices+addmm": slices, "in-place addmm_ on slices": inplace,
                  "index_select/index_add": index_add, "gather+bmm (zero-padded)": gather_bmm,
                  "folded GEMM per job": folded}
    x = torch.randn(total, d, requires_grad=True)
    ref = split(x).detach()
    times: dict[str, list[float]] = {name: [] for name in mechanisms}
    for _ in range(repeats):
        for name, fn in mechanisms.items():  # interleaved: background load hits all alike
            t = time.perf_counter()
            y = fn(x)
            y.square().mean().backward()
            times[name].append(time.perf_counter() - t)
            x.grad = None
            for p in a + b:
                p.grad = None
    out = []
    base = statistics.median(times["split+addmm (ours)"])
    for name, fn in mechanisms.items():
        torch.testing.assert_close(fn(x).detach(), ref, rtol=1e-3, atol=1e-3)  # same numbers
        med = statistics.median(times[name])
        out.append({"mechanism": name, "median_ms": round(med * 1e3, 3), "vs_ours": round(med / base, 3)})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="minilm-l6")
    parser.add_argument("--ks", default="2,4,8")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--routing", action="store_true")
    parser.add_argument("--step", action="store_true", help="in-process packed vs solo step, per K")
    parser.add_argument("--child", nargs=2, metavar=("VARIANT", "K"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.routing:
        for row in routing_bench():
            print(json.dumps(row))
        return
    if args.step:
        for k in (int(x) for x in args.ks.split(",")):
            print(json.dumps(step_bench(args.model, k, repeats=args.rounds)), flush=True)
        return
    if args.child:
        print(json.dumps(run_variant(args.child[0], args.model, int(args.child[1]), args.steps)))
        return
    results: dict[tuple[int, str], list[dict]] = {}
    for rnd in range(args.rounds):
        for k in (int(x) for x in args.ks.split(",")):
            order = ("sequential", "packed") if rnd % 2 == 0 else ("packed", "sequential")
            for variant in order:
                cmd = [sys.executable, __file__, "--model", args.model, "--steps", str(args.steps),
                       "--child", variant, str(k)]
                done = subprocess.run(cmd, capture_output=True, text=True, check=False)
                if done.returncode:
                    raise SystemExit(done.stderr[-3000:])
                row = json.loads(done.stdout.strip().splitlines()[-1])
                row["round"] = rnd
                print(json.dumps(row), flush=True)
                results.setdefault((k, variant), []).append(row)
    print("\nsummary (medians over rounds of packed / sequential):")
    for k in sorted({k for k, _ in results}):
        seq, packed = results[(k, "sequential")], results[(k, "packed")]
        ratio = [p["examples_per_s"] / s["examples_per_s"] for p, s in zip(packed, seq, strict=True)]
        finish = [p["finish_all_s"] / s["finish_all_s"] for p, s in zip(packed, seq, strict=True)]
        memory = [p["peak_rss_mb"] / s["peak_rss_mb"] for p, s in zip(packed, seq, strict=True)]
        work = [p["examples_per_cpu_s"] / s["examples_per_cpu_s"] for p, s in zip(packed, seq, strict=True)]
        print(json.dumps({"model": args.model, "k": k,
                          "examples_per_s_ratio": round(statistics.median(ratio), 3),
                          "all_ratios": [round(x, 3) for x in ratio],
                          "examples_per_cpu_s_ratio": round(statistics.median(work), 3),
                          "finish_all_time_ratio": round(statistics.median(finish), 3),
                          "peak_rss_ratio": round(statistics.median(memory), 3),
                          "real_token_share_attention": packed[0]["real_token_share_attention"]}))


if __name__ == "__main__":
    main()
