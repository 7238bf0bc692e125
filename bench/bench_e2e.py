"""SmolLM2-135M with LoRA on E2E NLG: the five official metrics against the untuned base model.

1. The untuned base model generates for the first `--eval-mrs` validation MRs (same prompt
   template and tokenisation as training, same decoding) and is scored with `e2e_metrics`
   (BLEU, NIST, METEOR, ROUGE-L, CIDEr) against every reference of each MR.
2. Our recipe trains LoRA for `--steps` optimizer steps (default 300, batch 8: the anchor's budget)
   with the e2e catalog defaults, then scores the same MRs the same way.

Decoding: greedy, the recipe's default; `--beams 10` for the LoRA paper's beam search (length
penalty 0.8, no-repeat-4; about 6x slower, and worse for this model). `--keep-adapter DIR` keeps
the trained adapter, `--adapter DIR` scores a kept one without training. One JSON object on stdout
(and `--out`).

    .venv/bin/python bench/bench_e2e.py --skip-base              # 300 steps, all 547 MRs (~15 min)
    .venv/bin/python bench/bench_e2e.py --skip-base --auto       # the budget `auto` picks (579 steps)
    .venv/bin/python bench/bench_e2e.py --steps 5 --eval-mrs 8   # smoke
    .venv/bin/python bench/bench_e2e.py --adapter DIR --skip-base --beams 10
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import tempfile
import time
from pathlib import Path

from benchlib import DEFAULT_DATA, parse_overrides


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--auto", action="store_true",
                   help="no budget: the `auto` rule picks steps and batch size (--steps/--batch-size unused)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--eval-mrs", type=int, default=547, help="validation MRs to score (547: all)")
    p.add_argument("--skip-base", action="store_true", help="do not score the untuned base model")
    p.add_argument("--no-meteor", action="store_true", help="skip METEOR (saves the JVM start-up)")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override the spec")
    p.add_argument("--data-dir", default=DEFAULT_DATA)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out")
    p.add_argument("--keep-adapter", metavar="DIR", help="copy the trained adapter folder here")
    p.add_argument("--adapter", metavar="DIR",
                   help="skip training: score this adapter folder (e.g. one kept by --keep-adapter)")
    p.add_argument("--beams", type=int, default=1, help="beam width (1: greedy; the paper used 10)")
    p.add_argument("--length-penalty", type=float, default=0.8,
                   help="beam length penalty (the paper's 0.8)")
    args = p.parse_args()

    import torch

    from lora_engine.catalog import TASKS
    from lora_engine.data import load_examples
    from lora_engine.device import pick_device
    from lora_engine.evaluate import evaluate_generation, generation_inputs
    from lora_engine.generate import GREEDY, PAPER_BEAM
    from lora_engine.models import load_base_model
    from lora_engine.recipe import TrainHooks, train

    torch.set_num_threads(args.threads)
    decode = GREEDY if args.beams == 1 else dataclasses.replace(PAPER_BEAM, num_beams=args.beams,
                                                                  length_penalty=args.length_penalty)
    report: dict = {"model": args.model, "steps": "auto" if args.auto else args.steps,
                    "batch_size": "auto" if args.auto else args.batch_size,
                    "eval_mrs": args.eval_mrs, "decode": decode.as_dict()}
    valid = load_examples("e2e", "validation", data_dir=args.data_dir)
    prompts, _ = generation_inputs(valid, args.eval_mrs)
    report["eval_mrs"] = len(prompts)

    if not args.skip_base:
        t0 = time.perf_counter()
        base, tok = load_base_model(args.model, "generation")
        scores, hyps = evaluate_generation(base, tok, TASKS["e2e"], valid, device=pick_device(),
                                           eval_size=args.eval_mrs, decode=decode, meteor=not args.no_meteor)
        report["base"] = {"metrics": scores, "eval_s": round(time.perf_counter() - t0, 1),
                          "samples": [{"mr": m, "output": h} for m, h in
                                      zip(prompts[:3], hyps[:3], strict=False)]}
        print(json.dumps({"base": report["base"]["metrics"]}), flush=True)
        del base

    if args.adapter:
        report["lora"] = score_adapter(Path(args.adapter), valid, args, decode)
        finish(report, args.out)
        return

    budget = {} if args.auto else {"max_steps": args.steps, "batch_size": args.batch_size}
    spec = {"task": "e2e", "base_model": args.model, **budget, "eval_size": args.eval_mrs,
            **parse_overrides(args.set)}
    losses = []

    def on_progress(pr):
        losses.append(pr.loss)
        if pr.step % 25 == 0 or pr.step == pr.total:
            print(json.dumps({"step": pr.step, "loss": round(sum(losses[-25:]) / len(losses[-25:]), 4),
                              "examples_per_s": round(pr.examples_per_s, 2)}), flush=True)

    with tempfile.TemporaryDirectory() as work:
        t0 = time.perf_counter()
        res = train(spec, Path(work) / "e2e", data_dir=args.data_dir,
                    hooks=TrainHooks(on_progress=on_progress), decode=decode, meteor=not args.no_meteor)
        meta = json.loads((res.adapter_dir / "lorafleet.json").read_text())
        from lora_engine.predict import load_for_inference

        # The folder alone (merged for speed) reproduces a generation: the inference path works.
        sample = load_for_inference(res.adapter_dir, merged=True).generate([valid[0].group], decode=decode)[0]
        if args.keep_adapter:
            shutil.copytree(res.adapter_dir, args.keep_adapter, dirs_exist_ok=True)
    s, tail = res.stats, res.losses[-25:]
    report["lora"] = {"metrics": res.metrics["validation"], "spec": meta["spec"],
                      "wall_s": round(time.perf_counter() - t0, 1), "device_s": round(s.device_s, 1),
                      "trainable_params": s.trainable_params, "adapter_bytes": s.adapter_bytes,
                      "peak_mem_mb": round(s.peak_mem_bytes / 2**20), "tokens": s.tokens,
                      "first_loss": res.losses[0], "final_loss_avg25": sum(tail) / len(tail),
                      "sample": {"mr": valid[0].group, "output": sample}}
    finish(report, args.out)


def score_adapter(folder: Path, valid, args, decode) -> dict:
    """The five metrics of a saved adapter folder (merged into the base for speed)."""
    from lora_engine.catalog import TASKS
    from lora_engine.evaluate import evaluate_generation, generation_inputs
    from lora_engine.predict import load_for_inference

    t0 = time.perf_counter()
    pred = load_for_inference(folder, merged=True)
    scores, hyps = evaluate_generation(pred.model, pred.tokenizer, TASKS["e2e"], valid, device=pred.device,
                                       eval_size=args.eval_mrs, decode=decode, meteor=not args.no_meteor)
    _, refs = generation_inputs(valid, args.eval_mrs)
    words = {"outputs": _mean_words(hyps), "references": _mean_words([r for rs in refs for r in rs])}
    return {"adapter": str(folder), "metrics": scores, "eval_s": round(time.perf_counter() - t0, 1),
            "mean_words": words,
            "samples": hyps[:5]}


def _mean_words(texts) -> float:
    return round(sum(len(t.split()) for t in texts) / max(len(texts), 1), 2)


def finish(report: dict, out: str | None) -> None:
    text = json.dumps(report, indent=2)
    print(text)
    if out:
        Path(out).write_text(text + "\n")


if __name__ == "__main__":
    main()
