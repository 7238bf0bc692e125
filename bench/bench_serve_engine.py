"""Serving many adapters from one resident base: mixed-adapter batches vs one adapter at a time.

20 adapters (LoRA r=8 on the default targets, A, B and head perturbed so that every adapter
answers differently) of one base, and a stream of requests each naming a random adapter, arriving in
waves of `--clients` (the concurrent clients). Two servers in one process, on the same requests:

  (a) mixed: `lora_engine.serving.ServedBase` with the 20 adapters resident; a wave is one
      `classify` call (one forward), or, for generation, rows started together and decoded in one
      KV-cached batch until each row ends;
  (b) swap: one model carrying one adapter's LoRA layers; per request, the request's adapter is
      swapped in (`adapters.io.swap_adapter`, tensors already in memory) and the request runs
      alone (`classification_logits`, or `generate_ids`: Hugging Face's KV-cached greedy decode).

The two servers take the waves in turn (wave 1: a then b, wave 2: b then a, ...), so on a shared
machine whose load moves both meet the same load. Reported per server: requests/s, generated
tokens/s, latency p50/p99 (from the wave's arrival to the request's answer), requests per CPU
second of the process (steadier than the wall clock on a loaded machine), and for (b) the share of
its time spent swapping; the ratios (a)/(b) by wall clock and by CPU; the process's RSS with the
base alone and with the 20 adapters resident against the adapters' bytes; a cold adapter's first
request (read, checked, loaded, answered) against a warm one's. Greedy decoding: both servers
generate the same tokens.

usage: nice -n 10 python bench/bench_serve_engine.py [--kind classification|generation]
           [--model minilm-l6 | smollm2-135m | tiny-bert ...] [--adapters 20] [--requests 128]
           [--clients 32] [--max-tokens 16]
Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch
from benchlib import DEFAULT_DATA

from lora_engine.adapters.folder import AdapterMeta
from lora_engine.adapters.io import load_adapter, read_adapter_files, save_adapter, swap_adapter
from lora_engine.data import load_examples
from lora_engine.data.batching import encode_prompts
from lora_engine.device import pick_device
from lora_engine.forward.encoder import classification_logits
from lora_engine.generate import DecodeSettings, generate_ids
from lora_engine.inject import LoraSettings, inject_lora
from lora_engine.models import load_base_model
from lora_engine.serving import Sampling, ServedBase


def progress(what: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {what}", file=sys.stderr, flush=True)


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def make_adapters(root: Path, model_name: str, kind: str, count: int) -> list[Path]:
    """`count` adapters of one shape: one injected model, its LoRA tensors (A and B) and head set
    to their initial values plus a seeded perturbation before each save (no copy of the base)."""
    model, _ = load_base_model(model_name, kind, 2 if kind == "classification" else None)
    settings = LoraSettings(rank=8)
    inject_lora(model, settings)
    own = {name: p for name, p in model.named_parameters()
           if "lora_" in name or name.startswith("classifier")}
    initial = {name: p.detach().clone() for name, p in own.items()}
    labels = ("negative", "positive") if kind == "classification" else ()
    meta = AdapterMeta(base_model=model_name, kind=kind, num_labels=2 if labels else None,
                       label_names=labels, max_length=64 if labels else None,
                       prompt_template=None if labels else "{prompt}")
    folders = []
    for i in range(count):
        gen = torch.Generator().manual_seed(i)
        with torch.no_grad():
            for name, p in own.items():
                p.copy_(initial[name] + 0.02 * torch.randn(p.shape, generator=gen))
        folders.append(save_adapter(model, root / f"a{i}", base_model_name=model_name, settings=settings,
                                    task_type=kind, meta=meta))
    return folders


def percentiles(latencies: list[float]) -> dict:
    ordered = sorted(latencies)
    return {"p50_ms": 1000 * statistics.median(ordered),
            "p99_ms": 1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]}


def waves(requests: list, size: int):
    for start in range(0, len(requests), size):
        yield requests[start:start + size]


class Tally:
    """One server's clock: wall and process CPU seconds over its waves, latencies, tokens."""

    def __init__(self) -> None:
        self.wall = self.cpu = 0.0
        self.latencies: list[float] = []
        self.tokens = self.requests = 0
        self.swap_s = 0.0  # (b) only: time spent swapping adapters in

    def run(self, serve_wave, wave) -> None:
        wall, cpu = time.perf_counter(), time.process_time()
        self.tokens += serve_wave(wave, wall, self)
        self.wall += time.perf_counter() - wall
        self.cpu += time.process_time() - cpu
        self.requests += len(wave)

    def summary(self) -> dict:
        return {"requests_per_s": self.requests / self.wall, "tokens_per_s": self.tokens / self.wall,
                "requests_per_cpu_s": self.requests / self.cpu, **percentiles(self.latencies),
                **({"swap_share": self.swap_s / self.wall} if self.swap_s else {})}


def mixed_server(served: ServedBase, kind: str, max_tokens: int):
    """(a): a wave is one `classify` call, or rows started together and decoded in one batch."""
    def serve_wave(wave, arrival: float, tally: Tally) -> int:
        if kind == "classification":
            served.classify(wave)
            tally.latencies += [time.perf_counter() - arrival] * len(wave)
            return 0
        tokens = 0
        handles = {served.start(key, ids, Sampling(max_tokens=max_tokens)) for key, ids in wave}
        while served.active:
            for handle, token in served.step().items():
                tokens += token.reason != "stop"
                if token.finished and handle in handles:
                    tally.latencies.append(time.perf_counter() - arrival)
        return tokens
    return serve_wave


