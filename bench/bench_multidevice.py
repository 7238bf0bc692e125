"""One job across N devices against the same job on one: examples/s of full fine-tuning; with
`--sharding`, each rank's training state replicated against sharded (FSDP).

Both runs go through `lora_engine.multidevice.train_on_devices` (1 rank, then N), with the same
spec and the same global batch, one after the other in this process; the figure is the ratio of
their examples/s as rank 0 reports it on its last step (training only: model loading and the
final evaluation are outside it). Goal on two GPUs: >= 1.8x for full fine-tuning of
SmolLM2-135M. On a CPU the ranks share the same cores: the run checks that the path works, the
ratio says nothing about GPUs.

`--sharding`: the same spec on N ranks twice, `sharding: replicate` then `fsdp`; the figure is
rank 0's resident training state (its part of every weight, a gradient of each trainable one,
AdamW's moments: RunStats.state_bytes, measured from the tensors it holds) and the ratio
fsdp / replicate (goal: about 1/N). Examples/s of both come along (on a CPU: not a speed figure).

usage: python bench/bench_multidevice.py [--devices 2] [--base smollm2-135m] [--steps 30]
       [--batch-size 16] [--max-length 256] [--method full] [--task e2e] [--sharding]
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

from benchlib import DEFAULT_DATA

from lora_engine.multidevice import train_on_devices
from lora_engine.recipe import TrainHooks


def run(spec: dict, devices: int, out: Path) -> tuple[float, object]:
    """(examples/s at the last step, the run's stats)."""
    seen = []
    result = train_on_devices(dict(spec, devices=devices), out, data_dir=DEFAULT_DATA, devices=devices,
                              hooks=TrainHooks(on_progress=seen.append))
    return seen[-1].examples_per_s, result.stats


def compare_sharding(spec: dict, devices: int, tmp: Path) -> dict:
    rates, states = {}, {}
    for sharding in ("replicate", "fsdp"):
        rate, stats = run(dict(spec, sharding=sharding), devices, tmp / sharding)
        assert stats.sharding == sharding, stats.sharding
        rates[sharding], states[sharding] = round(rate, 2), stats.state_bytes
    return {"state_mib_per_rank": {k: round(v / 2**20, 1) for k, v in states.items()},
            "state_ratio_fsdp_to_replicate": round(states["fsdp"] / states["replicate"], 4),
            "examples_per_s": rates}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=2)
    parser.add_argument("--base", default="smollm2-135m")
    parser.add_argument("--method", default="full")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--task", default="e2e")
    parser.add_argument("--sharding", action="store_true", help="replicated against sharded: memory per rank")
    args = parser.parse_args()
    spec = {"task": args.task, "base_model": args.base, "method": args.method, "max_steps": args.steps,
            "batch_size": args.batch_size, "max_length": args.max_length, "eval_size": 4}
    import torch

    figures: dict = {"devices": args.devices, "spec": spec}
    with tempfile.TemporaryDirectory() as tmp:
        if args.sharding:
            figures.update(compare_sharding(spec, args.devices, Path(tmp)))
        else:
            one, _ = run(spec, 1, Path(tmp) / "one")
            many, _ = run(spec, args.devices, Path(tmp) / "many")
            figures.update({"examples_per_s_1": round(one, 2), "ratio": round(many / one, 3),
                            f"examples_per_s_{args.devices}": round(many, 2)})
    figures.update(device=torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
                   load_avg=os.getloadavg()[0])
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
