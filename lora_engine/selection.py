"""Evaluation during training: the held-out slice, the metric history, early stopping, the best.

The recipe scores a slice of the training rows (held out of training, the same slice every time:
a permutation drawn from the seed) every `eval_every` optimizer steps and at the last step. Each
score of the task's primary metric (higher is better for every task here: MCC, accuracy,
Pearson) is appended to the history; an evaluation improves on the best when it beats it by
more than `min_delta`, and then the trainable weights are copied aside. After `patience`
evaluations in a row without improvement the run stops early. The adapter written at the end
holds the best evaluation's weights, not the last step's.

All of it (history, best score and step, the copied weights, the count of evaluations without
improvement) goes into each checkpoint, so a resumed run selects exactly as an uninterrupted one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from lora_engine.multidevice.local import local_view

HOLDOUT_STREAM = 104_729  # a fixed second seed word: the slice does not move with other draws


def split_holdout(examples: Sequence, rows: int, seed: int) -> tuple[list, list]:
    """(training rows, held-out rows): `rows` rows drawn by a permutation of `seed`, the rest kept
    in their order. `rows` 0 holds nothing out."""
    if rows <= 0:
        return list(examples), []
    if rows >= len(examples):
        raise ValueError(f"eval_holdout {rows} leaves no training rows (the split has {len(examples)})")
    order = np.random.Generator(np.random.PCG64([seed, HOLDOUT_STREAM])).permutation(len(examples))
    held = set(order[:rows].tolist())
    return ([ex for i, ex in enumerate(examples) if i not in held],
            [examples[i] for i in sorted(held)])


@dataclass(frozen=True)
class EvalPoint:
    """One evaluation during training: after optimizer step `step` (`epoch` epochs in)."""

    step: int
    epoch: float
    score: float  # the primary metric
    metrics: dict[str, float]  # every metric of the task on the held-out rows


@dataclass
class Selection:
    primary: str
    patience: int
    min_delta: float
    history: list[EvalPoint] = field(default_factory=list)
    best_step: int | None = None
    best_score: float = -math.inf
    best_state: dict[str, torch.Tensor] | None = None
    bad_evals: int = 0
    stopped_early: bool = False

    def record(self, point: EvalPoint, trainable: dict[str, torch.nn.Parameter], *,
               final: bool = False) -> bool:
        """Add an evaluation; keep the weights if it is the best. True when it improved.

        `final`: the evaluation after the run's last step. Patience running out there stops
        nothing (the run ends anyway), so it is not an early stop.
        """
        self.history.append(point)
        improved = point.score > self.best_score + self.min_delta
        if improved:
            self.best_step, self.best_score, self.bad_evals = point.step, point.score, 0
            # This rank's shard of a sharded weight (multidevice.sharding): a run across ranks
            # keeps its best weights as it trains them; a checkpoint gathers them whole.
            self.best_state = {n: local_view(p.detach()).to("cpu", copy=True) for n, p in trainable.items()}
        else:
            self.bad_evals += 1
            self.stopped_early = not final and self.patience > 0 and self.bad_evals >= self.patience
        return improved

    def restore_best(self, trainable: dict[str, torch.nn.Parameter]) -> None:
        """Put the best evaluation's weights back into the model (no-op before any evaluation)."""
        if self.best_state is None:
            return
        with torch.no_grad():
            for name, p in trainable.items():
                local_view(p).copy_(self.best_state[name].to(p.device, p.dtype))

    def summary(self) -> dict[str, float]:
        """The "selection" metrics a job records: best score, its step, how many evaluations."""
        out = {"best_step": float(self.best_step or 0), "evaluations": float(len(self.history)),
               "stopped_early": float(self.stopped_early)}
        if self.best_step is not None:
            out[self.primary] = self.best_score
        return out

    # --- checkpoints ------------------------------------------------------------------------------

    def to_meta(self) -> dict[str, Any]:
        return {"history": [asdict(p) for p in self.history], "best_step": self.best_step,
                "best_score": self.best_score if self.best_step is not None else None,
                "bad_evals": self.bad_evals, "stopped_early": self.stopped_early}

    def tensors(self) -> dict[str, torch.Tensor]:
        return {f"best/{n}": t for n, t in (self.best_state or {}).items()}

    def load(self, meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        self.history = [EvalPoint(**p) for p in meta["history"]]
        self.best_step = meta["best_step"]
        self.best_score = meta["best_score"] if meta["best_score"] is not None else -math.inf
        self.bad_evals, self.stopped_early = int(meta["bad_evals"]), bool(meta["stopped_early"])
        best = {k[len("best/"):]: t for k, t in tensors.items() if k.startswith("best/")}
        self.best_state = best or None
