"""One resident base linear layer serving many adapters: each batch row through its own adapter.

    y[rows of adapter k] = adapter_k.update(x[rows of adapter k], W0·x[rows of adapter k] + b)

The serving twin of the packed trainer's `MultiLoRALinear` (packed/layer.py), with the same
routing (`packed.routing.Routing`: the rows of one adapter are one contiguous range, so routing is
a split, not a gather) and the same single place for the LoRA / DoRA math (`LoRALinear.update`).
It differs where serving differs: the base may be GPT-2's `Conv1D` as well as `nn.Linear`, inputs
keep their (batch, tokens, features) shape (Hugging Face's attention calls the projections on 3-D
tensors, a decode step on one token per row), and the adapters are held outside the module tree
(a plain dict) so the model's parameters, state dict and `.to()` stay the base's alone.

A row whose key has no adapter on this layer (the bare base, or an adapter that does not target
this layer) gets the base output alone.
"""

from __future__ import annotations

import torch
from torch import nn

from lora_engine.layers import LoRALinear
from lora_engine.packed.routing import Routing


class ServedLinear(nn.Module):
    def __init__(self, base: nn.Module, routing: Routing):
        super().__init__()
        self.base = base
        self.routing = routing
        self.adapters: dict[str, LoRALinear] = {}  # not a ModuleDict: see the module docstring
        self.out_features = base.weight.shape[-1] if type(base).__name__ == "Conv1D" else base.weight.shape[0]

    def add(self, key: str, adapter: LoRALinear) -> None:
        if adapter.weight is not self.base.weight:
            raise ValueError("a served adapter must wrap this layer's own base weight")
        self.adapters[key] = adapter

    def remove(self, key: str) -> None:
        self.adapters.pop(key, None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        y = self.base(flat)
        if not self.adapters or not self.routing.active:
            return y.view(*shape[:-1], self.out_features)
        parts = []
        for (seg, ys), (_, xs) in zip(self.routing.split(y), self.routing.split(flat), strict=True):
            adapter = self.adapters.get(seg.key)
            parts.append(ys if adapter is None else adapter.update(xs, ys))
        out = torch.cat(parts) if len(parts) > 1 else parts[0]
        return out.view(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"adapters={list(self.adapters)}"
