"""Gradient checkpointing for our forwards: a layer's activations recomputed in the backward pass.

A run turns it on with Hugging Face's own switch (`model.activation_checkpointing_enable`), so the
reference forward (the model's own) and ours obey the same flag, `model.is_activation_checkpointing`.
Non-reentrant checkpointing: the base is frozen under LoRA, so a layer's inputs need not require
grad, and the dropout masks are replayed (the RNG state is restored), so a step computes the same
numbers with it as without.

Whole layers: only each layer's input is kept, and one layer's activations are alive at a time in
the backward pass. Selective recomputation (keeping the weight matmuls' outputs, recomputing what
lies between them) was measured too (bench/RESULTS.md): on MiniLM it kept 0.51-0.67 of the
activations for 8-44 % more CPU time, where whole layers keep 0.38 for 37-57 % more.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


def enabled(model: nn.Module) -> bool:
    """Recompute in the backward pass: the model asks for it and this forward will be backpropagated."""
    asked = bool(getattr(model, "is_activation_checkpointing", False))
    return asked and model.training and torch.is_grad_enabled()


def call(model: nn.Module, layer: Callable[..., torch.Tensor], *args, **kwargs) -> torch.Tensor:
    """`layer(*args, **kwargs)`, its activations kept for the backward pass or recomputed there."""
    if enabled(model):
        return checkpoint(layer, *args, use_reentrant=False, **kwargs)
    return layer(*args, **kwargs)


def set_enabled(model: nn.Module, on: bool) -> None:
    """Switch it for a run (a cached base keeps what the last run set, so every run sets it)."""
    if on:
        if not getattr(model, "supports_gradient_checkpointing", False):
            from lora_engine.errors import LoraConfigError

            raise LoraConfigError(f"{type(model).__name__} does not support gradient checkpointing; "
                                  "leave gradient_checkpointing off")
        model.activation_checkpointing_enable({"use_reentrant": False})
    elif getattr(model, "is_activation_checkpointing", False):
        model.activation_checkpointing_disable()
