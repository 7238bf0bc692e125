"""Data parallel training across ranks of one process group: what each rank trains and how their
gradients become one update.

Every rank holds the whole model and draws the same global batches (same sampler, same seed);
rank r trains the r-th contiguous slice of each. With the loss of a slice of n_r of the batch's
N loss terms (rows, or completion tokens for generation) scaled by its share `n_r · W / N`,
the average of the W ranks' gradients is

    (1/W) Σ_r (n_r · W / N) · ∇ mean_r(loss) = (1/N) Σ_i ∇ loss_i,

the gradient of the global batch's mean loss: one device training the whole batch computes the
same update (equal slices make every share 1, as in DDP). One all-reduce per optimizer step
carries every gradient and the step's loss (LoRA's gradients are small; what DDP's bucketed
overlap buys is not worth its wrapper here), so every rank applies the same update and sees the
same loss: divergence, evaluation and early stopping decide alike on every rank.

Every rank holds whole tensors here ("replicate"), so what a checkpoint or the adapter needs is
at hand (`gathered`, `placed` and `model_state` change nothing); `sharding.FullySharded` is the
same step over a sharded model, whose tensors those gather and lay out again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import torch
import torch.distributed as dist
from torch import nn

from lora_engine.data.batching import IGNORE_INDEX, Batch, collate


def slice_bounds(n: int, rank: int, world: int) -> tuple[int, int]:
    """[start, end) of rank `rank`'s contiguous slice of n rows (sizes differ by at most one)."""
    base, extra = divmod(n, world)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def loss_terms(encoded, indices: Sequence[int]) -> int:
    """Loss terms of rows `indices`: one per row, or the completion tokens of generation rows."""
    if encoded.kind != "generation":
        return len(indices)
    return sum(sum(1 for t in encoded.labels[i] if t != IGNORE_INDEX) for i in indices)


@dataclass(frozen=True)
class DataParallel:
    rank: int
    world: int
    device: torch.device

    sharding: ClassVar[str] = "replicate"

    @property
    def writes(self) -> bool:
        """Rank 0 alone writes checkpoints and the adapter."""
        return self.rank == 0

    def shard(self, encoded, indices: Sequence[int]) -> Batch:
        """This rank's slice of the global batch `indices`, with its loss share and the global
        batch's example and token counts (what the run's totals count, on every rank alike).

        A batch with fewer rows than ranks leaves some ranks without one: such a rank trains the
        batch's first row with share 0 (its gradient is zero; every rank still takes part in the
        step's all-reduce)."""
        indices = [int(i) for i in indices]
        start, end = slice_bounds(len(indices), self.rank, self.world)
        mine = indices[start:end]
        total = loss_terms(encoded, indices)
        local = collate(encoded, mine or indices[:1])
        share = loss_terms(encoded, mine) * self.world / total if mine and total else 0.0
        tokens = sum(len(encoded.input_ids[i]) for i in indices)
        return replace(local, examples=len(indices), tokens=tokens, share=share)

    def sync_step(self, params: Sequence[nn.Parameter], step_loss: torch.Tensor) -> torch.Tensor:
        """Average the ranks' accumulated gradients (in place) and step losses (this rank's a
        0-d tensor); the mean loss, a 0-d tensor on the device."""
        grads = [p.grad.reshape(-1).float() if p.grad is not None
                 else torch.zeros(p.numel(), device=p.device) for p in params]
        flat = torch.cat([*grads, step_loss.reshape(1).to(self.device, torch.float32)])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat /= self.world
        offset = 0
        for p in params:
            chunk = flat[offset:offset + p.numel()].view_as(p)
            if p.grad is None:
                p.grad = chunk.to(p.dtype).clone()
            else:
                p.grad.copy_(chunk)
            offset += p.numel()
        return flat[-1]

    def agree(self, flag: bool) -> bool:
        """Rank 0's `flag` on every rank (a stop request: every rank stops at the same step)."""
        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        dist.broadcast(t, src=0)
        return bool(t.item())

    def align(self, tensors: Sequence[torch.Tensor]) -> None:
        """Rank 0's values of `tensors` on every rank (the trainable weights, once before training:
        seeded alike they already agree; this makes sure of it, as DDP does)."""
        with torch.no_grad():
            for t in tensors:
                dist.broadcast(t.data, src=0)

    def clip(self, params: Sequence[nn.Parameter], max_norm: float) -> torch.Tensor:
        """Clip the (averaged, identical on every rank) gradient to `max_norm`; its norm before."""
        return torch.nn.utils.clip_grad_norm_(params, max_norm)

    def gathered(self, tensors: dict[str, torch.Tensor], like: dict[str, torch.Tensor] | None = None
                 ) -> dict[str, torch.Tensor]:
        """The tensors as a checkpoint holds them: whole already."""
        return tensors

    def placed(self, whole: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """A checkpoint's tensor as `like` holds it: whole, on its device, in its dtype."""
        return whole.to(like.device, like.dtype)

    def gathered_optimizer(self, state: dict[str, Any]) -> dict[str, Any]:
        return state

    def placed_optimizer(self, state: dict[str, Any], params: Sequence[nn.Parameter]) -> dict[str, Any]:
        return state

    def model_state(self, model: nn.Module, names: set[str] | None = None) -> dict[str, torch.Tensor] | None:
        """The model's tensors to write, when not the model's own (None: they are)."""
        return None
