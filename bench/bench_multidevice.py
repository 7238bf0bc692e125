"""One job across N devices against the same job on one: examples/s of full fine-tuning.

Both runs go through `lora_engine.multidevice.train_on_devices` (1 rank, then N), with the same
spec and the same global batch, one after the other in this process; the figure is the ratio of
their examples/s as rank 0 reports it on its last step (training only: model loading and the
final evaluation are outside it). Goal on two GPUs: >= 1.8x for full fine-tuning of
SmolLM2-135M. On a CPU the ranks share the same cores: the run checks that the path works, the
ratio says nothing about GPUs.

usage: python bench/bench_multidevice.py [--devices 2] [--base smollm2-135m] [--steps 30]
       [--batch-size 16] [--max-length 256] [--method full]
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


def examples_per_s(spec: dict, devices: int, out: Path) -> float:
    seen = []
    train_on_devices(dict(spec, devices=devices), out, data_dir=DEFAULT_DATA, devices=devices,
                     hooks=TrainHooks(on_progress=seen.append))
    return seen[-1].examples_per_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=2)
    parser.add_argument("--base", default="smollm2-135m")
    parser.add_argument("--method", default="full")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=256)
    args = parser.parse_args()
    spec = {"task": "e2e", "base_model": args.base, "method": args.method, "max_steps": args.steps,
            "batch_size": args.batch_size, "max_length": args.max_length, "eval_size": 4}
    with tempfile.TemporaryDirectory() as tmp:
        one = examples_per_s(spec, 1, Path(tmp) / "one")
        many = examples_per_s(spec, args.devices, Path(tmp) / "many")
    import torch

    print(json.dumps({"devices": args.devices, "spec": spec, "examples_per_s_1": round(one, 2),
                      f"examples_per_s_{args.devices}": round(many, 2), "ratio": round(many / one, 3),
                      "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
                      "load_avg": os.getloadavg()[0]}))


if __name__ == "__main__":
    main()
