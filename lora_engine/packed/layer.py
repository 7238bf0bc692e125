"""One frozen base linear layer, many jobs' LoRA adapters: each job's rows through its own adapter.

    y[rows of job k] = W0·x + b + s_k·B_k·A_k·dropout_k(x)            (LoRA, rsLoRA)
    y[rows of job k] = m_k / ‖W0 + s_k·B_k·A_k‖_row ⊙ (W0·x + s_k·B_k·A_k·x) + b     (DoRA)

The base GEMM runs once over every job's rows; each adapter's two skinny GEMMs run on its job's
contiguous slice of rows (see routing.py), fused into one addmm onto that slice of the base output.
Chosen by measurement against an index_select/index_add loop (mLoRA's layout with gathered rows)
and against gather + bmm over a zero-padded (K, rows, in) stack: bench/bench_packed.py, numbers in
bench/RESULTS.md. A job with no adapter on this layer gets the base output alone.

The adapters are our `LoRALinear` modules, each around this same base weight: their parameters,
initial draws, DoRA norm and dropout are those of a solo run, so a job's adapter can leave the pack
and be saved, evaluated or resumed alone exactly as if it had been trained alone.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lora_engine.layers import LoRALinear
from lora_engine.packed.routing import Routing


class MultiLoRALinear(nn.Module):
    def __init__(self, base: nn.Module, routing: Routing):
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"packed LoRA wraps nn.Linear layers, got {type(base).__name__}")
        self.base = base
        self.routing = routing
        self.adapters = nn.ModuleDict()

    def add(self, key: str, adapter: LoRALinear) -> None:
        if adapter.weight is not self.base.weight or adapter.fan_in_fan_out:
            raise ValueError("a packed adapter must wrap this layer's own base weight")
        self.adapters[key] = adapter

    def remove(self, key: str) -> None:
        if key in self.adapters:
            del self.adapters[key]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2:
            raise ValueError("packed LoRA layers take packed (rows, features) inputs")
        w, bias = self.base.weight, self.base.bias
        y0 = F.linear(x, w)
        parts = []
        for (seg, base), (_, xs) in zip(self.routing.split(y0), self.routing.split(x), strict=True):
            adapter = self.adapters[seg.key] if seg.key in self.adapters else None  # noqa: SIM401 (ModuleDict has no get)
            if adapter is None or adapter.merged:
                parts.append(base)
                continue
            dropped = adapter._has_dropout and adapter.training
            if dropped:
                with self.routing.streams[seg.key].active():
                    xs = adapter.lora_dropout(xs)
            parts.append(_adapted(adapter, base, xs, w, dropped))
        y = torch.cat(parts) if len(parts) > 1 else parts[0]
        return y + bias if bias is not None else y

    def extra_repr(self) -> str:
        return f"in={self.base.in_features}, out={self.base.out_features}, jobs={list(self.adapters)}"


def _adapted(adapter: LoRALinear, base: torch.Tensor, xd: torch.Tensor, w: torch.Tensor,
             dropped: bool) -> torch.Tensor:
    """One job's slice: the base output `base` (W0·x, no bias) plus its adapter's update on `xd`."""
    a, b, s = adapter.lora_A.weight, adapter.lora_B.weight, adapter.scaling
    if not adapter.use_dora:
        return torch.addmm(base, F.linear(xd, a), b.t(), alpha=s)
    # DoRA, as LoRALinear._dora_forward: the row norm is a constant for the backward pass.
    with torch.no_grad():
        norm = adapter._row_norm(adapter.delta_weight())
    factor = adapter.lora_magnitude / norm
    if not dropped:
        return torch.addmm(base, F.linear(xd, a), b.t(), alpha=s) * factor
    # With dropout the base path keeps the clean x: W0x + (factor−1)⊙W0·xd + factor⊙s·B·A·xd.
    lora = F.linear(F.linear(xd, a), b) * s
    return base + (factor - 1) * F.linear(xd, w) + factor * lora
