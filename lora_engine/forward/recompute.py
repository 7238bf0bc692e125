"""Gradient checkpointing for our forwards: recompute in the backward pass the cheapest activations
that halve what a step keeps for it.

A run turns it on with Hugging Face's own switch (`model.activation_checkpointing_enable`), so the
reference forward (the model's own, which recomputes every layer) and ours obey the same flag,
`model.is_activation_checkpointing`. Non-reentrant checkpointing: the base is frozen under LoRA, so
a layer's inputs need not require grad, and the dropout masks are replayed (the RNG state is
restored), so a step computes the same numbers with it as without.

What to recompute (`plan`), from an estimate of what autograd keeps (`LayerBytes`, computed from
the shapes by `encoder` and `decoder`):

1. Every layer's attention core (scores, softmax, dropout, probabilities·V) is recomputed from its
   q, k and v. Its tensors grow with the row length squared (B·H·L·L each: the probabilities, and
   under dropout the mask, a float tensor on the CPU, and the dropped probabilities) and cost two
   small matmuls to redo: on MiniLM-L6 at 32 × 128 they are ~45 % of a layer's activations (31 %
   of the step's), and recomputing all of them was within noise of no checkpointing in a probe
   (0.98× the CPU time; the allocations they no longer make pay for the matmuls). Where a fused
   kernel runs (CUDA, long rows) it keeps no probabilities and the estimate counts none.
2. Then whole layers, bottom first, the fewest that bring the estimated kept activations to half
   of what the step keeps without checkpointing (the loss's share included: a vocabulary-wide LM
   head keeps and, in the backward pass, creates several rows × vocabulary tensors that no layer
   recompute removes). With checkpointing on, the decoder's head and loss run in chunks of rows,
   each recomputed in the backward pass (`decoder.causal_lm_loss`); the plan still counts the whole
   loss (`decoder.loss_bytes` says why), so the chunking is margin. Bottom first, because the
   backward pass reaches them last: the upper layers' activations are freed by then, so a
   recomputed layer's transient adds to a smaller sum.

Why not every layer whole: under LoRA the frozen base computes no weight gradients, so the backward
pass costs about one forward, and recomputing MiniLM's six layers added 33-48 % to a step (the
issue's goal is ≤ 35 %) for 0.38 of the memory where 0.5 was asked. The plan recomputes three
whole layers and three cores there (0.43 of the memory), and 26 of SmolLM2-135M's 30 layers, whose
vocabulary-wide loss held a third of the step's peak before it was chunked (0.48; with the chunked
loss every layer whole measured 0.18 at 1.27× the CPU time). Measured in bench/RESULTS.md.
Selective recomputation that keeps every weight matmul's output and redoes the rest was measured
too: 0.67 of the memory on MiniLM, short of the goal alone.

The estimate counts per token what our forwards save (listed in `encoder._footprints` and
`decoder._footprints`; against the resident memory measured per layer, within ~5 %: MiniLM 170 MB
estimated vs 164 MB a layer, SmolLM2 19 vs 18 MB a core and 66 vs 70 MB a layer recomputed whole);
the layer being differentiated counts once more (its recomputed activations and their gradients
are alive together).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

KEEP, ATTENTION, LAYER = "keep", "attention", "layer"  # what a layer recomputes: nothing, its core, all


@dataclass(frozen=True)
class LayerBytes:
    """What the backward pass needs kept of one layer, in bytes (an estimate from the shapes)."""

    core: int  # the attention core's tensors (probabilities, dropout mask, dropped probabilities)
    rest: int  # the rest: projections' outputs, norms' and activations' inputs, dropout masks
    inputs: int  # what recomputing the whole layer keeps: its input


def enabled(model: nn.Module) -> bool:
    """Recompute in the backward pass: the model asks for it and this forward will be backpropagated."""
    asked = bool(getattr(model, "is_activation_checkpointing", False))
    return asked and model.training and torch.is_grad_enabled()


def plan(model: nn.Module, layers: Sequence[LayerBytes], outside: int) -> list[str]:
    """What each layer (bottom first) recomputes: KEEP, ATTENTION or LAYER. `outside`: the bytes the
    rest of the step keeps at its peak (embeddings, head, loss), which no layer recompute removes."""
    if not enabled(model):
        return [KEEP] * len(layers)
    plain = outside + sum(layer.core + layer.rest for layer in layers)
    # In the backward pass the layer being differentiated has its activations alive again
    # (recomputed) beside their gradients: one layer's worth on top of what stays kept.
    working = max((layer.core + layer.rest for layer in layers), default=0)
    kept = outside + sum(layer.rest for layer in layers)
    modes = [ATTENTION] * len(layers)
    for i, layer in enumerate(layers):
        if 2 * (kept + working) <= plain:
            break
        modes[i] = LAYER
        kept -= layer.rest - layer.inputs
    return modes


def run(how: str, layer: Callable[..., torch.Tensor], *args, **kwargs) -> torch.Tensor:
    """`layer(*args, **kwargs)`, recomputed in the backward pass when `how` (its plan) is LAYER."""
    if how == LAYER:
        return checkpoint(layer, *args, use_reentrant=False, **kwargs)
    return layer(*args, **kwargs)


def attention(how: str, attend: Callable[..., torch.Tensor], *args, **kwargs) -> torch.Tensor:
    """`attend(*args, **kwargs)` (a Packing's attention), recomputed in the backward pass when
    `how` (its layer's plan) is ATTENTION."""
    if how == ATTENTION:
        return checkpoint(attend, *args, use_reentrant=False, **kwargs)
    return attend(*args, **kwargs)


def adapter_bytes(layer: nn.Module, tokens: int, element: int) -> int:
    """Bytes a layer's adapters keep per step: each adapted linear's input, and under dropout its
    mask too (a float tensor on the CPU)."""
    total = 0
    for module in layer.modules():
        if hasattr(module, "lora_A") and hasattr(module, "in_features"):
            total += module.in_features * (2 if getattr(module, "dropping", False) else 1)
    return total * tokens * element


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
