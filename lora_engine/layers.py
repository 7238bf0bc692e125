"""LoRA layers: a frozen base weight plus a trainable low-rank update.

    LoRA  (Hu et al. 2021):   y = W0·x + b + s·B·A·dropout(x),   s = α / r   (rsLoRA: α / √r)
    DoRA  (Liu et al. 2024):  y = (m / ‖W0 + s·B·A‖_row) ⊙ (W0·x + s·B·A·x) + b

A ∈ R^{r×in} starts kaiming-uniform and B ∈ R^{out×r} starts at zero, so an injected model computes
exactly its base model until B is trained. The DoRA magnitude m starts at ‖W0‖_row and, as in PEFT
(and section 4.3 of the DoRA paper), the row norm is treated as a constant in the backward pass.

The base `weight` and `bias` are the very Parameter objects of the module replaced, registered under
the same names, so the model's base state-dict keys do not change (`c_attn.weight` stays
`c_attn.weight`) and a base checkpoint still loads into an injected model.

Merging is explicit and idempotent (`merge()` / `unmerge()`), never a side effect of `train()`/`eval()`.

Speed: the update is added by one addmm with the scale as its alpha (`addmm(W0·x + b, x·Aᵀ, Bᵀ,
alpha=s)`), no per-call adapter dispatch. A hand-written kernel that folded s·B·A into the frozen
weight was measured against this path (bench/RESULTS.md, "fold kernel") and removed: it was slower.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from lora_engine.catalog import method_of_flags

try:  # GPT-2's linear layer stores its weight transposed: (in, out)
    from transformers.pytorch_utils import Conv1D
except ImportError:  # pragma: no cover - transformers is a hard dependency
    Conv1D = None  # type: ignore[assignment,misc]


def lora_scaling(alpha: float, r: int, use_rslora: bool) -> float:
    """s = α / r, or α / √r for rsLoRA (keeps the update's scale stable as r grows)."""
    return alpha / math.sqrt(r) if use_rslora else alpha / r


def is_conv1d(module: nn.Module) -> bool:
    return Conv1D is not None and isinstance(module, Conv1D)


class LoRALinear(nn.Module):
    """LoRA (or DoRA) around an `nn.Linear` or a transformers `Conv1D` (fan_in_fan_out=True).

    Parameter names follow PEFT: `lora_A.weight` (r×in), `lora_B.weight` (out×r); DoRA adds
    `lora_magnitude` (out,), written to PEFT files as `lora_magnitude_vector`.
    """

    def __init__(self, base: nn.Module, r: int, alpha: float, dropout: float = 0.0, *,
                 use_rslora: bool = False, use_dora: bool = False):
        super().__init__()
        self.fan_in_fan_out = is_conv1d(base)
        weight = base.weight
        if self.fan_in_fan_out:
            self.in_features, self.out_features = weight.shape
        else:
            self.out_features, self.in_features = weight.shape
        self.weight = weight
        self.bias = base.bias
        self.r = r
        self.alpha = alpha
        self.use_rslora = use_rslora
        self.use_dora = use_dora
        self.scaling = lora_scaling(alpha, r, use_rslora)
        factory = {"device": weight.device, "dtype": weight.dtype}
        self.lora_A = nn.Linear(self.in_features, r, bias=False, **factory)
        self.lora_B = nn.Linear(r, self.out_features, bias=False, **factory)
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))  # nn.Linear's init, as PEFT
        nn.init.zeros_(self.lora_B.weight)
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self._has_dropout = dropout > 0
        self.lora_magnitude = None
        if use_dora:
            with torch.no_grad():
                self.lora_magnitude = nn.Parameter(self._row_norm(self.delta_weight()))
        self.merged = False
        self._merged_norm: torch.Tensor | None = None  # DoRA: the norm used at merge time

    # -- weights in (out, in) orientation ---------------------------------------------------------
    def base_weight_oi(self) -> torch.Tensor:
        return self.weight.t() if self.fan_in_fan_out else self.weight

    def delta_weight(self) -> torch.Tensor:
        """s·B·A in (out, in) orientation."""
        return (self.lora_B.weight @ self.lora_A.weight) * self.scaling

    def _row_norm(self, delta: torch.Tensor) -> torch.Tensor:
        """‖W0 + ΔW‖ per output row (DoRA's column norm in the paper's (in, out) notation)."""
        return torch.linalg.norm(self.base_weight_oi() + delta, dim=1)

    # -- forward ----------------------------------------------------------------------------------
    def _base(self, x: torch.Tensor) -> torch.Tensor:
        if self.fan_in_fan_out:
            return F.linear(x, self.weight.t(), self.bias)
        return F.linear(x, self.weight, self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged:
            return self._base(x)
        if self.use_dora:
            return self._dora_forward(x)
        # The update's add and scale fused into the B GEMM: addmm(base, h, Bᵀ, alpha=s), one
        # kernel, not mm+mul+add.
        xd = self.lora_dropout(x) if self._has_dropout else x
        h = F.linear(xd, self.lora_A.weight)
        base = self._base(x)
        out = torch.addmm(base.reshape(-1, self.out_features), h.reshape(-1, self.r),
                          self.lora_B.weight.t(), alpha=self.scaling)
        return out.view(base.shape)

    def _dora_forward(self, x: torch.Tensor) -> torch.Tensor:
        # Norm of the adapted weight, detached (DoRA §4.3, as PEFT): gradients reach m, A and B only
        # through the direction term below.
        with torch.no_grad():
            norm = self._row_norm(self.delta_weight())
        factor = self.lora_magnitude / norm
        w = self.weight.t() if self.fan_in_fan_out else self.weight
        if not (self._has_dropout and self.training):
            # factor ⊙ (W0·x + s·B·A·x) + b
            y0 = F.linear(x, w)
            h = F.linear(x, self.lora_A.weight)
            y = torch.addmm(y0.reshape(-1, self.out_features), h.reshape(-1, self.r),
                            self.lora_B.weight.t(), alpha=self.scaling).view(y0.shape)
            y = y * factor
            return y + self.bias if self.bias is not None else y
        # With dropout PEFT keeps the base path on the clean x and applies the DoRA rescale to the
        # dropped-out input: W0x + b + (factor−1)⊙W0·xd + factor⊙s·B·A·xd.
        xd = self.lora_dropout(x)
        lora = F.linear(F.linear(xd, self.lora_A.weight), self.lora_B.weight) * self.scaling
        return self._base(x) + (factor - 1) * F.linear(xd, w) + factor * lora

    # -- merge ------------------------------------------------------------------------------------
    @torch.no_grad()
    def merge(self) -> None:
        """W ← W0 + s·B·A (DoRA: W ← m/‖W0 + s·B·A‖ ⊙ (W0 + s·B·A)). A no-op when already merged."""
        if self.merged:
            return
        delta = self.delta_weight()
        new = self.base_weight_oi() + delta
        if self.use_dora:
            self._merged_norm = torch.linalg.norm(new, dim=1)
            new = new * (self.lora_magnitude / self._merged_norm).unsqueeze(1)
        self.weight.data.copy_(new.t() if self.fan_in_fan_out else new)
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Restore W0 exactly up to float rounding. A no-op when not merged."""
        if not self.merged:
            return
        w = self.base_weight_oi()
        if self.use_dora:
            w = w / (self.lora_magnitude / self._merged_norm).unsqueeze(1)
            self._merged_norm = None
        w = w - self.delta_weight()
        self.weight.data.copy_(w.t() if self.fan_in_fan_out else w)
        self.merged = False

    def to_plain(self) -> nn.Module:
        """A plain nn.Linear / Conv1D holding the merged weight (for export)."""
        self.merge()
        if self.fan_in_fan_out:
            plain = Conv1D(self.out_features, self.in_features)
        else:
            plain = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None)
        plain.weight = nn.Parameter(self.weight.detach().clone(), requires_grad=self.weight.requires_grad)
        if self.bias is not None:
            plain.bias = nn.Parameter(self.bias.detach().clone(), requires_grad=self.bias.requires_grad)
        return plain

    def extra_repr(self) -> str:
        kind = method_of_flags(use_rslora=self.use_rslora, use_dora=self.use_dora)
        return (f"in={self.in_features}, out={self.out_features}, {kind} r={self.r}, alpha={self.alpha}, "
                f"fan_in_fan_out={self.fan_in_fan_out}, merged={self.merged}")


class LoRAEmbedding(nn.Module):
    """LoRA around an nn.Embedding: E[ids] + s·(Aᵀ[ids])·Bᵀ.

    As PEFT (and loralib), A (r×num_embeddings) starts at zero and B (dim×r) at N(0, 1), so the
    update is zero at start; PEFT names them `lora_embedding_A` / `lora_embedding_B`. No dropout
    (PEFT applies none to embeddings) and no DoRA.
    """

    def __init__(self, base: nn.Embedding, r: int, alpha: float, *, use_rslora: bool = False):
        super().__init__()
        self.num_embeddings, self.embedding_dim = base.weight.shape
        self.weight = base.weight
        self.padding_idx = base.padding_idx
        self.max_norm, self.norm_type = base.max_norm, base.norm_type
        self.scale_grad_by_freq, self.sparse = base.scale_grad_by_freq, base.sparse
        self.r, self.alpha, self.use_rslora, self.use_dora = r, alpha, use_rslora, False
        self.scaling = lora_scaling(alpha, r, use_rslora)
        factory = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.lora_embedding_A = nn.Parameter(torch.zeros(r, self.num_embeddings, **factory))
        self.lora_embedding_B = nn.Parameter(torch.randn(self.embedding_dim, r, **factory))
        self.merged = False

    def _embed(self, ids: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, table, self.padding_idx, self.max_norm, self.norm_type,
                           self.scale_grad_by_freq, self.sparse)

    def delta_weight(self) -> torch.Tensor:
        """s·(B·A)ᵀ in the table's (num_embeddings, dim) orientation."""
        return (self.lora_embedding_B @ self.lora_embedding_A).t() * self.scaling

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        out = self._embed(ids, self.weight)
        if self.merged:
            return out
        h = self._embed(ids, self.lora_embedding_A.t())
        return torch.addmm(out.reshape(-1, self.embedding_dim), h.reshape(-1, self.r),
                           self.lora_embedding_B.t(), alpha=self.scaling).view(out.shape)

    @torch.no_grad()
    def merge(self) -> None:
        if not self.merged:
            self.weight.data.add_(self.delta_weight())
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:
            self.weight.data.sub_(self.delta_weight())
            self.merged = False

    def to_plain(self) -> nn.Embedding:
        self.merge()
        plain = nn.Embedding(self.num_embeddings, self.embedding_dim, padding_idx=self.padding_idx,
                             max_norm=self.max_norm, norm_type=self.norm_type,
                             scale_grad_by_freq=self.scale_grad_by_freq, sparse=self.sparse,
                             device="meta")
        plain.weight = nn.Parameter(self.weight.detach().clone(), requires_grad=self.weight.requires_grad)
        return plain

    def extra_repr(self) -> str:
        return (f"{self.num_embeddings}, {self.embedding_dim}, r={self.r}, alpha={self.alpha}, "
                f"merged={self.merged}")


LORA_LAYERS = (LoRALinear, LoRAEmbedding)
LORA_PARAM_MARKERS = ("lora_A", "lora_B", "lora_magnitude", "lora_embedding_A", "lora_embedding_B")


def is_lora_param(name: str) -> bool:
    """True for the trainable LoRA tensors of a qualified parameter name."""
    return any(part in LORA_PARAM_MARKERS for part in name.split("."))
