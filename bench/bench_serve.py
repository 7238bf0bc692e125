"""`lorafleet serve` over HTTP: mixed-adapter continuous batching vs one request at a time.

A real server process (embedded registry in a temporary home) serves 20 adapters of MiniLM-L6
(sst2 classifiers, /v1/classify) and 20 of SmolLM2-135M (E2E generation, /v1/completions),
made here (LoRA r=8, B and heads perturbed: every adapter answers differently) and registered by
the real import service. `--clients` concurrent clients (a closed loop: each sends its next
request when its answer arrives) each ask for a random adapter; the same request sequence
(seeded) goes to two servers started in turn by this script:

  (a) mixed: the defaults (LORAFLEET_SERVE_BATCH_MAX 32): classify requests of any adapters share
      a forward; generation rows of any adapters share the KV-cached decode batch, joining it
      between steps and leaving when they end;
  (b) one at a time: LORAFLEET_SERVE_BATCH_MAX=1: each request runs alone through its adapter
      (all 20 resident: no load or swap is counted against it);
  (c) swapped (with --swapped): one at a time, and an adapter cache that holds one adapter
      (LORAFLEET_SERVE_ADAPTER_CACHE_BYTES = the largest adapter's bytes): the adapter a request
      names is loaded (sha256 checked) when it is not the last one used, as a server that swaps
      one adapter in per request does.

Reported per server and route: requests/s, generated tokens/s, latency p50/p99 (send to answer),
the server's CPU per request (all its threads); the ratios (a)/(b) of requests/s and of requests
per CPU-second of the server (what a shared machine's load does not move). On the mixed server:
the first request to a cold adapter (registry lookup, sha256 check, load, answer) against the
same request once warm (medians of --cold adapters), and the server's RSS with the bases alone
(after the first request of each kind, less that adapter's bytes) and with the 40 adapters
loaded, against the adapters' bytes. Greedy decoding: both servers generate the same tokens.
The load average is printed beside the figures.

usage: nice -n 10 python bench/bench_serve.py [--adapters 20] [--clients 32] [--classify 256]
           [--generate 64] [--max-tokens 16] [--cold 4]
Prints one JSON line (progress on stderr).
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import httpx
import psutil
from benchlib import DEFAULT_DATA

from tests.api_server import ApiProcess, api_env, start_api

START_TIMEOUT_S = 300
TENANT = "bench"
BASES = {"classify": ("minilm-l6", "sst2"), "generate": ("smollm2-135m", "e2e")}


def progress(what: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {what}", file=sys.stderr, flush=True)


def make_adapters(root: Path, base: str, task: str, count: int) -> list[Path]:
    import torch

    from lora_engine.adapters.folder import AdapterMeta
    from lora_engine.adapters.io import save_adapter
    from lora_engine.catalog import TASKS
    from lora_engine.inject import LoraSettings, inject_lora
    from lora_engine.models import load_base_model

    info = TASKS[task]
    loaded, _ = load_base_model(base, info.kind, len(info.label_names) or None)
    folders = []
    for i in range(count):
        model = copy.deepcopy(loaded)
        settings = LoraSettings(rank=8)
        inject_lora(model, settings)
        gen = torch.Generator().manual_seed(i)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name or name.startswith("classifier"):
                    p.add_(0.02 * torch.randn(p.shape, generator=gen))
        meta = AdapterMeta.for_task(info, base_model=base, method="lora")
        folders.append(save_adapter(model, root / f"{task}-{i}", base_model_name=base, settings=settings,
                                    task_type=info.kind, meta=meta))
    return folders


def register(settings, folders: list[Path], task: str) -> list[tuple[str, int]]:
    """(ft: name, bytes) of each adapter, imported for the tenant by the real service."""
    from orchestrator.registry.db import session_scope
    from orchestrator.services.adapters import model_names_of
    from orchestrator.services.imports import check_import, import_adapter

    out = []
    with session_scope(settings) as s:
        for folder in folders:
            foreign, base = check_import(s, TENANT, folder, task=task, settings=settings)
            row = import_adapter(s, TENANT, foreign, base, settings=settings)
            out.append((model_names_of(s, [row])[row.id], int(row.bytes)))
    return out


def inputs() -> tuple[list[str], list[str]]:
    import csv

    from lora_engine.safe_json import loads

    with open(Path(DEFAULT_DATA) / "glue" / "sst2" / "validation.jsonl", "rb") as f:
        sentences = [loads(line, what="sst2 row")["sentence"] for line in f.read().splitlines()[:200]]
    with open(Path(DEFAULT_DATA) / "e2e" / "validation.csv", newline="") as f:
        mrs = sorted({row["mr"] for row in csv.DictReader(f)})[:200]
    return sentences, mrs


def start_server(env: dict[str, str], home: Path, label: str) -> ApiProcess:
    return start_api(env, log_path=home / f"serve-{label}.log", command=("serve",), timeout_s=START_TIMEOUT_S)


def processes(server: ApiProcess) -> list[psutil.Process]:
    proc = psutil.Process(server.proc.pid)
    return [proc, *proc.children(recursive=True)]


def rss(server: ApiProcess) -> int:
    return sum(p.memory_info().rss for p in processes(server))


def cpu_seconds(server: ApiProcess) -> float:
    return sum(sum(p.cpu_times()[:2]) for p in processes(server))


def request_of(route: str, name: str, text: str, max_tokens: int) -> tuple[str, dict]:
    if route == "classify":
        return "/v1/classify", {"model": name, "input": text}
    return "/v1/completions", {"model": name, "prompt": text, "max_tokens": max_tokens, "temperature": 0}


async def one(client: httpx.AsyncClient, path: str, body: dict) -> tuple[float, int]:
    start = time.perf_counter()
    answer = await client.post(path, json=body)
    elapsed = time.perf_counter() - start
    if answer.status_code != 200:
        raise SystemExit(f"{path} answered {answer.status_code}: {answer.text[:500]}")
    return elapsed, answer.json()["usage"].get("completion_tokens", 0)


async def load(server: ApiProcess, key: str, requests: list[tuple[str, dict]], clients: int) -> dict:
    """`clients` closed loops over `requests` (in order): throughput, latency, and the server's
    CPU per request (all its threads: HTTP, registry, engine)."""
    latencies: list[float] = []
    tokens = 0
    todo = iter(requests)
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=server.base_url, limits=limits, timeout=600,
                                 headers={"Authorization": f"Bearer {key}"}) as client:

        async def loop() -> None:
            nonlocal tokens
            for path, body in todo:
                elapsed, made = await one(client, path, body)
                latencies.append(elapsed)
                tokens += made

        start, cpu = time.perf_counter(), cpu_seconds(server)
        await asyncio.gather(*(loop() for _ in range(clients)))
        wall, cpu = time.perf_counter() - start, cpu_seconds(server) - cpu
    ordered = sorted(latencies)
    return {"requests": len(ordered), "requests_per_s": len(ordered) / wall, "tokens_per_s": tokens / wall,
            "server_cpu_ms_per_request": 1000 * cpu / len(ordered), "server_cores": cpu / wall,
            "p50_ms": 1000 * statistics.median(ordered),
            "p99_ms": 1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]}


def timed(server: ApiProcess, key: str, path: str, body: dict) -> float:
    start = time.perf_counter()
    answer = httpx.post(server.base_url + path, json=body, timeout=600,
                        headers={"Authorization": f"Bearer {key}"})
    if answer.status_code != 200:
        raise SystemExit(f"{path} answered {answer.status_code}: {answer.text[:500]}")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adapters", type=int, default=20)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--classify", type=int, default=256, help="classify requests per server")
    parser.add_argument("--generate", type=int, default=64, help="completion requests per server")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--cold", type=int, default=4, help="cold adapters timed per route")
    parser.add_argument("--swapped", action="store_true", help="also (c): one at a time, one adapter cached")
    args = parser.parse_args()
    if args.cold >= args.adapters:
        raise SystemExit("--cold must be below --adapters (the first adapter warms the base)")

    from orchestrator.config import load_settings
    from orchestrator.registry import db
    from orchestrator.services.keys import create_key
    from orchestrator.services.tenants import create_tenant

    result: dict = {"load_average_start": os.getloadavg(), "cpus": os.cpu_count(), "args": vars(args)}
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        home = Path(tmp) / "home"
        home.mkdir()
        env = api_env(home, {"LORAFLEET_SERVE_ADAPTER_CACHE_BYTES": str(1 << 32)})
        settings = load_settings(env)
        db.ensure_schema(settings)
        with db.session_scope(settings) as s:
            create_tenant(s, TENANT)
            key = create_key(s, TENANT)[1]
        names: dict[str, list[tuple[str, int]]] = {}
        for route, (base, task) in BASES.items():
            progress(f"making and importing {args.adapters} {base} adapters ({task})")
            folders = make_adapters(Path(tmp) / "made", base, task, args.adapters)
            names[route] = register(settings, folders, task)
        sentences, mrs = inputs()
        rng = random.Random(0)
        texts = {"classify": sentences, "generate": mrs}
        workloads = {route: [request_of(route, rng.choice(names[route])[0], rng.choice(texts[route]),
                                        args.max_tokens) for _ in range(count)]
                     for route, count in (("classify", args.classify), ("generate", args.generate))}
        adapter_bytes = sum(size for route in names for _, size in names[route])

        servers = [("mixed", 32, env), ("one_at_a_time", 1, env)]
        if args.swapped:
            one = max(size for route in names for _, size in names[route])
            servers.append(("swapped", 1, {**env, "LORAFLEET_SERVE_ADAPTER_CACHE_BYTES": str(one)}))
        for label, batch_max, server_env in servers:
            server = start_server({**server_env, "LORAFLEET_SERVE_BATCH_MAX": str(batch_max)}, home, label)
            try:
                figures: dict = {"batch_max": batch_max}
                if label == "mixed":
                    figures["rss_idle"] = rss(server)
                    for route in BASES:  # each base loaded, with its first adapter
                        first = request_of(route, names[route][0][0], texts[route][0], args.max_tokens)
                        timed(server, key, *first)
                    first_bytes = names["classify"][0][1] + names["generate"][0][1]
                    figures["rss_bases_alone"] = rss(server) - first_bytes
                    cold = {}
                    for route in BASES:
                        firsts, agains = [], []
                        for name, _ in names[route][1:1 + args.cold]:
                            ask = request_of(route, name, texts[route][1], args.max_tokens)
                            firsts.append(timed(server, key, *ask))
                            agains.append(timed(server, key, *ask))
                        cold[route] = {"cold_ms": 1000 * statistics.median(firsts),
                                       "warm_ms": 1000 * statistics.median(agains)}
                    figures["cold_vs_warm"] = cold
                for route in BASES:  # every adapter loaded once (the swapped server keeps the last)
                    for name, _ in names[route]:
                        timed(server, key, *request_of(route, name, texts[route][0], 1))
                progress(f"{label}: every adapter loaded")
                if label == "mixed":
                    figures["rss_all_adapters"] = rss(server)
                    figures["adapter_bytes"] = adapter_bytes
                    figures["rss_goal_bytes"] = figures["rss_bases_alone"] + 2 * adapter_bytes
                    figures["rss_goal_met"] = figures["rss_all_adapters"] <= figures["rss_goal_bytes"]
                for route, requests in workloads.items():
                    progress(f"{label}: {len(requests)} {route} requests, {args.clients} clients")
                    figures[route] = asyncio.run(load(server, key, requests, args.clients))
                result[label] = figures
            finally:
                server.stop()
        for baseline in [label for label, _, _ in servers[1:]]:
            suffix = "" if baseline == "one_at_a_time" else f"_vs_{baseline}"
            result[f"ratio_requests_per_s{suffix}"] = {
                route: result["mixed"][route]["requests_per_s"] / result[baseline][route]["requests_per_s"]
                for route in BASES}
            # Load-independent: requests per second of the server's own CPU (the machine is shared).
            result[f"ratio_requests_per_cpu_second{suffix}"] = {
                route: result[baseline][route]["server_cpu_ms_per_request"]
                / result["mixed"][route]["server_cpu_ms_per_request"] for route in BASES}
        result["load_average_end"] = os.getloadavg()
        db.forget_engine(settings.database_url)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
