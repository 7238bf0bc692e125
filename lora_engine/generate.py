"""Decoding for generation tasks: beam search as in the LoRA paper's E2E runs, or greedy.

The LoRA paper (Hu et al. 2021, appendix D.3) decoded E2E with beam size 10, length penalty 0.8
and no repeated 4-grams. Hugging Face's `generate` implements exactly these knobs; what this module
adds is the input side: prompts arrive already tokenised by the same function training used
(prompt tokenised on its own), are left-padded so every row's last prompt token sits at the end of
the batch, and only the newly generated tokens are decoded.

Length penalty: a finished beam's score is log p(y) / |y|^lp, so lp < 1 favours shorter outputs
than lp = 1 would.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch

from lora_engine.device import DeviceInfo, autocast


@dataclass(frozen=True)
class DecodeSettings:
    num_beams: int = 10
    length_penalty: float = 0.8
    no_repeat_ngram_size: int = 4
    max_new_tokens: int = 64
    batch_size: int = 16

    def __post_init__(self):
        if self.num_beams < 1:
            raise ValueError(f"num_beams must be >= 1 (got {self.num_beams})")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1 (got {self.max_new_tokens})")
        if self.no_repeat_ngram_size < 0:
            raise ValueError(f"no_repeat_ngram_size must be >= 0 (got {self.no_repeat_ngram_size})")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1 (got {self.batch_size})")

    def as_dict(self) -> dict:
        return asdict(self)


PAPER_BEAM = DecodeSettings()  # beam 10, length penalty 0.8, no-repeat-ngram 4
GREEDY = DecodeSettings(num_beams=1, length_penalty=1.0, no_repeat_ngram_size=0, batch_size=32)


def left_pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token id lists into (input_ids, attention_mask)."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            ids[i, width - len(r):] = torch.as_tensor(list(r), dtype=torch.long)
            mask[i, width - len(r):] = 1
    return ids, mask


def _special_ids(tokenizer) -> tuple[int, int]:
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("the tokenizer has no end-of-sequence token: generation could not stop")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    return eos, pad


@torch.no_grad()
def generate_ids(model, prompt_ids: Sequence[Sequence[int]], *, tokenizer, device: DeviceInfo,
                 settings: DecodeSettings = PAPER_BEAM) -> list[list[int]]:
    """New token ids (eos and padding removed) for each tokenised prompt, in input order.

    Prompts are sorted by length before batching so that rows of one batch need little padding;
    results come back in the caller's order.
    """
    if not prompt_ids:
        return []
    eos, pad = _special_ids(tokenizer)
    was_training = model.training
    model.eval()
    order = sorted(range(len(prompt_ids)), key=lambda i: len(prompt_ids[i]))
    out: list[list[int] | None] = [None] * len(prompt_ids)
    try:
        for start in range(0, len(order), settings.batch_size):
            chunk = order[start:start + settings.batch_size]
            ids, mask = left_pad([prompt_ids[i] for i in chunk], pad)
            kwargs = {
                "max_new_tokens": settings.max_new_tokens,
                "num_beams": settings.num_beams,
                "do_sample": False,
                "eos_token_id": eos,
                "pad_token_id": pad,
            }
            if settings.num_beams > 1:
                kwargs.update(length_penalty=settings.length_penalty, early_stopping=True)
            if settings.no_repeat_ngram_size:
                kwargs["no_repeat_ngram_size"] = settings.no_repeat_ngram_size
            with autocast(device):
                gen = model.generate(input_ids=ids.to(device.device), attention_mask=mask.to(device.device),
                                     **kwargs)
            for row, i in zip(gen[:, ids.shape[1]:].tolist(), chunk, strict=True):
                cut = row.index(eos) if eos in row else len(row)
                out[i] = [t for t in row[:cut] if t != pad]
    finally:
        model.train(was_training)
    return [o or [] for o in out]


def generate_texts(model, prompt_ids: Sequence[Sequence[int]], *, tokenizer, device: DeviceInfo,
                   settings: DecodeSettings = PAPER_BEAM) -> list[str]:
    """Decoded continuations (stripped of special tokens and surrounding white space)."""
    ids = generate_ids(model, prompt_ids, tokenizer=tokenizer, device=device, settings=settings)
    return [tokenizer.decode(r, skip_special_tokens=True).strip() for r in ids]
