"""Merge an adapter into its base model and save a plain transformers checkpoint.

    python examples/merge_for_deployment.py out/reviews deploy/reviews-merged

The result has no LoRA layers: `AutoModelForSequenceClassification.from_pretrained(DEST,
trust_remote_code=True)` loads it (a mean-pooled classifier's pooling ships in DEST as a small
module), serving needs neither lora_engine nor PEFT, and it runs as fast as the base model.
`lorafleet adapter export ADAPTER_ID DEST --merged` does the same for a registered adapter. The
script checks that the merged model's outputs equal the adapter's.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

import lora_engine as le
from lora_engine.forward import classification_logits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("adapter", help="adapter folder (a classifier)")
    parser.add_argument("dest", type=Path, help="new folder for the merged model")
    args = parser.parse_args()
    le.write_merged_folder(args.adapter, args.dest)

    from transformers import AutoModelForSequenceClassification

    predictor = le.load_for_inference(args.adapter)  # the base model with the adapter, not merged
    merged = AutoModelForSequenceClassification.from_pretrained(args.dest, trust_remote_code=True).eval()
    batch = dict(predictor.tokenizer(["a quick check", "of the merged weights"], return_tensors="pt",
                                     padding=True))
    with torch.no_grad():  # lorafleet's logits (pooled as the head was trained) against the folder's
        gap = (classification_logits(predictor.model, batch) - merged(**batch).logits).abs().max().item()
    if gap > 1e-4:
        raise SystemExit(f"merged outputs differ from the adapter's by {gap:.2e}")
    print(f"saved {args.dest} (max |logit gap| {gap:.1e})")


if __name__ == "__main__":
    main()
