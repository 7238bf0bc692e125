"""One frozen base linear layer, many jobs' LoRA adapters: each job's rows through its own adapter.

    y[rows of job k] = adapter_k.update(x[rows of job k], W0·x[rows of job k] + b)

The base GEMM runs once over every job's rows; each adapter adds its share to its job's
contiguous slice of the base output (see routing.py) through `LoRALinear.update`, the one place
the LoRA and DoRA math is written: for LoRA, its two skinny GEMMs fused into one addmm onto the
slice. Chosen by measurement against an index_select/index_add loop (mLoRA's layout with gathered
rows) and against gather + bmm over a zero-padded (K, rows, in) stack: bench/bench_packed.py,
numbers in bench/RESULTS.md. A job with no adapter on this layer gets the base output alone.

Fused routing (`Routing.fused`, CUDA's default): all jobs' LoRA updates in two GEMMs per layer
(`_fused`), K times fewer launches for a little more skinny work; it batches the plain update
s·B·A·x only, so a layer holding an adapter with a variant (`Method.variant`: DoRA, whose per-row
norm does not batch this way) keeps the per-job path.

The adapters are our `LoRALinear` modules, each around this same base weight: their parameters,
initial draws, DoRA norm and dropout are those of a solo run, so a job's adapter can leave the pack
and be saved, evaluated or resumed alone exactly as if it had been trained alone. A job's dropout
draws come from its own stream (routing.JobStream), as in its solo run.
"""

from __future__ import annotations

from contextlib import nullcontext

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

    def _adapter(self, key: str) -> LoRALinear | None:
        """The job's unmerged adapter on this layer, or None (its rows get the base output)."""
        adapter = self.adapters[key] if key in self.adapters else None  # noqa: SIM401 (ModuleDict has no get)
        return adapter if adapter is not None and not adapter.merged else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2:
            raise ValueError("packed LoRA layers take packed (rows, features) inputs")
        if self.routing.fused:
            fused = self._fused(x)
            if fused is not None:
                return fused
        y = F.linear(x, self.base.weight, self.base.bias)
        parts = []
        for (seg, result), (_, xs) in zip(self.routing.split(y), self.routing.split(x), strict=True):
            adapter = self._adapter(seg.key)
            if adapter is None:
                parts.append(result)
                continue
            with self.routing.streams[seg.key].active() if adapter.dropping else nullcontext():
                parts.append(adapter.update(xs, result))
        return torch.cat(parts) if len(parts) > 1 else parts[0]

    def _fused(self, x: torch.Tensor) -> torch.Tensor | None:
        """Every job's LoRA update in two GEMMs instead of two per job: h = x·[A_1; …; A_K]ᵀ over
        all rows, masked so that row i keeps only its own job's block, scaled by its s_k, then
        y = W0·x + b + h·[B_1 … B_K]ᵀ. Each row gets exactly s_k·B_k·A_k·x (the masked products
        are exact zeros; the sums differ from a solo run's only in rounding). The A GEMM does K
        times the skinny work, which a launch-bound device does not notice. None (the per-job
        path) when an adapter on this layer has a variant (DoRA), whose update does not batch."""
        segments = self.routing.segments(x.shape[0])
        jobs = []
        for seg in segments:
            adapter = self._adapter(seg.key)
            if adapter is not None and adapter.variant is not None:
                return None
            if adapter is not None:
                jobs.append((seg, adapter))
        y = F.linear(x, self.base.weight, self.base.bias)
        if not jobs:
            return y
        if any(adapter.dropping for _, adapter in jobs):  # each job's input through its own dropout
            parts = []
            for seg, xs in self.routing.split(x):
                adapter = self._adapter(seg.key)
                if adapter is not None and adapter.dropping:
                    with self.routing.streams[seg.key].active():
                        xs = adapter.lora_dropout(xs)
                parts.append(xs)
            xd = torch.cat(parts)
        else:
            xd = x
        a = torch.cat([adapter.lora_A.weight for _, adapter in jobs])
        b = torch.cat([adapter.lora_B.weight for _, adapter in jobs], dim=1)
        h = F.linear(xd, a) * self._row_scale(x, jobs)
        return torch.addmm(y, h, b.t())

    def _row_scale(self, x: torch.Tensor, jobs) -> torch.Tensor:
        """(rows, Σ ranks): s_k on job k's rows in job k's block of columns, 0 elsewhere; shared
        by every layer with the same rows and adapters within a step."""
        key = ("scale", x.shape[0], x.device, x.dtype,
               tuple((seg.key, a.r, a.scaling) for seg, a in jobs))
        scale = self.routing.cache.get(key)
        if scale is None:
            cols = sum(a.r for _, a in jobs)
            scale = torch.zeros(x.shape[0], cols, device=x.device, dtype=x.dtype)
            col = 0
            for seg, adapter in jobs:
                scale[seg.start:seg.end, col:col + adapter.r] = adapter.scaling
                col += adapter.r
            self.routing.cache[key] = scale
        return scale

    def extra_repr(self) -> str:
        return f"in={self.base.in_features}, out={self.base.out_features}, jobs={list(self.adapters)}"

