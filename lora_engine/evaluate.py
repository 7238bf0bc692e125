"""Pure evaluation: a model and a split in, metrics out. No gradients, no side effects on weights.

- GLUE: the task's official metrics (`glue_metrics`) on the validation split (first `eval_size`
  rows when given). Classification predicts argmax of the logits; STS-B (regression) the single
  logit as the similarity.
- Custom classification: accuracy and macro-F1.
- E2E: one output per distinct MR (the first `eval_size` MRs when given), decoded greedily by
  default, scored by `e2e_metrics` against ALL references of that MR, as the official E2E scorer
  does. Greedy is the default because it measured better than the LoRA paper's beam search (10
  beams, length penalty 0.8) on every metric for SmolLM2 after 300 steps (CIDEr 2.13 vs 1.79 on
  the 547 validation MRs), at a sixth of the time; pass `decode=PAPER_BEAM` for the paper's.
  Custom generation: BLEU and ROUGE-L, grouping by prompt.

Prompts are tokenised by `encode_prompts`, the very function training used for the prompt half of
each row, so generation continues from the boundary the model was trained on.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lora_engine.catalog import GLUE_TASKS, TASKS, TaskInfo
from lora_engine.data import GenerationExample, e2e_references
from lora_engine.data.batching import collate, encode_classification, encode_prompts, sorted_batches
from lora_engine.device import DeviceInfo, autocast
from lora_engine.forward import classification_logits
from lora_engine.generate import GREEDY, DecodeSettings, generate_texts
from lora_engine.metrics import classification_metrics, e2e_metrics, generation_metrics, glue_metrics


@torch.no_grad()
def predict_logits(model, encoded, *, device: DeviceInfo, batch_size: int = 64) -> np.ndarray:
    """Logits (rows × labels, float32) for every row of an encoded classification split, in order."""
    was_training = model.training
    model.eval()
    out: np.ndarray | None = None
    try:
        for indices in sorted_batches(encoded.lengths, batch_size):
            batch = collate(encoded, indices)
            inputs = {k: v.to(device.device) for k, v in batch.inputs.items() if k != "labels"}
            with autocast(device):
                logits = classification_logits(model, inputs).float().cpu().numpy()
            if out is None:
                out = np.zeros((len(encoded), logits.shape[-1]), dtype=np.float32)
            out[batch.indices] = logits
    finally:
        model.train(was_training)
    return out if out is not None else np.zeros((0, 0), dtype=np.float32)


def logits_to_predictions(logits: np.ndarray, kind: str) -> list:
    """argmax class ids, or the single logit as the value for regression."""
    if kind == "regression":
        return logits[:, 0].astype(float).tolist()
    return logits.argmax(-1).astype(int).tolist()


def evaluate_classification(model, tokenizer, info: TaskInfo, examples: Sequence, *, max_length: int,
                            device: DeviceInfo, batch_size: int = 64) -> dict[str, float]:
    encoded = encode_classification(examples, tokenizer, max_length)
    preds = logits_to_predictions(predict_logits(model, encoded, device=device, batch_size=batch_size),
                                  info.kind)
    labels = [ex.label for ex in examples]
    if info.name in GLUE_TASKS:
        return glue_metrics(info.name, preds, labels)
    return classification_metrics(preds, labels)


def generation_inputs(examples: Sequence[GenerationExample], eval_size: int | None
                      ) -> tuple[list[str], list[list[str]]]:
    """(distinct prompts, their references), the first `eval_size` prompts when given."""
    prompts, refs = e2e_references(list(examples))
    if eval_size is not None:
        prompts, refs = prompts[:eval_size], refs[:eval_size]
    return prompts, refs


def evaluate_generation(model, tokenizer, info: TaskInfo, examples: Sequence[GenerationExample], *,
                        device: DeviceInfo, eval_size: int | None = None,
                        decode: DecodeSettings = GREEDY, meteor: bool = True
                        ) -> tuple[dict[str, float], list[str]]:
    """(metrics, generated texts) for the distinct prompts of `examples`."""
    prompts, refs = generation_inputs(examples, eval_size)
    hyps = generate_texts(model, encode_prompts(tokenizer, prompts), tokenizer=tokenizer, device=device,
                          settings=decode)
    if info.name == "e2e":
        return e2e_metrics(hyps, refs, meteor=meteor), hyps
    return generation_metrics(hyps, refs), hyps


# --- one task's validation split, whatever model is scored on it ------------------------------------


@dataclass(frozen=True)
class EvalStats:
    """What an evaluation-only run used; field names as `recipe.RunStats` so usage is recorded
    the same way. `examples` / `tokens` count what was trained: none."""

    wall_s: float
    device_s: float
    device: str
    peak_mem_bytes: int
    scored: int  # validation rows read (all adapters together for a re-evaluation)
    examples: int = 0
    tokens: int = 0


@dataclass(frozen=True)
class EvalResult:
    metrics: dict[str, dict[str, float]]  # {"validation": {name: value}}
    stats: EvalStats


@dataclass(frozen=True)
class EvalTarget:
    """What a model is scored on: the task's validation split, as a job would have scored it
    (its max length; the first `eval_size` rows / prompts; a custom task's dataset file)."""

    task: str
    max_length: int
    eval_size: int | None = None
    dataset: str | None = None

    @property
    def info(self) -> TaskInfo:
        return TASKS[self.task]


def validation_examples(target: EvalTarget, *, data_dir: str | Path) -> list:
    from lora_engine.data import load_examples

    # Generation scores the first `eval_size` distinct prompts (see generation_inputs), not rows.
    limit = None if target.info.is_generation else target.eval_size
    return load_examples(target.task, "validation", data_dir=data_dir, dataset=target.dataset, limit=limit)


def score_validation(model, tokenizer, target: EvalTarget, examples: Sequence, *, device: DeviceInfo,
                     decode: DecodeSettings = GREEDY, meteor: bool = True) -> dict[str, dict[str, float]]:
    """{"validation": metrics} of `model` on `examples` (from `validation_examples`). Pure."""
    info = target.info
    if info.is_generation:
        scores, _ = evaluate_generation(model, tokenizer, info, examples, device=device,
                                        eval_size=target.eval_size, decode=decode, meteor=meteor)
    else:
        scores = evaluate_classification(model, tokenizer, info, examples, max_length=target.max_length,
                                         device=device)
    # A metric that was not computed (METEOR switched off: NaN) is left out, not stored as NaN.
    return {"validation": {k: float(v) for k, v in scores.items() if math.isfinite(v)}}


def majority_class_rate(examples: Sequence) -> float:
    """The share of the most frequent label: the accuracy of always answering it (a reference for
    an untuned classifier, computed from the very rows it is scored on)."""
    if not examples:
        raise ValueError("no examples to count labels in")
    return Counter(ex.label for ex in examples).most_common(1)[0][1] / len(examples)
