"""Serving many adapters from one resident base: mixed-adapter batches vs one adapter at a time.

20 adapters (LoRA r=8 on the default targets, tensors perturbed so that every adapter answers
differently) of one base, and a stream of requests each naming a random adapter, arriving in
waves of `--clients` (the concurrent clients). Two servers in one process, on the same requests:

  (a) mixed: `lora_engine.serving.ServedBase` with the 20 adapters resident; a wave is one
      `classify` call (one forward), or, for generation, rows started together and decoded in one
      KV-cached batch until each row ends;
  (b) swap: one model carrying one adapter's LoRA layers; per request, the request's adapter is
      swapped in (`adapters.io.swap_adapter`, tensors already in memory) and the request runs
      alone (`classification_logits`, or `generate_ids`: Hugging Face's KV-cached greedy decode).

Reported per server: requests/s, generated tokens/s, latency p50/p99 (from the wave's arrival to
the request's answer); the ratio (a)/(b); the process's RSS with the base alone and with the 20
adapters resident against the adapters' bytes; a cold adapter's first request (read, checked,
loaded, answered) against a warm one's. Greedy decoding: both servers generate the same tokens.

usage: nice -n 10 python bench/bench_serve_engine.py [--kind classification|generation]
           [--model minilm-l6 | smollm2-135m | tiny-bert ...] [--adapters 20] [--requests 128]
           [--clients 32] [--max-tokens 16]
Prints one JSON line.
"""

from __future__ import annotations

import argparse
import copy
import json
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
    base, _ = load_base_model(model_name, kind, 2 if kind == "classification" else None)
    folders = []
    for i in range(count):
        model = copy.deepcopy(base)
        settings = LoraSettings(rank=8)
        inject_lora(model, settings)
        gen = torch.Generator().manual_seed(i)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name or name.startswith("classifier"):
                    p.add_(0.02 * torch.randn(p.shape, generator=gen))
        labels = ("negative", "positive") if kind == "classification" else ()
        meta = AdapterMeta(base_model=model_name, kind=kind, num_labels=2 if labels else None,
                           label_names=labels, max_length=64 if labels else None,
                           prompt_template=None if labels else "{prompt}")
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


def run_mixed(served: ServedBase, requests, clients: int, kind: str, max_tokens: int) -> dict:
    latencies, tokens = [], 0
    t0 = time.perf_counter()
    for wave in waves(requests, clients):
        arrival = time.perf_counter()
        if kind == "classification":
            served.classify(wave)
            latencies += [time.perf_counter() - arrival] * len(wave)
            continue
        handles = {served.start(key, ids, Sampling(max_tokens=max_tokens)) for key, ids in wave}
        while served.active:
            for handle, token in served.step().items():
                tokens += token.reason != "stop"
                if token.finished and handle in handles:
                    latencies.append(time.perf_counter() - arrival)
    elapsed = time.perf_counter() - t0
    return {"requests_per_s": len(requests) / elapsed, "tokens_per_s": tokens / elapsed,
            **percentiles(latencies)}


def run_swap(model, tokenizer, files: dict, requests, clients: int, kind: str, max_tokens: int) -> dict:
    device = pick_device("cpu")
    settings = DecodeSettings(num_beams=1, length_penalty=1.0, no_repeat_ngram_size=0,
                              max_new_tokens=max_tokens)
    latencies, tokens = [], 0
    t0 = time.perf_counter()
    with torch.no_grad():
        for wave in waves(requests, clients):
            arrival = time.perf_counter()
            for key, item in wave:
                if not swap_adapter(model, files[key]):
                    raise RuntimeError("the bench's adapters all have one shape: swap must succeed")
                if kind == "classification":
                    enc = tokenizer(item, truncation=True, max_length=64, return_tensors="pt")
                    classification_logits(model, dict(enc))
                else:
                    tokens += len(generate_ids(model, [item], tokenizer=tokenizer, device=device,
                                               settings=settings)[0])
                latencies.append(time.perf_counter() - arrival)
    elapsed = time.perf_counter() - t0
    return {"requests_per_s": len(requests) / elapsed, "tokens_per_s": tokens / elapsed,
            **percentiles(latencies)}


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
    torch.set_grad_enabled(False)
    texts = [e.text for e in load_examples("sst2", "validation", data_dir=DEFAULT_DATA, limit=256)]

    with tempfile.TemporaryDirectory() as tmp:
        folders = make_adapters(Path(tmp), model_name, kind, args.adapters)
        progress(f"{args.adapters} adapters written")
        keys = [f"a{i}" for i in range(args.adapters)]
        rng = random.Random(0)
        served = ServedBase.load(model_name, kind, pick_device("cpu"))
        if kind == "classification":
            requests = [(rng.choice(keys), rng.choice(texts)) for _ in range(args.requests)]
            served.classify([(None, t) for t in texts[:args.clients]])  # warm the allocator
        else:
            prompts = [encode_prompts(served.tokenizer, [f"Review: {t}\nSentiment:"])[0] for t in texts]
            requests = [(rng.choice(keys), rng.choice(prompts)) for _ in range(args.requests)]
            run_mixed(served, [(None, p) for p in prompts[:args.clients]], args.clients, kind, 2)
        rss_base = rss_bytes()

        t = time.perf_counter()
        cold_bytes = served.add_adapter(keys[0], folders[0])
        probe = [(keys[0], requests[0][1])]
        run_mixed(served, probe, 1, kind, args.max_tokens)
        cold_s = time.perf_counter() - t
        t = time.perf_counter()
        run_mixed(served, probe, 1, kind, args.max_tokens)
        warm_s = time.perf_counter() - t

        adapter_bytes = cold_bytes + sum(served.add_adapter(k, f) for k, f in zip(keys[1:], folders[1:],
                                                                                  strict=True))
        run_mixed(served, requests[:args.clients], args.clients, kind, args.max_tokens)  # warm-up
        rss_loaded = rss_bytes()
        progress("mixed: warm")
        mixed = run_mixed(served, requests, args.clients, kind, args.max_tokens)
        progress(f"mixed: {mixed}")
        del served

        model, tokenizer = load_base_model(model_name, kind, 2 if kind == "classification" else None)
        files = {k: read_adapter_files(f) for k, f in zip(keys, folders, strict=True)}
        load_adapter(model, files[keys[0]])
        model.eval()
        run_swap(model, tokenizer, files, requests[:4], args.clients, kind, args.max_tokens)  # warm-up
        progress("swap: warm")
        swap = run_swap(model, tokenizer, files, requests, args.clients, kind, args.max_tokens)

    print(json.dumps({
        "kind": kind, "model": model_name, "adapters": args.adapters, "requests": args.requests,
        "clients": args.clients, "max_tokens": args.max_tokens if kind == "generation" else None,
        "threads": torch.get_num_threads(),
        "mixed": mixed, "swap": swap,
        "throughput_ratio": mixed["requests_per_s"] / swap["requests_per_s"],
        "rss_base_mb": rss_base / 2**20, "rss_loaded_mb": rss_loaded / 2**20,
        "adapters_mb": adapter_bytes / 2**20,
        "rss_growth_over_adapter_bytes": (rss_loaded - rss_base) / adapter_bytes,
        "cold_first_request_s": cold_s, "warm_request_s": warm_s,
    }))


if __name__ == "__main__":
    main()
