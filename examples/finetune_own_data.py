"""Fine-tune a classifier on your own data with the engine alone (no registry, no worker).

Your data: one JSON object a line, `{"text": ..., "label": ...}` (labels may be names or ints);
a sibling `<name>.validation.jsonl` is the validation split, else a fixed hold-out is scored.

    python examples/finetune_own_data.py reviews.jsonl out/reviews --base-model minilm-l6
    python examples/finetune_own_data.py --demo out/demo --base-model tiny-bert --max-steps 10

Prints the validation metrics and the adapter folder (PEFT format: `PeftModel.from_pretrained`
loads it too).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import lora_engine as le

DEMO_ROWS = [("a delightful, moving film", "positive"), ("dull and far too long", "negative"),
             ("I loved every minute", "positive"), ("a waste of a good cast", "negative")] * 8


def demo_data(folder: Path) -> Path:
    path = folder / "demo.jsonl"
    path.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in DEMO_ROWS))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", nargs="?", type=Path, help="your JSONL file (omit with --demo)")
    parser.add_argument("out", type=Path, help="folder for the adapter")
    parser.add_argument("--demo", action="store_true", help="train on a tiny built-in data set")
    parser.add_argument("--base-model", default="minilm-l6")
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--max-steps", type=int)
    parser.add_argument("--epochs", type=float)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        data = demo_data(Path(scratch)) if args.demo else args.data
        if data is None:
            parser.error("give a JSONL file or --demo")
        spec = {"task": "custom-classification", "dataset": str(data), "base_model": args.base_model,
                "rank": args.rank, "max_steps": args.max_steps, "epochs": args.epochs, "batch_size": 8}
        result = le.train({k: v for k, v in spec.items() if v is not None}, args.out, data_dir=scratch)
    print(json.dumps({"adapter": str(result.adapter_dir), "metrics": result.metrics,
                      "final_loss": result.losses[-1] if result.losses else None}, indent=2))


if __name__ == "__main__":
    main()