def swap_server(model, tokenizer, files: dict, kind: str, max_tokens: int):
    """(b): per request, its adapter swapped in, then the request alone."""
    device = pick_device("cpu")
    settings = DecodeSettings(num_beams=1, length_penalty=1.0, no_repeat_ngram_size=0,
                              max_new_tokens=max_tokens)

    def serve_wave(wave, arrival: float, tally: Tally) -> int:
        tokens = 0
        for key, item in wave:
            t = time.perf_counter()
            if not swap_adapter(model, files[key]):
                raise RuntimeError("the bench's adapters all have one shape: swap must succeed")
            tally.swap_s += time.perf_counter() - t
            if kind == "classification":
                enc = tokenizer(item, truncation=True, max_length=64, return_tensors="pt")
                classification_logits(model, dict(enc))
            else:
                tokens += len(generate_ids(model, [item], tokenizer=tokenizer, device=device,
                                           settings=settings)[0])
            tally.latencies.append(time.perf_counter() - arrival)
        return tokens
    return serve_wave


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kind", default="classification", choices=["classification", "generation"])
    parser.add_argument("--model", default=None, help="minilm-l6 (classification), smollm2-135m (generation)")
    parser.add_argument("--adapters", type=int, default=20)
    parser.add_argument("--requests", type=int, default=128)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=16)
    args = parser.parse_args()
    kind = args.kind
    model_name = args.model or ("minilm-l6" if kind == "classification" else "smollm2-135m")
    texts = [e.text for e in load_examples("sst2", "validation", data_dir=DEFAULT_DATA, limit=256)]

    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        folders = make_adapters(Path(tmp), model_name, kind, args.adapters)
        progress(f"{args.adapters} adapters written")
        keys = [f"a{i}" for i in range(args.adapters)]
        rng = random.Random(0)
        served = ServedBase.load(model_name, kind, pick_device("cpu"))
        mixed = mixed_server(served, kind, args.max_tokens)
        if kind == "classification":
            requests = [(rng.choice(keys), rng.choice(texts)) for _ in range(args.requests)]
            mixed([(None, t) for t in texts[:args.clients]], time.perf_counter(), Tally())  # warm up
        else:
            prompts = [encode_prompts(served.tokenizer, [f"Review: {t}\nSentiment:"])[0] for t in texts]
            requests = [(rng.choice(keys), rng.choice(prompts)) for _ in range(args.requests)]
            mixed_server(served, kind, 2)([(None, p) for p in prompts[:args.clients]], time.perf_counter(),
                                          Tally())
        rss_base = rss_bytes()

        probe = [(keys[0], requests[0][1])]
        t = time.perf_counter()
        cold_bytes = served.add_adapter(keys[0], folders[0])
        mixed(probe, t, Tally())
        cold_s = time.perf_counter() - t
        t = time.perf_counter()
        mixed(probe, t, Tally())
        warm_s = time.perf_counter() - t

        adapter_bytes = cold_bytes + sum(served.add_adapter(k, f) for k, f in zip(keys[1:], folders[1:],
                                                                                  strict=True))
        mixed(requests[:args.clients], time.perf_counter(), Tally())  # warm-up
        rss_loaded = rss_bytes()

        model, tokenizer = load_base_model(model_name, kind, 2 if kind == "classification" else None)
        files = {k: read_adapter_files(f) for k, f in zip(keys, folders, strict=True)}
        load_adapter(model, files[keys[0]])
        model.eval()
        swap = swap_server(model, tokenizer, files, kind, args.max_tokens)
        swap(requests[:4], time.perf_counter(), Tally())  # warm-up
        progress("both servers warm")
        # Wave by wave, each server in turn (the first alternating): both meet the same load.
        tallies = {"mixed": Tally(), "swap": Tally()}
        for i, wave in enumerate(waves(requests, args.clients)):
            turns = [("mixed", mixed), ("swap", swap)]
            for name, server in (turns if i % 2 == 0 else turns[::-1]):
                tallies[name].run(server, wave)
        mixed_out, swap_out = tallies["mixed"].summary(), tallies["swap"].summary()
        progress(f"mixed: {mixed_out}; swap: {swap_out}")

    print(json.dumps({
        "kind": kind, "model": model_name, "adapters": args.adapters, "requests": args.requests,
        "clients": args.clients, "max_tokens": args.max_tokens if kind == "generation" else None,
        "threads": torch.get_num_threads(),
        "load_average": os.getloadavg()[0],
        "mixed": mixed_out, "swap": swap_out,
        "throughput_ratio": mixed_out["requests_per_s"] / swap_out["requests_per_s"],
        "cpu_throughput_ratio": mixed_out["requests_per_cpu_s"] / swap_out["requests_per_cpu_s"],
        "rss_base_mb": rss_base / 2**20, "rss_loaded_mb": rss_loaded / 2**20,
        "adapters_mb": adapter_bytes / 2**20,
        "rss_growth_over_adapter_bytes": (rss_loaded - rss_base) / adapter_bytes,
        "cold_first_request_s": cold_s, "warm_request_s": warm_s,
    }))


if __name__ == "__main__":
    main()
