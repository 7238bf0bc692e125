"""LoRA layers: a frozen base weight plus a trainable low-rank update.

    LoRA  (Hu et al. 2021):   y = W0·x + b + s·B·A·dropout(x),   s = α / r   (rsLoRA: α / √r)
    DoRA  (Liu et al. 2024):  y = (m / ‖W0 + s·B·A‖_row) ⊙ (W0·x + s·B·A·x) + b

A ∈ R^{r×in} starts kaiming-uniform and B ∈ R^{out×r} starts at zero, so an injected model computes
exactly its base model until B is trained. PiSSA and OLoRA start A and B from W0 itself and train
on its residual, so the model computes its base there too (up to float rounding):

    PiSSA (Meng et al. 2024):     W0 = U·S·Vᵀ;  B0 = U_r·√(S_r/s),  A0 = √(S_r/s)·V_rᵀ
    OLoRA (Büyükakyüz 2024):      W0 = Q·R;     B0 = Q_r,           A0 = R_r
    both:                         W0 ← W0 − s·B0·A0  (the residual the run trains on)

as PEFT's `pissa_init` (full SVD, `init_lora_weights="pissa"`) and `olora_init` compute them, in
float32 whatever the weight's dtype. The layer keeps A0 and B0 (`initial_A`, `initial_B`, buffers
outside the state dict) for the adapter's conversion to a plain LoRA on the untouched base.

The DoRA magnitude m starts at ‖W0‖_row and, as in PEFT (and section 4.3 of the DoRA paper), the
row norm is treated as a constant in the backward pass.

The base `weight` and `bias` are the very Parameter objects of the module replaced, registered under
the same names, so the model's base state-dict keys do not change (`c_attn.weight` stays
`c_attn.weight`) and a base checkpoint still loads into an injected model.

Which method a layer runs is its entry in methods.py (named, or given as PEFT's flags): the entry's scaling
rule, its initialiser (`INITIALISERS`) and its variant (`VARIANTS`: DoRA; none for LoRA and
rsLoRA). `LoRALinear.update(x, result)` adds the adapter's share to the base output, the shape of
PEFT's `LoraVariant.forward`: the layer's own forward and the packed layer (one call per job's
rows) both go through it, so the update's math is written once.

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

from lora_engine.errors import LoraConfigError
from lora_engine.methods import SCALINGS, method_of_flags
from lora_engine.methods import method as method_entry
from lora_engine.quantize import is_quantized_linear, refuse_merge

try:  # GPT-2's linear layer stores its weight transposed: (in, out)
    from transformers.pytorch_utils import Conv1D
except ImportError:  # pragma: no cover - transformers is a hard dependency
    Conv1D = None  # type: ignore[assignment,misc]


def lora_scaling(alpha: float, r: int, use_rslora: bool) -> float:
    """s = α / r, or α / √r for rsLoRA (PEFT's `use_rslora`; keeps the update's scale stable as r grows)."""
    return SCALINGS["alpha/sqrt(r)" if use_rslora else "alpha/r"](alpha, r)


def is_conv1d(module: nn.Module) -> bool:
    return Conv1D is not None and isinstance(module, Conv1D)


def _default_init(layer: LoRALinear) -> None:
    """PEFT's `init_lora_weights=True`: A kaiming-uniform (nn.Linear's own init), B zero."""
    nn.init.kaiming_uniform_(layer.lora_A.weight, a=math.sqrt(5))
    nn.init.zeros_(layer.lora_B.weight)


def _start_on_residual(layer: LoRALinear, a: torch.Tensor, b: torch.Tensor, w: torch.Tensor) -> None:
    """A, B ← a, b; W0 ← w − s·b·a (all float32, (out, in)); remember a and b as A0, B0.

    The residual is taken from A0 and B0 as the layer holds them (rounded to a half-precision
    layer's dtype), so that W_res + s·B0·A0 is W0 to float32 rounding and the stored conversion
    (`adapters.io`) is exact whatever the dtype; for float32 layers that is PEFT's arithmetic."""
    with torch.no_grad():
        dtype = layer.weight.dtype
        layer.lora_A.weight.copy_(a)
        layer.lora_B.weight.copy_(b)
        a, b = layer.lora_A.weight.float(), layer.lora_B.weight.float()
        residual = (w - layer.scaling * b @ a).to(dtype)
        layer.weight.data.copy_(residual.t() if layer.fan_in_fan_out else residual)
    layer.register_buffer("initial_A", layer.lora_A.weight.detach().clone(), persistent=False)
    layer.register_buffer("initial_B", layer.lora_B.weight.detach().clone(), persistent=False)


def _pissa_init(layer: LoRALinear) -> None:
    """PEFT's `init_lora_weights="pissa"`: the top r singular triplets of W0, split evenly between
    B and A, divided by s so that s·B0·A0 is W0's principal part."""
    w = layer.base_weight_oi().detach().to(torch.float32)
    u, sv, vh = torch.linalg.svd(w, full_matrices=False)
    root = torch.sqrt(sv[: layer.r] / layer.scaling)
    _start_on_residual(layer, root[:, None] * vh[: layer.r], u[:, : layer.r] * root[None, :], w)


def _olora_init(layer: LoRALinear) -> None:
    """PEFT's `init_lora_weights="olora"`: W0 = Q·R, B0 = the first r columns of Q (orthonormal),
    A0 = the first r rows of R. (PEFT factors the weight as stored, which for GPT-2's Conv1D is
    (in, out) and gives A and B the wrong shapes; here it is always (out, in).)"""
    w = layer.base_weight_oi().detach().to(torch.float32)
    q, r = torch.linalg.qr(w)
    _start_on_residual(layer, r[: layer.r], q[:, : layer.r], w)


# How a method's A and B start (`Method.init`). An initialiser that writes into the base weight
# (PiSSA's residual) belongs to a method whose entry says `changes_base=True`.
INITIALISERS = {"default": _default_init, "pissa": _pissa_init, "olora": _olora_init}


class DoRA:
    """DoRA's share of a `LoRALinear` (`Method.variant` "dora"), in the shape of PEFT's LoraVariant:

        y = m / ‖W0 + s·B·A‖_row ⊙ (W0·x + s·B·A·x) + b

    m starts at ‖W0‖_row; the norm is a constant for the backward pass (DoRA §4.3, as PEFT), so
    gradients reach m, A and B only through the direction term.
    """

    @staticmethod
    def init(layer: LoRALinear) -> None:
        with torch.no_grad():
            layer.lora_magnitude = nn.Parameter(layer.weight_norm(layer.delta_weight()))

    @staticmethod
    def update(layer: LoRALinear, x: torch.Tensor, result: torch.Tensor) -> torch.Tensor:
        """`LoRALinear.update` for DoRA: `result` is W0·x + b."""
        with torch.no_grad():
            norm = layer.weight_norm(layer.delta_weight())
        factor = layer.lora_magnitude / norm
        a, b, s, bias = layer.lora_A.weight, layer.lora_B.weight, layer.scaling, layer.bias
        if not layer.dropping:
            # factor ⊙ (W0·x + s·B·A·x) + b, W0·x being the result without its bias
            y0 = result - bias if bias is not None else result
            y = torch.addmm(y0.reshape(-1, layer.out_features), F.linear(x, a).reshape(-1, layer.r), b.t(),
                            alpha=s).view(y0.shape) * factor
            return y + bias if bias is not None else y
        # With dropout PEFT keeps the base path on the clean x and applies the rescale to the
        # dropped-out input: W0x + b + (factor−1)⊙W0·xd + factor⊙s·B·A·xd.
        xd = layer.lora_dropout(x)
        lora = F.linear(F.linear(xd, a), b) * s
        return result + (factor - 1) * F.linear(xd, layer.base_weight_oi()) + factor * lora

    @staticmethod
    def merged(layer: LoRALinear, adapted: torch.Tensor) -> torch.Tensor:
        """The merged weight from W0 + s·B·A: rescaled row-wise by m / its norm (kept for unmerge)."""
        layer._merged_norm = torch.linalg.norm(adapted, dim=1)
        return adapted * (layer.lora_magnitude / layer._merged_norm).unsqueeze(1)

    @staticmethod
    def unmerged(layer: LoRALinear, weight: torch.Tensor) -> torch.Tensor:
        """W0 + s·B·A back from the merged weight."""
        adapted = weight / (layer.lora_magnitude / layer._merged_norm).unsqueeze(1)
        layer._merged_norm = None
        return adapted


VARIANTS = {"dora": DoRA}  # `Method.variant` -> its share of the layer; None: plain LoRA


class LoRALinear(nn.Module):
    """LoRA (or a variant) around an `nn.Linear` or a transformers `Conv1D` (fan_in_fan_out=True).

    The method is named (`method`) or given as PEFT's LoraConfig flags (`use_rslora`, `use_dora`,
    ...; see methods.py; LoRA+ has LoRA's flags, so only its name says it); its table entry says
    the scaling, the initialisation and the variant.

    Parameter names follow PEFT: `lora_A.weight` (r×in), `lora_B.weight` (out×r); DoRA adds
    `lora_magnitude` (out,), written to PEFT files as `lora_magnitude_vector`.
    """

    def __init__(self, base: nn.Module, r: int, alpha: float, dropout: float = 0.0, *,
                 method: str | None = None, **peft_flags: object):
        super().__init__()
        method = method_entry(method or method_of_flags(**peft_flags))
        self.fan_in_fan_out = is_conv1d(base)
        weight = base.weight
        # A bitsandbytes 4-bit base (lora_engine.quantize): its packed weight has no (out, in)
        # shape and no matmul of ours reads it; its own forward computes W0·x + b. Kept outside
        # the registered modules, so the state-dict keys stay the base's (`q_proj.weight`).
        self._quantized: tuple[nn.Module, ...] = (base,) if is_quantized_linear(base) else ()
        if self._quantized and method.variant is not None:
            raise LoraConfigError(f"method {method.name!r} needs the whole base weight every step; "
                                  "a quantised base holds it in 4 bits only: use lora or rslora")
        if self._quantized:
            self.out_features, self.in_features = base.out_features, base.in_features
        elif self.fan_in_fan_out:
            self.in_features, self.out_features = weight.shape
        else:
            self.out_features, self.in_features = weight.shape
        self.weight = weight
        self.bias = base.bias
        self.r = r
        self.alpha = alpha
        self.method = method.name  # the table's entry (adapters.io reads it; a swap may change it)
        self.scaling = method.scale(alpha, r)
        # The adapter of a quantised base trains in fp32 (as PEFT's QLoRA), whatever the 4-bit storage.
        factory = {"device": weight.device, "dtype": torch.float32 if self._quantized else weight.dtype}
        self.lora_A = nn.Linear(self.in_features, r, bias=False, **factory)
        self.lora_B = nn.Linear(r, self.out_features, bias=False, **factory)
        INITIALISERS[method.init](self)
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self._has_dropout = dropout > 0
        self.lora_magnitude = None
        self.variant = VARIANTS[method.variant] if method.variant is not None else None
        if self.variant is not None:
            self.variant.init(self)
        self.merged = False
        self._merged_norm: torch.Tensor | None = None  # DoRA: the norm used at merge time

    @property
    def dropping(self) -> bool:
        """True when the update's input goes through dropout now (dropout > 0, training)."""
        return self._has_dropout and self.training

    # -- weights in (out, in) orientation ---------------------------------------------------------
    def base_weight_oi(self) -> torch.Tensor:
        return self.weight.t() if self.fan_in_fan_out else self.weight

    def delta_weight(self) -> torch.Tensor:
        """s·B·A in (out, in) orientation."""
        return (self.lora_B.weight @ self.lora_A.weight) * self.scaling

    def weight_norm(self, delta: torch.Tensor) -> torch.Tensor:
        """‖W0 + ΔW‖ per output row (DoRA's column norm in the paper's (in, out) notation)."""
        return torch.linalg.norm(self.base_weight_oi() + delta, dim=1)

    # -- forward ----------------------------------------------------------------------------------
    @property
    def quantized_base(self) -> nn.Module | None:
        """The bitsandbytes layer this wraps, when its base is quantised (else None)."""
        return self._quantized[0] if self._quantized else None

    def _base(self, x: torch.Tensor) -> torch.Tensor:
        if self._quantized:
            return self._quantized[0](x)
        return F.linear(x, self.base_weight_oi(), self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged:
            return self._base(x)
        return self.update(x, self._base(x))

    def update(self, x: torch.Tensor, result: torch.Tensor) -> torch.Tensor:
        """`result` (the base layer's output on `x`, W0·x + b) with this adapter's share added: the
        one place the update's math is written (PEFT's `LoraVariant.forward(module, active_adapter,
        x, result)`); the packed layer calls it on each job's rows.

        LoRA: result + s·B·A·dropout(x), the add and the scale fused into the B GEMM
        (addmm(result, h, Bᵀ, alpha=s): one kernel, not mm+mul+add).
        """
        if self.variant is not None:
            return self.variant.update(self, x, result)
        xd = self.lora_dropout(x) if self._has_dropout else x
        if self._quantized:
            # As PEFT's 4-bit LoRA layer: the update in the adapter's dtype (fp32; under autocast,
            # the autocast dtype), added in the dtype the base output and the residual stream have.
            a, b = self.lora_A.weight, self.lora_B.weight
            return result + (F.linear(F.linear(xd.to(a.dtype), a), b) * self.scaling).to(result.dtype)
        h = F.linear(xd, self.lora_A.weight)
        out = torch.addmm(result.reshape(-1, self.out_features), h.reshape(-1, self.r),
                          self.lora_B.weight.t(), alpha=self.scaling)
        return out.view(result.shape)

    # -- merge ------------------------------------------------------------------------------------
    @torch.no_grad()
    def merge(self) -> None:
        """W ← W0 + s·B·A (DoRA: W ← m/‖W0 + s·B·A‖ ⊙ (W0 + s·B·A)). A no-op when already merged."""
        if self.merged:
            return
        if self._quantized:
            refuse_merge("merge an adapter")
        new = self.base_weight_oi() + self.delta_weight()
        if self.variant is not None:
            new = self.variant.merged(self, new)
        self.weight.data.copy_(new.t() if self.fan_in_fan_out else new)
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Restore W0 exactly up to float rounding. A no-op when not merged."""
        if not self.merged:
            return
        w = self.base_weight_oi()
        if self.variant is not None:
            w = self.variant.unmerged(self, w)
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
        return (f"in={self.in_features}, out={self.out_features}, {self.method} r={self.r}, "
                f"alpha={self.alpha}, fan_in_fan_out={self.fan_in_fan_out}, merged={self.merged}")


class LoRAEmbedding(nn.Module):
    """LoRA around an nn.Embedding: E[ids] + s·(Aᵀ[ids])·Bᵀ.

    As PEFT (and loralib), A (r×num_embeddings) starts at zero and B (dim×r) at N(0, 1), so the
    update is zero at start; PEFT names them `lora_embedding_A` / `lora_embedding_B`. No dropout
    (PEFT applies none to embeddings). The method, named or as PEFT's flags, must be one whose entry allows
    embeddings (`Method.embeddings`; not DoRA).
    """

    def __init__(self, base: nn.Embedding, r: int, alpha: float, *, method: str | None = None,
                 **peft_flags: object):
        super().__init__()
        method = method_entry(method or method_of_flags(**peft_flags))
        if not method.embeddings:
            raise ValueError(f"method {method.name!r} adapts linear layers only, not embeddings")
        self.num_embeddings, self.embedding_dim = base.weight.shape
        self.weight = base.weight
        self.padding_idx = base.padding_idx
        self.max_norm, self.norm_type = base.max_norm, base.norm_type
        self.scale_grad_by_freq, self.sparse = base.scale_grad_by_freq, base.sparse
        self.r, self.alpha = r, alpha
        self.method = method.name
        self.scaling = method.scale(alpha, r)
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
