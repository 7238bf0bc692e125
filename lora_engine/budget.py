"""The `auto` budget: epochs, batch size, evaluation cadence and the held-out slice, from the data.

A pure function of (training rows, task kind, method); no torch, no files. A tenant who gives no
budget gets one sized to the data set, as OpenAI's fine-tuning API picks "auto" epochs:

- batch size: 16 below `SMALL_SET` rows (a small set needs more, noisier updates), else 32;
  generation 8 (long rows; the measured E2E recipe is 300 steps of 8).
- epochs: as many as reach `TARGET_EXAMPLES` examples seen, rounded to a whole epoch and clamped to
  [1, `MAX_EPOCHS`]: a 2,240-row set trains 6 epochs, a 9,000-row set 1.
- a cap on total optimizer steps (`MAX_STEPS`): a large set trains a fraction of an epoch rather
  than hours (epochs = MAX_STEPS / steps-per-epoch, 2 decimals, rounded down).
- with an automatic budget, evaluation during training is on for classification and regression:
  once per epoch, or every ceil(steps / `MIN_EVALS`) steps when the run is short (at least
  `MIN_EVALS` evaluations counting the one after the final step, and none a few steps before it), on
  a held-out slice of the training rows (10%, within [`MIN_HOLDOUT`, `MAX_HOLDOUT`]); early stopping
  after `PATIENCE` evaluations without improvement. The slice comes from the training file, not the
  validation split, so the validation score that is reported is not the one the checkpoint was
  picked on. A generation task is not scored during training (decoding costs more than training).

An explicit budget (`epochs` or `max_steps`) is followed exactly: no evaluation during training
unless `eval_every` asks for it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from lora_engine.catalog import POOLINGS

SMALL_SET = 4000
# ~12k examples: by the one-epoch GLUE timings in bench/RESULTS.md (seconds per row, per task) the
# 8-task LoRA sweep on MiniLM-L6 then takes about 57 minutes on 2 CPU cores before early stopping
# (an estimate; RTE's 6 long-pair epochs are a third of it).
TARGET_EXAMPLES = {"classification": 12_000, "regression": 12_000, "generation": 2_400}
MAX_EPOCHS = 10
MAX_STEPS = {"classification": 2_000, "regression": 2_000, "generation": 600}
MIN_EVALS = 4
PATIENCE = 3
HOLDOUT_FRACTION = 0.1
MIN_HOLDOUT, MAX_HOLDOUT = 32, 500
MIN_TRAIN_FOR_HOLDOUT = 64  # below this every row is needed for training: no held-out slice


@dataclass(frozen=True)
class Budget:
    """The concrete values `auto` stands for. `epochs` None: the caller gave `max_steps`."""

    batch_size: int
    epochs: float | None
    eval_every: int  # optimizer steps between evaluations; 0: none during training
    eval_holdout: int  # training rows held out for those evaluations
    patience: int  # evaluations without improvement before stopping; 0: never early


def auto_batch_size(train_rows: int, kind: str) -> int:
    if kind == "generation":
        return 8
    return 16 if train_rows < SMALL_SET else 32


def holdout_rows(train_rows: int) -> int:
    if train_rows < MIN_TRAIN_FOR_HOLDOUT:
        return 0
    return min(MAX_HOLDOUT, max(MIN_HOLDOUT, round(HOLDOUT_FRACTION * train_rows)))


def auto_epochs(train_rows: int, batch_size: int, kind: str, grad_accum: int = 1) -> float:
    """Whole epochs up to the example target, clamped; a fraction when the step cap binds."""
    epochs = min(MAX_EPOCHS, max(1, round(TARGET_EXAMPLES[kind] / train_rows)))
    steps_per_epoch = math.ceil(math.ceil(train_rows / batch_size) / grad_accum)
    cap = MAX_STEPS[kind]
    if epochs * steps_per_epoch > cap:
        return max(0.01, math.floor(100 * cap / steps_per_epoch) / 100)
    return float(epochs)


def resolve_budget(*, train_rows: int, kind: str, batch_size: int | None, epochs: float | None,
                   max_steps: int | None, grad_accum: int = 1, eval_every: int | None = None,
                   eval_holdout: int | None = None, patience: int | None = None) -> Budget:
    """Fill each `None` (= auto) from the rule; given values are kept as they are."""
    if train_rows < 1:
        raise ValueError(f"train_rows must be >= 1 (got {train_rows})")
    auto_budget = epochs is None and max_steps is None
    scored = kind != "generation"
    if eval_every is None:
        eval_every = -1 if (auto_budget and scored) else 0  # -1: per epoch, worked out below
    holdout = eval_holdout if eval_holdout is not None else (holdout_rows(train_rows) if eval_every else 0)
    if eval_every and holdout == 0:
        eval_every = 0  # too little data to hold any out: the automatic evaluation is skipped
    trained_rows = train_rows - holdout
    bs = batch_size if batch_size is not None else auto_batch_size(trained_rows, kind)
    if auto_budget:
        epochs = auto_epochs(trained_rows, bs, kind, grad_accum)
    if eval_every < 0:
        steps_per_epoch = math.ceil(math.ceil(trained_rows / bs) / grad_accum)
        total = math.ceil(epochs * steps_per_epoch)
        eval_every = max(1, min(steps_per_epoch, math.ceil(total / MIN_EVALS)))
    if patience is None:
        patience = PATIENCE if eval_every else 0
    return Budget(batch_size=bs, epochs=epochs, eval_every=eval_every, eval_holdout=holdout,
                  patience=patience)


def describe(spec: dict) -> str:
    """One line for people: the budget a stored (resolved) spec runs with."""
    def num(x) -> str:
        return f"{x:g}" if isinstance(x, int | float) else str(x)

    steps = spec.get("max_steps")
    size = f"{steps} steps" if steps else f"{num(spec.get('epochs', 'auto'))} epochs"
    parts = [size, f"batch {num(spec.get('batch_size', 'auto'))}", f"lr {num(spec.get('lr', 'auto'))}"]
    if spec.get("head_lr") is not None:
        parts.append(f"head lr {num(spec['head_lr'])}")
    every = spec.get("eval_every")
    if every:
        stop = f", stop after {spec.get('patience')} without gain" if spec.get("patience") else ""
        parts.append(f"eval every {every} steps on {spec.get('eval_holdout')} held-out rows, best kept{stop}")
    elif every is None:
        parts.append("evaluation: auto")
    if spec.get("pooling") in POOLINGS:  # a classifier's head input; "auto" is not resolved yet
        parts.append(f"{spec['pooling']} pooling")
    return " · ".join(parts)
