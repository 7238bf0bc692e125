"""Bidirectional attention over a packed batch of rows of very different lengths, by length buckets.

The packed encoder (forward/encoder.py) asks its `packing` for attention within each row. The
trainer's `forward.packing.Packing` pads every row to the batch's longest: right for training
batches, which its data side builds from rows of similar length, but a serving batch is whatever
requests arrived together. 32 SST-2 sentences of 5-60 tokens padded to 60 make scores, masks and
softmax ~3x the real work, and attention became the largest cost of a mixed classify batch.

`LengthBuckets` sorts the rows by length and cuts them into a few buckets, each padded only to its
own longest row (a new bucket starts when the next row is over `GROWTH` times the bucket's shortest,
at most `MAX_BUCKETS`), and runs plain attention per bucket:

    scores = (q·scale)·kᵀ (+ -inf at the bucket's padding) → softmax → ·v

A row's padding keys get probability exactly 0, so its output is what it gets alone (up to the
float rounding of a differently blocked product; tests/unit/test_serving_engine.py holds every
row to 1e-5 of its solo logits). Inference only: no dropout, no causal mask, no backward.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

GROWTH = 1.3
MAX_BUCKETS = 6


@dataclass(frozen=True)
class Bucket:
    rows: torch.Tensor  # (b,) the batch rows it holds
    width: int  # its longest row
    gather: torch.Tensor  # (b·width,) packed token of each padded position (padding: a real token)
    real: torch.Tensor  # positions of real tokens in the flat (b·width) layout
    dest: torch.Tensor  # their packed token rows, in the same order
    pad_bias: torch.Tensor | None  # (b, 1, 1, width): 0 on real keys, -inf on padding; None: no padding


class LengthBuckets:
    """A packed batch (rows laid one after another, `lengths` tokens each) for `encoder.encode`."""

    def __init__(self, lengths: list[int], device: torch.device, dtype: torch.dtype):
        self.tokens = sum(lengths)
        self.buckets = [_bucket(rows, lengths, device, dtype) for rows in cut_by_length(lengths)]

    def attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float, causal: bool,
                  dropout: float = 0.0, query_positions: torch.Tensor | None = None) -> torch.Tensor:
        """`forward.packing.Packing.attention`'s contract: packed heads (N, H, D) → (N, H, D); with
        `query_positions` (one per row) q holds one row per batch row and so does the result."""
        if causal or dropout:
            raise ValueError("length-bucketed attention is bidirectional inference only")
        heads, size = k.shape[1], k.shape[2]
        out = q.new_empty(q.shape[0], heads, size)
        for b in self.buckets:
            count = b.rows.shape[0]
            keys = k.index_select(0, b.gather).view(count, b.width, heads, size).transpose(1, 2)
            values = v.index_select(0, b.gather).view(count, b.width, heads, size).transpose(1, 2)
            if query_positions is None:
                queries = q.index_select(0, b.gather).view(count, b.width, heads, size).transpose(1, 2)
            else:
                queries = q.index_select(0, b.rows).unsqueeze(2)  # (b, H, 1, D)
            scores = torch.matmul(queries * scale, keys.transpose(-1, -2))
            if b.pad_bias is not None:
                scores = scores + b.pad_bias
            ctx = torch.matmul(torch.softmax(scores, dim=-1), values).transpose(1, 2)  # (b, Lq, H, D)
            if query_positions is None:
                out.index_copy_(0, b.dest, ctx.reshape(count * b.width, heads, size).index_select(0, b.real))
            else:
                out.index_copy_(0, b.rows, ctx.squeeze(1))
        return out


def cut_by_length(lengths: list[int]) -> list[list[int]]:
    """Rows by length, cut into buckets (see the module docstring)."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    buckets: list[list[int]] = []
    for i in order:
        if buckets and (lengths[i] <= GROWTH * lengths[buckets[-1][0]] or len(buckets) == MAX_BUCKETS):
            buckets[-1].append(i)
        else:
            buckets.append([i])
    return buckets


def _bucket(rows: list[int], lengths: list[int], device, dtype) -> Bucket:
    starts = [0]
    for n in lengths[:-1]:
        starts.append(starts[-1] + n)
    width = max(lengths[i] for i in rows)
    gather, real, dest, bias = [], [], [], []
    for j, i in enumerate(rows):
        n = lengths[i]
        gather += [starts[i] + t for t in range(n)] + [starts[i]] * (width - n)
        real += [j * width + t for t in range(n)]
        dest += [starts[i] + t for t in range(n)]
        bias.append([0.0] * n + [float("-inf")] * (width - n))
    padded = any(lengths[i] < width for i in rows)
    as_index = {"dtype": torch.long, "device": device}
    return Bucket(torch.tensor(rows, **as_index), width, torch.tensor(gather, **as_index),
                  torch.tensor(real, **as_index), torch.tensor(dest, **as_index),
                  torch.tensor(bias, dtype=dtype, device=device)[:, None, None, :] if padded else None)
