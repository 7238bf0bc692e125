"""Quantised bases (QLoRA, Dettmers et al. 2023): the frozen base in 4-bit NF4, the adapter in full
precision.

`quantize: nf4` loads the base through bitsandbytes with transformers' `BitsAndBytesConfig`:
NF4 weights, double quantisation (the block scales quantised too) and bf16 compute, the recipe of
the paper and of PEFT's QLoRA guide. Every linear layer of the body becomes a bitsandbytes
`Linear4bit` (the output layer stays as loaded). Our LoRA layers wrap those as they wrap an
`nn.Linear` (`layers.LoRALinear`): the base output is the `Linear4bit`'s own forward, the update
s·B·A·x is added in full precision, and nothing is ever merged into the 4-bit weight.

What a run saves is a plain LoRA adapter of the unquantised base, as PEFT saves a QLoRA adapter:
its config names the base model, not a quantisation, and it loads on the full-precision base
(or a quantised one) like any other. Merging it into a 4-bit base would round the merged weight
back to NF4 and lose most of the update, so it is merged into the unquantised base.

bitsandbytes is an optional dependency (`pip install 'lorafleet[qlora]'`), imported only when a
quantised base is loaded.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lora_engine.errors import LoraConfigError

QUANT_TYPES = ("nf4",)
INSTALL_HINT = "pip install 'lorafleet[qlora]' (bitsandbytes)"


def bnb_config(quantize: str) -> Any:
    """transformers' `BitsAndBytesConfig` for `quantize` (QLoRA's NF4 recipe)."""
    if quantize not in QUANT_TYPES:
        raise LoraConfigError(f"quantize: unknown quantisation {quantize!r}; "
                              f"allowed: {', '.join(QUANT_TYPES)}")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as exc:
        raise LoraConfigError(f"quantize: {quantize} needs bitsandbytes on this worker: "
                              f"{INSTALL_HINT}") from exc
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=quantize,
                              bnb_4bit_compute_dtype=torch.bfloat16, bnb_4bit_use_double_quant=True)


def quantized_load_kwargs(quantize: str, device: torch.device) -> dict[str, Any]:
    """`from_pretrained` arguments that load a base quantised onto `device` (bitsandbytes
    quantises as the weights reach the device, so they are placed there at load, not moved after).
    The layers left unquantised (embeddings, norms, the output layer) load in bf16 on CUDA, where
    the run computes in bf16, and in fp32 on the CPU, where it computes in fp32."""
    return {"quantization_config": bnb_config(quantize), "device_map": {"": str(device)},
            "dtype": torch.bfloat16 if device.type == "cuda" else torch.float32}


def is_quantized_linear(module: nn.Module) -> bool:
    """True for a bitsandbytes 4-bit linear layer (known without importing bitsandbytes: its
    weight carries the quantisation state)."""
    return getattr(getattr(module, "weight", None), "quant_state", None) is not None


def linear_shape(module: nn.Module) -> tuple[int, int]:
    """(out_features, in_features) of a linear layer, quantised or not (a 4-bit weight's own shape
    is that of its packed bytes)."""
    if is_quantized_linear(module):
        return module.out_features, module.in_features
    return tuple(module.weight.shape)  # type: ignore[return-value]


def is_quantized_model(model: nn.Module) -> bool:
    return any(is_quantized_linear(m) for m in model.modules())


def refuse_merge(what: str) -> None:
    """A merge into a 4-bit weight: refused (it would round the update away)."""
    raise LoraConfigError(f"cannot {what} into an nf4-quantised base: the merged weight would be rounded "
                          "back to 4 bits, losing most of the update. Merge the adapter into the unquantised "
                          "base instead (load the base in full precision, then merge).")
