"""What the fsync before the rename costs: `save_checkpoint` through `atomic.atomic_folder` (every
file fsynced, then the rename, then the parent folder) vs the same writes and rename with no fsync.

Two checkpoint sizes, the tensors a MiniLM-L6 run checkpoints (trainable weights + AdamW's two
moments, float32): a LoRA run (r=8 on query+value, plus the 2-label head) and a `full` run (every
weight). The two variants alternate, the first one switching each repeat, so disk and machine load
hit both alike; medians over the repeats. The page cache is the file system's own (no drop).

usage: python bench/bench_atomic_write.py [--repeats 7] [--folder DIR]
Prints one JSON object: per size, the median seconds of each variant and their ratio.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from lora_engine import atomic
from lora_engine.checkpoint import Checkpoint, capture_rng_state, save_checkpoint

# Parameter counts of MiniLM-L6 (hidden 384, 6 layers): all weights, and LoRA r=8 on query+value
# (2 x 6 layers x (384x8 + 8x384)) plus the classifier head (384x384 + 384 + 384x2 + 2).
SIZES = {"lora": 2 * 6 * (384 * 8 + 8 * 384) + 384 * 384 + 384 + 384 * 2 + 2, "full": 22_713_216}


def _checkpoint(params: int) -> Checkpoint:
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(params, generator=gen)
    state = {0: {"step": torch.tensor(10.0), "exp_avg": torch.randn(params, generator=gen),
                 "exp_avg_sq": torch.rand(params, generator=gen)}}
    groups = [{"lr": 1e-3, "params": [0]}]
    return Checkpoint(step=10, trainable={"w": weight}, optimizer={"state": state, "param_groups": groups},
                      rng=capture_rng_state(), sampler={"epoch": 0, "position": 0}, meta={})


def _timed(folder: Path, ckpt: Checkpoint, fsync: bool) -> float:
    original = atomic.fsync_tree
    if not fsync:
        atomic.fsync_tree = lambda _folder: None
    try:
        t0 = time.perf_counter()
        save_checkpoint(folder, ckpt)
        return time.perf_counter() - t0
    finally:
        atomic.fsync_tree = original
        shutil.rmtree(folder, ignore_errors=True)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--folder", type=Path, default=None, help="where to write (default: a temp dir)")
    args = parser.parse_args(argv)
    out: dict = {"repeats": args.repeats}
    with tempfile.TemporaryDirectory(prefix="bench-atomic-", dir=args.folder) as tmp:
        for name, params in SIZES.items():
            ckpt = _checkpoint(params)
            _timed(Path(tmp) / "warm", ckpt, fsync=True)  # first-write costs, measured by neither side
            times: dict[bool, list[float]] = {True: [], False: []}
            for r in range(args.repeats):
                for fsync in ((True, False) if r % 2 == 0 else (False, True)):
                    times[fsync].append(_timed(Path(tmp) / f"{name}-{r}-{fsync}", ckpt, fsync))
            synced, plain = statistics.median(times[True]), statistics.median(times[False])
            out[name] = {"params": params, "mb": round(params * 3 * 4 / 1e6, 1),
                         "fsync_s": round(synced, 4), "no_fsync_s": round(plain, 4),
                         "fsync_over_no_fsync": round(synced / plain, 2)}
    print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
