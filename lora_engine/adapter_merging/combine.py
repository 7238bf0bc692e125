"""The tensor arithmetic of a merge, on one target module at a time (see the package docstring).

PEFT's `merge_utils` functions, restated because peft is not a runtime dependency of lorafleet;
the order of random draws is PEFT's too (per module: A of every parent, then B of every parent),
so with a generator in the state PEFT's global one is in, DARE drops the very entries PEFT drops.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ModuleLora:
    """One parent's LoRA on one target module: A (r × in), B (out × r), and its scaling s."""

    a: torch.Tensor
    b: torch.Tensor
    scaling: float


def _prune_magnitude(t: torch.Tensor, density: float) -> torch.Tensor:
    if density >= 1:
        return t
    mask = torch.zeros_like(t).reshape(-1)
    mask[torch.topk(t.abs().reshape(-1), k=int(density * t.numel()), largest=True)[1]] = 1
    return t * mask.reshape(t.shape)


def _prune_random(t: torch.Tensor, density: float, generator: torch.Generator | None) -> torch.Tensor:
    if density >= 1:
        return t
    mask = torch.bernoulli(torch.full_like(t, density), generator=generator)
    return t * mask / density


def _weighted(stacked: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    return stacked * weights.view(weights.shape + (1,) * (stacked.dim() - 1))


def _sign_vote(stacked: torch.Tensor) -> torch.Tensor:
    """Which parents agree, per entry, with the sign of the entries' sum (TIES' elected sign)."""
    elected = torch.where(stacked.sum(dim=0) >= 0, 1, -1)
    return stacked.sign() == elected


def _disjoint_mean(weighted: torch.Tensor, agree: torch.Tensor) -> torch.Tensor:
    return (weighted * agree).sum(dim=0) / torch.clamp(agree.sum(dim=0), min=1.0)


def combine(tensors: Sequence[torch.Tensor], weights: torch.Tensor, how: str, density: float,
            generator: torch.Generator | None = None) -> torch.Tensor:
    """Σ-style combination of same-shaped tensors with per-parent `weights` (linear/ties/dare_*)."""
    if how in ("ties", "dare_ties", "dare_linear"):
        if how == "ties":
            tensors = [_prune_magnitude(t, density) for t in tensors]
        else:
            tensors = [_prune_random(t, density, generator) for t in tensors]
    stacked = torch.stack(list(tensors), dim=0)
    if how in ("ties", "dare_ties"):
        return _disjoint_mean(_weighted(stacked, weights), _sign_vote(stacked))
    if how in ("linear", "dare_linear"):
        return _weighted(stacked, weights).sum(dim=0)
    raise ValueError(f"combine: unknown merge method {how!r}")


def merge_module(parents: Sequence[tuple[ModuleLora, float]], how: str, density: float, new_rank: int,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(A', B') of one target module from the parents that adapt it, each with its weight."""
    dtype = parents[0][0].a.dtype
    if how == "cat":
        a = torch.cat([p.a * w * p.scaling for p, w in parents], dim=0)
        b = torch.cat([p.b for p, _ in parents], dim=1)
        # A parent that does not adapt this module leaves its rows (columns) at zero, as in PEFT.
        a_out = torch.zeros((new_rank, a.shape[1]), dtype=dtype)
        b_out = torch.zeros((b.shape[0], new_rank), dtype=dtype)
        a_out[: a.shape[0]], b_out[:, : b.shape[1]] = a, b
        return a_out, b_out
    signed = [w * p.scaling for p, w in parents]
    # The weight goes √ into each factor, its sign into A only (else two signs cancel).
    wa = torch.tensor([math.sqrt(abs(x)) * (1 if x >= 0 else -1) for x in signed])
    wb = torch.tensor([math.sqrt(abs(x)) for x in signed])
    a = combine([p.a for p, _ in parents], wa, how, density, generator)
    b = combine([p.b for p, _ in parents], wb, how, density, generator)
    return a.to(dtype), b.to(dtype)


def average_modules(tensors: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    """A saved module's tensor (a head) averaged with the merge's weights: Σ wᵢ·tᵢ / Σ wᵢ."""
    total = float(sum(weights))
    out = sum(t.double() * float(w) for t, w in zip(tensors, weights, strict=True)) / total
    return out.to(tensors[0].dtype)
