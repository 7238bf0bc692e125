"""How one generated row picks its next token: greedy, or sampled with temperature and top-p from
the row's own random generator.

Each row owns a `torch.Generator` seeded by its request's seed, and draws from it only for its own
tokens, so what a row samples depends on its logits and its seed, never on which other rows share
its batch (the logits themselves are the row's own: see base.py).

    temperature 0        → argmax (greedy; what `adapter predict` decodes)
    temperature t > 0    → p = softmax(logits / t), cut to the smallest set of most likely tokens
                           whose mass reaches top_p (the first token always kept), renormalised
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from lora_engine.errors import LoraFleetInputError


@dataclass(frozen=True)
class Sampling:
    """A generation request's decoding settings (OpenAI's names). `stop_ids`: token ids that end
    the row (None: the tokenizer's end-of-sequence token); `seed` None draws one at random."""

    max_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    stop_ids: tuple[int, ...] | None = None
    seed: int | None = None

    def __post_init__(self):
        problems = []
        if type(self.max_tokens) is not int or self.max_tokens < 1:
            problems.append(f"max_tokens must be a whole number >= 1, got {self.max_tokens!r}")
        if not isinstance(self.temperature, int | float) or not 0.0 <= self.temperature <= 2.0:
            problems.append(f"temperature must be a number in [0, 2], got {self.temperature!r}")
        if not isinstance(self.top_p, int | float) or not 0.0 < self.top_p <= 1.0:
            problems.append(f"top_p must be a number in (0, 1], got {self.top_p!r}")
        if self.seed is not None and (type(self.seed) is not int or not 0 <= self.seed < 2**63):
            problems.append(f"seed must be a whole number in [0, 2^63), got {self.seed!r}")
        if self.stop_ids is not None and not all(type(t) is int and t >= 0 for t in self.stop_ids):
            problems.append(f"stop_ids must be token ids, got {self.stop_ids!r}")
        if problems:
            raise LoraFleetInputError("; ".join(problems))


GREEDY = Sampling()


def row_generator(seed: int | None, device: torch.device) -> torch.Generator:
    gen = torch.Generator(device=device)
    if seed is None:
        gen.seed()  # a fresh non-deterministic seed
    else:
        gen.manual_seed(seed)
    return gen


def next_token(logits: torch.Tensor, sampling: Sampling, generator: torch.Generator) -> int:
    """The next token id from one row's (vocab,) logits."""
    if sampling.temperature == 0.0:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits.float() / sampling.temperature, dim=-1)
    if sampling.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs  # mass of the more likely tokens
        sorted_probs = torch.where(before < sampling.top_p, sorted_probs, torch.zeros_like(sorted_probs))
        pick = torch.multinomial(sorted_probs / sorted_probs.sum(), 1, generator=generator)
        return int(order[pick])
    return int(torch.multinomial(probs, 1, generator=generator))


def stops_of(sampling: Sampling, eos: int | None) -> Sequence[int]:
    if sampling.stop_ids is not None:
        return sampling.stop_ids
    return () if eos is None else (eos,)
