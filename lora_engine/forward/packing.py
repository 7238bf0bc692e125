"""Padding-free ("packed") token layout for our own training forward.

A padded batch (B rows × L positions) becomes one list of its N real tokens, so every token-wise
operation (linear layers, norms, activations, dropout, the LM head) runs on N rows instead of B·L:
the idea of MosaicBERT's unpadding and of Hugging Face's padding-free collators. Only attention
needs the row structure back; at the short lengths of fine-tuning batches it is cheap to scatter
q, k and v into the padded layout for one attention call and gather the result again.

On CPU, for short rows, attention written as matmul-softmax-matmul is several times faster than
`scaled_dot_product_attention`'s kernels (8 rows × 64 tokens × 9 query / 3 key-value heads, forward
+ backward: flash 80 ms, math 11 ms, ours 4.9 ms); long rows and GPUs keep the fused kernels.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

# Above this length the B·H·L·L score tensor of plain attention starts to cost real memory.
SHORT_ROWS = 256


def keeps_probabilities(device: torch.device, length: int) -> bool:
    """Whether attention over rows of `length` tokens keeps its B·H·L·L probabilities for the
    backward pass (the plain matmul-softmax-matmul path), rather than a fused kernel's output and
    log-sum-exp."""
    return device.type == "cpu" and length <= SHORT_ROWS


def is_right_padded(attention_mask: torch.Tensor) -> bool:
    """Whether every row's real tokens form a prefix of it."""
    mask = attention_mask.bool()
    return bool((mask.cummin(dim=1).values == mask).all())


def _scatter_rows(x: torch.Tensor, index: torch.Tensor, rows: int) -> torch.Tensor:
    return x.new_zeros(rows, *x.shape[1:]).index_copy_(0, index, x)


class _Gather(torch.autograd.Function):
    """Rows `index` of x. Autograd's own backward for this accumulates with scatter-add; the
    positions are distinct, so a plain indexed copy is exact and several times cheaper."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(index)
        ctx.rows = x.shape[0]
        return x.index_select(0, index)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (index,) = ctx.saved_tensors
        return _scatter_rows(grad, index, ctx.rows), None


class _Scatter(torch.autograd.Function):
    """x placed at rows `index` of a zero tensor with `rows` rows (the inverse of `_Gather`)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, index: torch.Tensor, rows: int) -> torch.Tensor:
        ctx.save_for_backward(index)
        return _scatter_rows(x, index, rows)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (index,) = ctx.saved_tensors
        return grad.index_select(0, index), None, None


@dataclass(frozen=True)
class Packing:
    """Where the real tokens of a padded (B, L) batch live, and how to move between layouts."""

    batch: int
    length: int
    index: torch.Tensor | None  # flat positions (b·L + t) of the real tokens; None: no padding
    key_mask: torch.Tensor  # (B, L) bool, True on real tokens
    right_padded: bool  # every row's real tokens are a prefix of it
    rows_nonempty: bool

    @classmethod
    def from_mask(cls, attention_mask: torch.Tensor) -> Packing:
        mask = attention_mask.bool()
        b, length = mask.shape
        index = None if bool(mask.all()) else mask.reshape(-1).nonzero().squeeze(1)
        return cls(b, length, index, mask, is_right_padded(mask), bool(mask.any(dim=1).all()))

    def pack(self, x: torch.Tensor) -> torch.Tensor:
        """(B, L, ...) -> (N, ...): the real tokens, in row-major order."""
        flat = x.reshape(self.batch * self.length, *x.shape[2:])
        return flat if self.index is None else _Gather.apply(flat, self.index)

    def unpack(self, x: torch.Tensor) -> torch.Tensor:
        """(N, ...) -> (B, L, ...), zeros at padding."""
        full = x if self.index is None else _Scatter.apply(x, self.index, self.batch * self.length)
        return full.reshape(self.batch, self.length, *x.shape[1:])

    def row_means(self, x: torch.Tensor) -> torch.Tensor:
        """(N, D) packed -> (B, D): the mean over each row's real tokens (mean pooling)."""
        counts = self.key_mask.sum(dim=1, keepdim=True).to(x.dtype)
        return self.unpack(x).sum(dim=1) / counts

    def compact_positions(self, flat_positions: torch.Tensor) -> torch.Tensor:
        """Row indices into the packed (N, ...) tensor for flat padded positions of real tokens."""
        if self.index is None:
            return flat_positions
        compact = torch.cumsum(self.key_mask.reshape(-1).long(), 0) - 1
        return compact[flat_positions]

    def attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float, causal: bool,
                  dropout: float = 0.0, query_positions: torch.Tensor | None = None) -> torch.Tensor:
        """Scaled dot-product attention of packed heads (N, H, D) within each row; returns (N, Hq, D).

        Causal attention needs right-padded rows; bidirectional attention needs a real token in
        every row. `query_positions` (one flat padded position per row, bidirectional only)
        restricts the queries to those tokens, e.g. the first token of each row when only it feeds a
        classification head; q then holds one row per position. Key/value heads may be fewer than
        query heads (grouped-query attention).
        """
        keys, values = self._rows(k), self._rows(v)
        if causal:
            # Right padding puts every pad key after the row's real tokens, where the causal mask
            # already hides it from real queries; pad queries see something and are discarded.
            if not self.right_padded or query_positions is not None:
                raise ValueError("causal packed attention needs right-padded rows and every query")
            queries = self._rows(q)
        else:
            if not self.rows_nonempty:  # a query that may see nothing would give NaN gradients
                raise ValueError("bidirectional packed attention needs at least one real token per row")
            if query_positions is None:
                queries = self._rows(q)
            elif query_positions.numel() != self.batch:
                raise ValueError("restricted queries take exactly one position per row")
            else:
                queries = q.unsqueeze(2)  # (B, H, 1, D)
        if keeps_probabilities(q.device, self.length):
            out = self._short_attention(queries, keys, values, scale, causal, dropout)
        else:
            keep = None if causal else self.key_mask[:, None, None, :]
            out = F.scaled_dot_product_attention(queries, keys, values, attn_mask=keep, dropout_p=dropout,
                                                 is_causal=causal, scale=scale,
                                                 enable_gqa=queries.shape[1] != keys.shape[1])
        out = out.transpose(1, 2)  # (B, L or 1, H, D)
        if query_positions is not None:
            return out.squeeze(1)
        return self.pack(out)

    def _short_attention(self, q, k, v, scale: float, causal: bool, dropout: float) -> torch.Tensor:
        """Attention as three plain ops; query heads that share a key/value head are stacked onto
        the query axis (one matmul per group, no copies of the shared keys and values)."""
        b, heads, lq, size = q.shape
        groups = k.shape[1]
        if scale != 1.0:
            q = q * scale
        scores = torch.matmul(q.reshape(b, groups, heads // groups * lq, size), k.transpose(-1, -2))
        scores = scores.view(b, groups, heads // groups, lq, self.length)
        if causal:
            scores = scores + torch.full((lq, self.length), float("-inf"), device=q.device).triu(1)
        else:
            scores = scores.masked_fill(~self.key_mask[:, None, None, None, :], float("-inf"))
        probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(v.dtype)
        if dropout:
            probs = F.dropout(probs, p=dropout)
        out = torch.matmul(probs.view(b, groups, heads // groups * lq, self.length), v)
        return out.view(b, heads, lq, size)

    def _rows(self, x: torch.Tensor) -> torch.Tensor:
        return self.unpack(x).transpose(1, 2)  # (B, H, L, D)
