"""QLoRA on a CUDA device: a few `quantize: nf4` steps on SmolLM2-135M, their peak memory against
lorafleet's LoRA on the same base in full precision (its default: the weights as loaded, fp32,
computing under bf16 autocast), measured here side by side.

Each variant is one `lora_engine.recipe.train` run (E2E, LoRA r=8 on every linear layer, batch 8,
256 tokens, `--steps` optimizer steps, 4 validation rows) in a fresh subprocess, so CUDA's
`max_memory_allocated` is that run's alone. Printed: per variant the peak memory, the memory once
the model was loaded (peak minus activations), the mean step time and the step losses; then the
nf4/full ratios. A check that the path runs and saves memory on a real GPU, not a quality run:
the losses should fall and stay close between the two.

Not run by the test suite (it needs CUDA; `tests/unit/test_qlora.py` runs bitsandbytes' CPU path).

usage: python bench/check_qlora_cuda.py [--steps 8]
Needs HF_HUB_OFFLINE=1, LORAFLEET_DATA_DIR (the shared data folder) and bitsandbytes
(`pip install 'lorafleet[qlora]'`). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

VARIANTS = {"full": None, "nf4": "nf4"}


def _spec(quantize: str | None, steps: int) -> dict:
    spec = {"task": "e2e", "base_model": "smollm2-135m", "method": "lora", "rank": 8,
            "targets": ["all-linear"], "max_steps": steps, "batch_size": 8, "max_length": 256,
            "eval_size": 4, "seed": 7}
    return dict(spec, quantize=quantize) if quantize else spec


def run_variant(name: str, steps: int) -> dict:
    """One run in this process (the subprocess side)."""
    from lora_engine.recipe import train

    data_dir = os.environ.get("LORAFLEET_DATA_DIR", str(ROOT.parent / "shared" / "data"))
    with tempfile.TemporaryDirectory(prefix="qlora-check-") as out:
        res = train(_spec(VARIANTS[name], steps), Path(out) / "adapter", data_dir=data_dir, meteor=False)
    s = res.stats
    activations = s.activation_mem_bytes or 0
    return {"variant": name, "device": s.device, "peak_mib": s.peak_mem_bytes / 2**20,
            "loaded_mib": (s.peak_mem_bytes - activations) / 2**20, "activation_mib": activations / 2**20,
            "step_s": s.step_s, "losses": [round(x, 4) for x in res.losses]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--variant", choices=sorted(VARIANTS), help=argparse.SUPPRESS)  # the subprocess
    args = ap.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args.variant, args.steps)))
        return
    import torch

    if not torch.cuda.is_available():
        sys.exit("check_qlora_cuda: no CUDA device here; this check is for a GPU machine")
    rows = {}
    for name in VARIANTS:
        done = subprocess.run([sys.executable, __file__, "--variant", name, "--steps", str(args.steps)],
                              capture_output=True, text=True, check=True)
        rows[name] = json.loads(done.stdout.strip().splitlines()[-1])
    full, nf4 = rows["full"], rows["nf4"]
    print(json.dumps({
        "runs": rows,
        "peak_ratio_nf4_over_full": nf4["peak_mib"] / full["peak_mib"],
        "loaded_ratio_nf4_over_full": nf4["loaded_mib"] / full["loaded_mib"],
        "step_time_ratio_nf4_over_full": (nf4["step_s"] / full["step_s"]
                                          if nf4["step_s"] and full["step_s"] else None),
    }, indent=2))


if __name__ == "__main__":
    main()
