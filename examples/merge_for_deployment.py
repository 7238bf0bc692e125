"""Merge an adapter into its base model and save a plain transformers checkpoint.

    python examples/merge_for_deployment.py out/reviews deploy/reviews-merged

The result has no LoRA layers: `AutoModelForSequenceClassification.from_pretrained(DEST)` loads
it strictly, serving needs neither lora_engine nor PEFT, and it runs as fast as the base model.
The script checks that the merged model's outputs equal the adapter's before saving.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

import lora_engine as le


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("adapter", help="adapter folder")
    parser.add_argument("dest", type=Path, help="new folder for the merged model")
    args = parser.parse_args()
    predictor = le.load_for_inference(args.adapter)  # the base model with the adapter, not merged
    model, tokenizer = predictor.model, predictor.tokenizer
    merged = le.export_merged(model)  # a deep copy; `model` keeps its LoRA layers
    batch = tokenizer(["a quick check", "of the merged weights"], return_tensors="pt", padding=True)
    batch = {k: v.to(next(model.parameters()).device) for k, v in batch.items()}
    with torch.no_grad():
        gap = (model(**batch).logits - merged(**batch).logits).abs().max().item()
    if gap > 1e-4:
        raise SystemExit(f"merged outputs differ from the adapter's by {gap:.2e}; not saving")
    merged.save_pretrained(args.dest)
    tokenizer.save_pretrained(args.dest)
    print(f"saved {args.dest} (max |logit gap| {gap:.1e})")


if __name__ == "__main__":
    main()
