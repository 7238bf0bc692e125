"""One frozen base linear layer, many jobs' LoRA adapters: each job's rows through its own adapter.

    y[rows of job k] = W0·x + b + s_k·B_k·A_k·dropout_k(x)            (LoRA, rsLoRA)
    y[rows of job k] = m_k / ‖W0 + s_k·B_k·A_k‖_row ⊙ (W0·x + s_k·B_k·A_k·x) + b     (DoRA)

The base GEMM runs once over every job's rows; each adapter's two skinny GEMMs run on its job's
contiguous slice of rows (see routing.py), fused into one addmm onto that slice of the base output.
Chosen by measurement against an index_select/index_add loop (mLoRA's layout with gathered rows)
and against gather + bmm over a zero-padded (K, rows, in) stack: bench/bench_packed.py, numbers in
bench/RESULTS.md. A job with no adapter on this layer gets the base output alone.

Fused routing (`Routing.fused`, CUDA's default): all jobs' LoRA updates in two GEMMs per layer
(`_fused`), K times fewer launches for a little more skinny work; layers holding a DoRA adapter
keep the per-job path.

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
        if self.routing.fused:
            fused = self._fused(x, w, bias)
            if fused is not None:
                return fused
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

    def _fused(self, x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor | None:
        """Every job's LoRA update in two GEMMs instead of two per job: h = x·[A_1; …; A_K]ᵀ over
        all rows, masked so that row i keeps only its own job's block, scaled by its s_k, then
        y = W0·x + h·[B_1 … B_K]ᵀ. Each row gets exactly s_k·B_k·A_k·x (the masked products are
        exact zeros; the sums differ from a solo run's only in rounding). The A GEMM does K times
        the skinny work, which a launch-bound device does not notice. None (the per-job path)
        when a job on this layer uses DoRA, whose per-row norm does not batch this way."""
        segments = self.routing.segments(x.shape[0])
        jobs = []
        for seg in segments:
            adapter = self.adapters[seg.key] if seg.key in self.adapters else None  # noqa: SIM401
            if adapter is not None and adapter.use_dora:
                return None
            if adapter is not None and not adapter.merged:
                jobs.append((seg, adapter))
        if not jobs:
            return F.linear(x, w, bias)
        dropped = [a._has_dropout and a.training for _, a in jobs]
        if any(dropped):  # each job's LoRA input through its own dropout, from its own stream
            parts = []
            for (seg, xs) in self.routing.split(x):
                adapter = self.adapters[seg.key] if seg.key in self.adapters else None  # noqa: SIM401
                if adapter is not None and adapter._has_dropout and adapter.training:
                    with self.routing.streams[seg.key].active():
                        xs = adapter.lora_dropout(xs)
                parts.append(xs)
            xd = torch.cat(parts)
        else:
            xd = x
        a = torch.cat([adapter.lora_A.weight for _, adapter in jobs])
        b = torch.cat([adapter.lora_B.weight for _, adapter in jobs], dim=1)
        h = F.linear(xd, a) * self._row_scale(x, jobs)
        y = torch.addmm(F.linear(x, w) if bias is None else F.linear(x, w, bias), h, b.t())
        return y

    def _row_scale(self, x: torch.Tensor, jobs) -> torch.Tensor:
        """(rows, Σ ranks): s_k on job k's rows in job k's block of columns, 0 elsewhere; shared
        by every layer with the same rows and adapters within a step."""
        key = ("scale", x.shape[0], x.device, x.dtype,
               tuple((seg.key, a.lora_A.weight.shape[0], a.scaling) for seg, a in jobs))
        scale = self.routing.cache.get(key)
        if scale is None:
            cols = sum(a.lora_A.weight.shape[0] for _, a in jobs)
            scale = torch.zeros(x.shape[0], cols, device=x.device, dtype=x.dtype)
            col = 0
            for seg, adapter in jobs:
                r = adapter.lora_A.weight.shape[0]
                scale[seg.start:seg.end, col:col + r] = adapter.scaling
                col += r
            self.routing.cache[key] = scale
        return scale

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
