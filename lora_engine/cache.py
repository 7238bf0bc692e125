"""A warm worker's base-model cache: load a base once, serve many LoRA jobs from it.

This is the point of multi-tenant LoRA: the base weights are frozen, so after a job whose method
leaves the base as loaded (`methods.Method.changes_base` False: LoRA, rsLoRA, DoRA) the base model
is exactly what was loaded, and only the small parts a job creates need to go: its LoRA layers and
its classification head. `checkout()` hands out the resident model (loading it when the
key (name, kind, num_labels, quantize) changed); `checkin()` makes it pristine again:

1. every LoRA layer is unmerged and replaced by a plain Linear / Conv1D / Embedding holding the
   very same base Parameter objects (no copy);
2. the head's parameters are restored from the copy taken at load time, and the pooling its
   config says (`config.classifier_pooling`, set by each job) is put back as loaded;
3. gradients are dropped, every parameter is made trainable again and the model set to eval mode,
   as `from_pretrained` leaves it;
4. a fingerprint of the base weights (the exact integer sum of each tensor's bit patterns, taken
   at load time) is recomputed; any difference — a job that merged and did not unmerge, or wrote into a
   frozen weight — evicts the model instead of serving it. A job whose method changes the base
   (`full`, or an initialisation that rewrites W0 such as PiSSA's) is checked in `dirty=True`:
   evicted without looking.

A job that trains on a cached base therefore starts from the same model as a cold load.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from lora_engine.inject import head_module_names, lora_modules, set_module
from lora_engine.layers import LoRAEmbedding, LoRALinear
from lora_engine.quantize import is_quantized_linear


def _plain_twin(layer: nn.Module) -> nn.Module:
    """The module `layer` wrapped, rebuilt around the same weight and bias Parameters (a quantised
    base: the very bitsandbytes layer it wrapped)."""
    if isinstance(layer, LoRALinear) and layer.quantized_base is not None:
        return layer.quantized_base
    if isinstance(layer, LoRAEmbedding):
        plain = nn.Embedding(layer.num_embeddings, layer.embedding_dim, padding_idx=layer.padding_idx,
                             max_norm=layer.max_norm, norm_type=layer.norm_type,
                             scale_grad_by_freq=layer.scale_grad_by_freq, sparse=layer.sparse, device="meta")
        plain.weight = layer.weight
        return plain
    if layer.fan_in_fan_out:
        from transformers.pytorch_utils import Conv1D

        plain = Conv1D(layer.out_features, layer.in_features)
    else:
        plain = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None, device="meta")
    plain.weight = layer.weight
    if layer.bias is not None:
        plain.bias = layer.bias
    return plain


def strip_lora(model: nn.Module) -> int:
    """Unmerge and remove every LoRA layer in place, keeping the base Parameters. Returns the count."""
    layers = lora_modules(model)
    for name, layer in layers:
        layer.unmerge()
        if not isinstance(layer, LoRALinear | LoRAEmbedding):
            raise TypeError(f"unknown LoRA layer type {type(layer).__name__} at {name}")
        set_module(model, name, _plain_twin(layer))
    return len(layers)


def _in_heads(name: str, heads: list[str]) -> bool:
    return any(name == h or name.startswith(h + ".") for h in heads)


_SAME_WIDTH_INT = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def bit_sum(tensor: torch.Tensor) -> int:
    """The sum of a tensor's elements read as integers of their width (int64, wrapping): exact and
    order-free, so any write that changes a bit of one element changes it. On CPU through numpy:
    ~0.1 s for SmolLM2's 135M weights, where float64 sums of w and w² took ~1 s (a cold job's)."""
    bits = tensor.detach().reshape(-1).view(_SAME_WIDTH_INT[tensor.element_size()])
    if bits.device.type == "cpu":
        return int(np.add.reduce(bits.numpy(), dtype=np.int64))
    return int(bits.sum(dtype=torch.int64))


@torch.no_grad()
def base_fingerprint(model: nn.Module, heads: list[str]) -> dict[str, int]:
    """`bit_sum` per base tensor (tied tensors summed once): cheap, and any write into a weight
    changes it."""
    out: dict[str, int] = {}
    seen: dict[tuple, int] = {}
    # A 4-bit layer's packed weight and quantisation state are left out: no job writes them (a
    # merge into one is refused, lora_engine.quantize), and bitsandbytes itself rewrites the state
    # (its CPU kernel repacks it at the first inference call).
    quantized = tuple(f"{n}.weight." for n, m in model.named_modules() if is_quantized_linear(m))
    for name, p in model.state_dict().items():
        if _in_heads(name, heads) or not p.is_floating_point() or name.startswith(quantized):
            continue
        view = (p.data_ptr(), p.dtype, tuple(p.shape), p.stride(), p.device)
        if view not in seen:
            seen[view] = bit_sum(p)
        out[name] = seen[view]
    return out


class BaseModelCache:
    """Keeps the last base model resident between jobs (one at a time; see module doc)."""

    def __init__(self, loader: Callable | None = None):
        if loader is None:
            from lora_engine.models import load_base_model

            loader = load_base_model
        self._loader = loader
        self._key: tuple | None = None
        self._model: nn.Module | None = None
        self._tokenizer = None
        self._heads: list[str] = []
        self._head_copy: dict[str, torch.Tensor] = {}
        self._fingerprint: dict[str, int] = {}
        self._pooling: str | None = None
        self._out = False
        self.hits = 0
        self.loads = 0
        self.evictions = 0

    @property
    def key(self) -> tuple | None:
        return self._key

    @staticmethod
    def key_of(name: str, kind: str, num_labels: int | None = None, quantize: str | None = None) -> tuple:
        """The cache key of a base: a quantised base is another model than the same base in full
        precision (an nf4 job never trains on a cached bf16 base, nor the other way round)."""
        return (name, kind, num_labels, quantize)

    def checkout(self, name: str, kind: str, num_labels: int | None = None, quantize: str | None = None):
        """(model, tokenizer) for a job: the resident one when the key matches, else a fresh load."""
        if self._out:
            raise RuntimeError("the cached base model is already checked out; check it in first")
        key = self.key_of(name, kind, num_labels, quantize)
        if self._model is not None and key == self._key:
            self.hits += 1
        else:
            self.clear()
            model, tokenizer = (self._loader(name, kind, num_labels, quantize=quantize) if quantize
                                else self._loader(name, kind, num_labels))
            self._model, self._tokenizer, self._key = model, tokenizer, key
            self._heads = head_module_names(model)
            self._head_copy = {n: t.detach().clone() for n, t in model.state_dict().items()
                               if _in_heads(n, self._heads)}
            self._fingerprint = base_fingerprint(model, self._heads)
            self._pooling = getattr(model.config, "classifier_pooling", None)
            self.loads += 1
        self._out = True
        return self._model, self._tokenizer

    @torch.no_grad()
    def reset_heads(self) -> None:
        """Put the head tensors of the checked-out model back as loaded (a re-evaluation does this
        between adapters, so an adapter that saves no pooler scores with the pristine one)."""
        if not self._out or self._model is None:
            raise RuntimeError("no cached base model is checked out")
        state = self._model.state_dict()
        for name, saved in self._head_copy.items():
            state[name].copy_(saved)

    def checkin(self, *, dirty: bool = False) -> bool:
        """Return the checked-out model; True when it stays cached, False when it was evicted.

        `dirty`: the job's method changed the base (`methods.Method.changes_base`): evict it.
        """
        if not self._out:
            return False
        self._out = False
        if self._model is None:
            return False
        if dirty:
            self._evict()
            return False
        try:
            self._restore()
        except Exception:
            self._evict()
            raise
        if base_fingerprint(self._model, self._heads) != self._fingerprint:
            self._evict()
            return False
        return True

    @torch.no_grad()
    def _restore(self) -> None:
        model = self._model
        strip_lora(model)
        state = model.state_dict()
        for name, saved in self._head_copy.items():
            state[name].copy_(saved)
        model.config.classifier_pooling = self._pooling
        for p in model.parameters():
            p.grad = None
            p.requires_grad_(p.is_floating_point())  # a 4-bit base's packed bytes never take one
        model.eval()

    def _evict(self) -> None:
        self.evictions += 1
        self.clear()

    def clear(self) -> None:
        """Drop the resident model (frees its memory once no job holds it)."""
        self._model = self._tokenizer = self._key = None
        self._heads, self._head_copy, self._fingerprint = [], {}, {}
        self._out = False
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
