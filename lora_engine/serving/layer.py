"""One resident base linear layer serving many adapters: each batch row through its own adapter.

    y[rows of adapter k] = adapter_k.update(x[rows of adapter k], W0·x[rows of adapter k] + b)

The serving twin of the packed trainer's `MultiLoRALinear` (packed/layer.py), with the same
routing (`packed.routing.Routing`: the rows of one adapter are one contiguous range) and the same
single place for the LoRA / DoRA math (`LoRALinear.update`). It differs where serving differs: the
base may be GPT-2's `Conv1D` as well as `nn.Linear`, inputs keep their shape (Hugging Face's
attention calls the projections on (batch, tokens, features) tensors, a decode step on one token
per row; our packed encoder on (tokens, features)), and the adapters are held outside the module
tree (a plain dict) so the model's parameters, state dict and `.to()` stay the base's alone.

Two ways through, one result (up to float rounding; tests/unit/test_serving_engine.py):

- (batch, tokens, features), generation: one batched product for every adapter at once. The
  plain-LoRA adapters' A and Bᵀ live in one slotted stack per layer (`LoRAStack`), each adapter's
  own `lora_A` / `lora_B` being views of its slot, so nothing is held twice; each batch row picks
  its slot's A and Bᵀ (one gather) and
      y = W0·x + b + s_row · (x·A_rowᵀ)·B_rowᵀ       (two bmm for the whole batch)
  Slot 0 is zeros: rows without an adapter here get W0·x + b + 0 exactly. A decode step of 32
  rows of 20 adapters was ~50 small kernels per layer (split, A, addmm per adapter, cat); it is ~6.
- (tokens, features), the packed encoder: each adapter's contiguous token range gets its update
  added in place (rows have different lengths, so a per-row product would need padding; in place,
  so no concatenation of the ranges copies the layer's output again).
DoRA adapters (their update rescales the whole output) are applied per range in both ways.

A row whose key has no adapter on this layer (the bare base, or an adapter that does not target
this layer) gets the base output alone.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lora_engine.layers import LoRALinear
from lora_engine.packed.routing import Routing

INITIAL_SLOTS = 32  # slots a layer's stack gets with its first adapter (unused ones are never written)


class LoRAStack:
    """The plain-LoRA adapters of one layer in slots: A as (slots, R, in), Bᵀ as (slots, R, out), the
    scaling as (slots,), R the largest rank held (a smaller rank's extra rows are zeros, which add
    exactly nothing). Slot 0 is the zero adapter. Freed slots are reused; a full stack doubles.
    Allocated with `empty`: a slot is written before any row reads it."""

    def __init__(self, in_features: int, out_features: int, like: torch.Tensor):
        self.in_features, self.out_features = in_features, out_features
        self.slots: dict[str, int] = {}
        self.layers: dict[str, LoRALinear] = {}  # whose tensors are views of their slots
        self.rank = 0
        self._like = like
        self.a = self.bt = self.scale = None
        self._alloc(1, 1)  # the zero slot; room for the adapters comes with the first

    def _alloc(self, capacity: int, rank: int) -> None:
        old_a, old_bt, old_scale, old_rank = self.a, self.bt, self.scale, self.rank
        factory = {"device": self._like.device, "dtype": self._like.dtype}
        self.a = torch.empty(capacity, rank, self.in_features, **factory)
        self.bt = torch.empty(capacity, rank, self.out_features, **factory)
        self.scale = torch.zeros(capacity, **factory)
        self.a[0].zero_()
        self.bt[0].zero_()
        self.rank = rank
        if old_a is not None:
            n = old_a.shape[0]
            self.scale[:n] = old_scale
            self.a[:n, :old_rank] = old_a
            self.bt[:n, :old_rank] = old_bt
            if rank > old_rank:
                self.a[:n, old_rank:].zero_()
                self.bt[:n, old_rank:].zero_()

    def add(self, key: str, layer: LoRALinear) -> None:
        """Copy the adapter into a free slot and make its own tensors views of that slot."""
        free = sorted(set(range(1, self.a.shape[0])) - set(self.slots.values()))
        if layer.r > self.rank or not free:
            # Room for INITIAL_SLOTS adapters at once: each regrowth leaves the old stack to the
            # allocator, which keeps it resident (RSS), so regrow rarely.
            capacity = self.a.shape[0] if free else max(INITIAL_SLOTS, 2 * self.a.shape[0])
            self._alloc(capacity, max(self.rank, layer.r))
            self._repoint()
            free = free or [len(self.slots) + 1]
        slot = free[0]
        with torch.no_grad():
            self.a[slot].zero_()
            self.bt[slot].zero_()
            self.a[slot, :layer.r] = layer.lora_A.weight
            self.bt[slot, :layer.r] = layer.lora_B.weight.t()
            self.scale[slot] = layer.scaling
        self.slots[key] = slot
        self._point(key, layer)

    def remove(self, key: str, layer: LoRALinear) -> None:
        """Free the slot; the departing adapter keeps copies of its tensors (the slot is reused)."""
        slot = self.slots.pop(key)
        self.scale[slot] = 0
        del self.layers[key]
        layer.lora_A.weight.data = layer.lora_A.weight.data.clone()
        layer.lora_B.weight.data = layer.lora_B.weight.data.clone()

    def _point(self, key: str, layer: LoRALinear) -> None:
        self.layers[key] = layer
        slot = self.slots[key]
        layer.lora_A.weight.data = self.a[slot, :layer.r]
        layer.lora_B.weight.data = self.bt[slot, :layer.r].t()

    def _repoint(self) -> None:
        for key, layer in self.layers.items():
            self._point(key, layer)

    def apply(self, x: torch.Tensor, y: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        """y + s·(x·Aᵀ)·Bᵀ per batch row of x (B, T, in) and y (B, T, out), row i through `slots[i]`."""
        h = torch.bmm(x, self.a.index_select(0, slots).transpose(1, 2))
        h = h * self.scale.index_select(0, slots)[:, None, None]
        return torch.baddbmm(y, h, self.bt.index_select(0, slots))


class ServedLinear(nn.Module):
    def __init__(self, base: nn.Module, routing: Routing):
        super().__init__()
        self.base = base
        self.routing = routing
        self.adapters: dict[str, LoRALinear] = {}  # not a ModuleDict: see the module docstring
        conv = type(base).__name__ == "Conv1D"
        self.in_features = base.weight.shape[0] if conv else base.weight.shape[1]
        self.out_features = base.weight.shape[-1] if conv else base.weight.shape[0]
        self.stack = LoRAStack(self.in_features, self.out_features, base.weight)
        self._layout: tuple = ()  # (key, slot) of the stacked adapters: rows' slots are cached by it

    def add(self, key: str, adapter: LoRALinear) -> None:
        if adapter.weight is not self.base.weight:
            raise ValueError("a served adapter must wrap this layer's own base weight")
        self.remove(key)
        self.adapters[key] = adapter
        if adapter.variant is None:
            self.stack.add(key, adapter)
        self._layout = tuple(sorted(self.stack.slots.items()))

    def remove(self, key: str) -> None:
        adapter = self.adapters.pop(key, None)
        if adapter is not None and key in self.stack.slots:
            self.stack.remove(key, adapter)
        self._layout = tuple(sorted(self.stack.slots.items()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        y = self.base(flat)
        if not self.adapters or not self.routing.active:
            return y.view(*shape[:-1], self.out_features)
        if x.dim() == 3:
            return self._batched(x, y.view(*shape[:-1], self.out_features))
        for (seg, ys), (_, xs) in zip(self.routing.split(y), self.routing.split(flat), strict=True):
            adapter = self.adapters.get(seg.key)
            if adapter is None:
                continue
            if adapter.variant is None:  # LoRALinear.update's addmm, written into y's own rows
                h = F.linear(xs, adapter.lora_A.weight)
                ys.addmm_(h, adapter.lora_B.weight.t(), alpha=adapter.scaling)
            else:
                ys.copy_(adapter.update(xs, ys))
        return y.view(*shape[:-1], self.out_features)

    def _batched(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        rows, width = x.shape[0], x.shape[1]
        segments = self.routing.segments(rows * width)
        out = y
        if self._layout:
            cache_key = ("slots", self._layout, rows * width)
            slots = self.routing.cache.get(cache_key)
            if slots is None:
                per_row = [self.stack.slots.get(s.key, 0) for s in segments
                           for _ in range((s.end - s.start) // width)]
                slots = self.routing.cache[cache_key] = torch.tensor(per_row, device=x.device)
            out = self.stack.apply(x, y, slots)
        for seg in segments:
            adapter = self.adapters.get(seg.key)
            if adapter is not None and adapter.variant is not None:
                lo, hi = seg.start // width, seg.end // width
                out[lo:hi] = adapter.update(x[lo:hi], y[lo:hi])
        return out

    def extra_repr(self) -> str:
        return f"adapters={list(self.adapters)}"
