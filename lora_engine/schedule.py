"""The learning-rate schedule and the step budget: pure functions of integers.

Linear warm-up then linear decay, evaluated for the optimizer step `s` about to be taken
(0-based, 0 ≤ s < T, W warm-up steps):

    f(s) = (s + 1) / (W + 1)          for s < W      (rises towards 1, never 0: no wasted step)
    f(s) = (T − s) / (T − W)          for s ≥ W      (1 at s = W, 1/(T − W) on the last step)

lr_group(s) = f(s) · lr_group. Because the factor depends on the step only, the step number is the
schedule's whole state: a resumed run recomputes it instead of restoring a scheduler object.
"""

from __future__ import annotations

import math


def warmup_steps(total_steps: int, warmup_ratio: float) -> int:
    """W = ⌊ratio · T⌋, as Hugging Face's recipes round it."""
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1 (got {total_steps})")
    if not 0.0 <= warmup_ratio < 1.0:
        raise ValueError(f"warmup_ratio must be in [0, 1) (got {warmup_ratio})")
    return int(warmup_ratio * total_steps)


def lr_factor(step: int, total_steps: int, warmup: int) -> float:
    """The multiplier f(s) of the base learning rate for optimizer step `step` (see module doc)."""
    if not 0 <= step < total_steps:
        raise ValueError(f"step must be in [0, {total_steps}) (got {step})")
    if not 0 <= warmup < total_steps:
        raise ValueError(f"warmup must be in [0, {total_steps}) (got {warmup})")
    if step < warmup:
        return (step + 1) / (warmup + 1)
    return (total_steps - step) / (total_steps - warmup)


def total_optimizer_steps(batches_per_epoch: int, *, epochs: float | None, max_steps: int | None,
                          grad_accum: int) -> int:
    """T: `max_steps` when given, else ⌈epochs · batches_per_epoch / grad_accum⌉ (at least 1)."""
    if max_steps:
        return int(max_steps)
    if batches_per_epoch < 1:
        raise ValueError("the training split produced no batches")
    return max(1, math.ceil((epochs or 1.0) * batches_per_epoch / grad_accum))
