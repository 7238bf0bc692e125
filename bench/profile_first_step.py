"""Where a cold job's time goes before its first step: one process, after the worker's imports.

`recipe.setup` on an empty base cache and an empty token cache (memory only), then `recipe.fit`
for `--max-steps`; the functions named in `TIMED` are timed in place (wall seconds since the
start, and the CPU seconds of the thread that ran them), and `PendingEncoded.ensure` (a batch
tokenising its chunk) is summed. Works on older revisions too (`PYTHONPATH=<their tree>`): a
name the code lacks is skipped. Prints one JSON object.

usage: LORAFLEET_DATA_DIR=../shared/data python bench/profile_first_step.py [--base smollm2-135m]
                                                                          [--task e2e]
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import threading
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ["LORAFLEET_DATA_CACHE"] = ""  # nothing on disk: the cold job tokenises

TIMED = [  # (module, attribute path): where a cold job's time was found to go
    ("lora_engine.recipe", "load_model"),
    ("lora_engine.recipe", "training_examples"),
    ("lora_engine.models", "training_tokenizer"),
    ("lora_engine.recipe", "prepare_run"),
    ("lora_engine.data.token_cache", "cache_key"),
    ("lora_engine.data.batching", "encode_generation"),
    ("lora_engine.data.batching", "encode_classification"),
    ("lora_engine.data.batching", "generation_prompts"),
    ("lora_engine.data.streaming", "PendingEncoded.ensure"),
    ("lora_engine.data.streaming", "PendingEncoded.tokenise_rest"),
]


def timed(events: list, start: float, owner, name: str) -> None:
    real = getattr(owner, name)

    def wrapper(*args, **kwargs):
        wall, cpu = time.perf_counter(), time.thread_time()
        try:
            return real(*args, **kwargs)
        finally:
            events.append({"what": name, "thread": threading.current_thread().name,
                           "from_s": round(wall - start, 3), "to_s": round(time.perf_counter() - start, 3),
                           "cpu_s": round(time.thread_time() - cpu, 3)})

    setattr(owner, name, wrapper)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="smollm2-135m")
    parser.add_argument("--task", default="e2e")
    parser.add_argument("--max-steps", type=int, default=3)
    args = parser.parse_args()
    from lora_engine import recipe
    from lora_engine.models import import_loaders

    import_loaders()  # as the worker does at ready
    events: list = []
    start = time.perf_counter()
    for module, path in TIMED:
        try:
            owner = importlib.import_module(module)
        except ImportError:
            continue
        *parents, name = path.split(".")
        for parent in parents:
            owner = getattr(owner, parent)
        if hasattr(owner, name):
            timed(events, start, owner, name)
    data_dir = os.environ["LORAFLEET_DATA_DIR"]
    start = time.perf_counter()
    cpu0 = time.process_time()
    spec = recipe.resolve_spec({"task": args.task, "base_model": args.base, "max_steps": args.max_steps,
                                "batch_size": 8, "eval_size": 4}, data_dir=data_dir)
    run = recipe.setup(spec, data_dir=data_dir)
    setup_s, setup_cpu = time.perf_counter() - start, time.process_time() - cpu0
    steps: list[float] = []
    hooks = recipe.TrainHooks(on_progress=lambda p: steps.append(round(time.perf_counter() - start, 3)))
    recipe.fit(run, hooks)
    chunks = [e for e in events if e["what"] == "ensure"]
    print(json.dumps({
        "load_average": os.getloadavg()[0], "setup_s": round(setup_s, 3),
        "setup_process_cpu_s": round(setup_cpu, 3),
        "steps_at_s": steps, "events": [e for e in events if e["what"] != "ensure"],
        "chunks": {"calls": len(chunks), "cpu_s": round(sum(e["cpu_s"] for e in chunks), 3),
                   "before_step_1": [e for e in chunks if e["to_s"] <= steps[0]]},
    }, indent=1))


if __name__ == "__main__":
    main()
