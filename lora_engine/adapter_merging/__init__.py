"""Merging LoRA adapters into one new adapter (PEFT's `add_weighted_adapter`), torch-free rules.

Not to be confused with merging LoRA *into the base* (`inject.merge_lora`, `export_merged`): this
combines several adapters of one base into a new adapter of the same base.

    how           new rank      A' (per target module)              B'
    linear        r             Σ √(wᵢsᵢ)·sign(wᵢsᵢ)·Aᵢ             Σ √|wᵢsᵢ|·Bᵢ
    ties          r             TIES(√(wᵢsᵢ)…, Aᵢ, density)         TIES(√|wᵢsᵢ|, Bᵢ, density)
    dare_linear   r             DARE(…, Aᵢ, density) (random)       likewise
    dare_ties     r             DARE masks, then TIES' sign vote    likewise
    cat           Σ rᵢ          [w₁s₁A₁; w₂s₂A₂; …] (rows)          [B₁ B₂ …] (columns)

sᵢ is parent i's scaling (α/r, or α/√r for rsLoRA); the merged adapter has α = r (s = 1), so its
update is B'·A'. As in PEFT, the weight of a non-`cat` merge is split √ between A and B, so
`linear` is not the average of the updates BᵢAᵢ (cross terms BᵢAⱼ remain): PEFT's "rough
approximation"; `cat` is exact (B'A' = Σ wᵢsᵢBᵢAᵢ). TIES keeps the `density` share of each
parent's largest entries, elects a sign per entry (the sign of the weighted sum) and averages the
parents that agree with it; DARE drops entries at random (kept with probability `density`) and
rescales the rest by 1/density. The numbers are those of `peft.utils.merge_utils`
(tests/unit/test_adapter_merging.py checks them against PEFT itself).

Saved modules (a classifier's head, which PEFT refuses to merge) are averaged with the same
weights, normalised: Σ wᵢ·hᵢ / Σ wᵢ; so Σ wᵢ must be > 0 when there is a head.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from lora_engine.errors import shown
from lora_engine.methods import BY_NAME as METHODS

HOWS = ("linear", "cat", "ties", "dare_linear", "dare_ties")
USES_DENSITY = frozenset({"ties", "dare_linear", "dare_ties"})
RANDOM = frozenset({"dare_linear", "dare_ties"})
DEFAULT_DENSITY = 0.5
MAX_PARENTS = 16  # a cat of 16 rank-64 adapters is already rank 1024
MAX_ABS_WEIGHT = 1000.0


def default_weights(n: int) -> list[float]:
    """Equal weights that sum to 1 (so `linear` of two parents with the same A and B is that parent)."""
    return [1.0 / n] * n


def merge_options_problems(how: object, weights: Sequence[object] | None, density: object,
                           n_parents: int, has_head: bool = False) -> list[str]:
    """Every problem with a merge's options (empty: fine). `weights` None: the defaults."""
    problems = []
    if how not in HOWS:
        problems.append(f"unknown merge method {shown(how)}; allowed: {', '.join(HOWS)}")
    if not 2 <= n_parents <= MAX_PARENTS:
        problems.append(f"a merge takes 2 to {MAX_PARENTS} adapters (got {n_parents})")
    if weights is not None:
        ok = [type(w) in (int, float) and math.isfinite(w) and abs(w) <= MAX_ABS_WEIGHT for w in weights]
        if not all(ok):
            problems.append(f"weights must be finite numbers between -{MAX_ABS_WEIGHT:g} and "
                            f"{MAX_ABS_WEIGHT:g}")
        elif len(weights) != n_parents:
            problems.append(f"{len(weights)} weight(s) for {n_parents} adapters: give one per adapter")
        elif has_head and sum(weights) <= 0:  # type: ignore[arg-type]
            problems.append("the weights must sum to more than 0: the classifier heads are averaged "
                            "with them")
        elif all(w == 0 for w in weights):
            problems.append("at least one weight must be non-zero")
    if density is not None:
        if type(density) not in (int, float) or not math.isfinite(density) or not 0 < density <= 1:
            problems.append(f"density must be a number in (0, 1] (got {shown(density)})")
        elif how not in USES_DENSITY and how in HOWS:
            problems.append(f"density applies to {', '.join(sorted(USES_DENSITY))}, not to {how}")
    return problems


def method_problem(name: str) -> str | None:
    """Why an adapter of method `name` cannot be merged (None: it can)."""
    entry = METHODS.get(name)
    if entry is None or not entry.adapter:
        return f"a {name} fine-tune is a whole model, not a LoRA adapter"
    if entry.variant is not None:
        return (f"a {name} adapter cannot be merged: its magnitude vector has no weighted merge (PEFT's "
                "add_weighted_adapter would keep the first parent's, computed for another update); "
                "merge lora or rslora adapters")
    return None


def rank_problems(ranks: Sequence[int], how: str) -> list[str]:
    """Why parents of these ranks cannot be merged with `how` (empty: they can)."""
    if how != "cat" and len(set(ranks)) > 1:
        return [f"the adapters have ranks {', '.join(map(str, sorted(set(ranks))))}: {how} needs one rank "
                "(only cat merges different ranks)"]
    from lora_engine.spec import MAX_RANK  # the spec imports pydantic: not on `--help`'s path

    if how == "cat" and sum(ranks) > MAX_RANK:
        return [f"cat adds the ranks up to {sum(ranks)}, over the largest rank {MAX_RANK}"]
    return []
