"""The E2E anchor recipe run with Hugging Face PEFT here, scored exactly as `bench_e2e.py` scores ours.

The issue's anchor: PEFT LoRA r=4 on q_proj+v_proj of SmolLM2-135M, lr 2e-4, batch 8, loss on the
reference only, 300 steps. Written as the plain loop of `../shared/reference/peft_textbook_glue.py`
(AdamW with weight decay 0.01, linear schedule with 6% warm-up, shuffled rows, the model's own
forward and loss), on our E2E rows (MR and reference tokenised apart, labels -100 on the MR and on
padding). Then greedy decoding of every validation MR and the five metrics with `e2e_metrics`, as
`bench/bench_e2e.py --greedy` does for our recipe, so the two can be compared number for number.

    .venv/bin/python bench/e2e_anchor_peft.py --out anchor.json      # ~25 min on 2 cores
    .venv/bin/python bench/e2e_anchor_peft.py --steps 3 --eval-mrs 4  # smoke
"""

from __future__ import annotations

import argparse
import json
import random
import time

from benchlib import DEFAULT_DATA


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--eval-mrs", type=int, default=547)
    p.add_argument("--data-dir", default=DEFAULT_DATA)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out")
    args = p.parse_args()

    import torch
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import get_linear_schedule_with_warmup

    from lora_engine.catalog import TASKS
    from lora_engine.data import load_examples
    from lora_engine.data.batching import collate, encode_generation
    from lora_engine.device import pick_device
    from lora_engine.evaluate import evaluate_generation
    from lora_engine.generate import GREEDY
    from lora_engine.models import load_base_model

    torch.set_num_threads(args.threads)
    random.seed(42)
    torch.manual_seed(42)
    model, tok = load_base_model("smollm2-135m", "generation")
    model = get_peft_model(model, LoraConfig(task_type=TaskType.CAUSAL_LM, r=4, lora_alpha=8,
                                             target_modules=["q_proj", "v_proj"]))
    encoded = encode_generation(load_examples("e2e", "train", data_dir=args.data_dir), tok, 128)
    params = [q for q in model.parameters() if q.requires_grad]
    opt = torch.optim.AdamW(params, lr=2e-4, weight_decay=0.01)
    sched = get_linear_schedule_with_warmup(opt, int(0.06 * args.steps), args.steps)
    order = list(range(len(encoded)))
    random.shuffle(order)
    model.train()
    losses, t0 = [], time.perf_counter()
    for step in range(args.steps):
        batch = collate(encoded, order[step * args.batch_size:(step + 1) * args.batch_size])
        loss = model(**batch.inputs).loss
        loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad()
        losses.append(loss.item())
        if (step + 1) % 25 == 0:
            print(json.dumps({"step": step + 1, "loss": round(sum(losses[-25:]) / 25, 4)}), flush=True)
    train_s = time.perf_counter() - t0
    valid = load_examples("e2e", "validation", data_dir=args.data_dir)
    t1 = time.perf_counter()
    scores, hyps = evaluate_generation(model, tok, TASKS["e2e"], valid, device=pick_device(),
                                       eval_size=args.eval_mrs, decode=GREEDY)
    tail = losses[-25:]
    report = {"recipe": "PEFT LoRA r=4 alpha 8 q_proj+v_proj, lr 2e-4, batch 8, loss on the reference only",
              "steps": args.steps, "train_s": round(train_s, 1), "eval_s": round(time.perf_counter() - t1, 1),
              "final_loss_avg25": sum(tail) / len(tail), "eval_mrs": args.eval_mrs,
              "decode": GREEDY.as_dict(), "metrics": scores, "samples": hyps[:3]}
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as fh:
            fh.write(text + "\n")


if __name__ == "__main__":
    main()
