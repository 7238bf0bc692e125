"""Load a trained adapter and predict: classify texts (or generate, for a generation adapter).

    python examples/load_and_infer.py out/reviews "what a great film" "I want my money back"

Works with a folder from `finetune_own_data.py`, `lorafleet adapter export`, or the artifacts.
"""

from __future__ import annotations

import argparse
import json

import lora_engine as le


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("adapter", help="adapter folder")
    parser.add_argument("texts", nargs="+")
    parser.add_argument("--merged", action="store_true", help="fold LoRA into the weights first (faster)")
    args = parser.parse_args()
    predictor = le.load_for_inference(args.adapter, merged=args.merged)
    if predictor.kind == "generation":
        for text, output in zip(args.texts, predictor.generate(args.texts), strict=True):
            print(json.dumps({"input": text, "output": output}))
        return
    for text, prediction in zip(args.texts, predictor.classify(args.texts), strict=True):
        print(json.dumps({"input": text, **prediction.as_dict()}))


if __name__ == "__main__":
    main()
