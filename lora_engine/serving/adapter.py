"""An adapter folder read for serving: its LoRA layers around the resident base's own weights, its
classification head, its lorafleet.json, and the bytes it holds.

Checking is `adapters.io.load_adapter`'s, run on a skeleton of the base built on the meta device
(no storage): every file, key and shape is checked exactly as `adapter predict` checks it, before
anything touches the resident model. The skeleton then says which layers the adapter targets and
with which rank, alpha and method; the served `LoRALinear`s are built around the resident layers
and given the file's tensors. The base's weights are never copied or changed, so what an adapter
holds is its A, B (and DoRA magnitude) and its head: `bytes`.

What one resident base cannot serve per row is refused with an AdapterError that says so: LoRA on
embeddings, trained biases of the body (`bias` other than "none"), saved modules other than the
classification head, and methods that write into the base weights (`Method.changes_base`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from lora_engine.adapters.folder import AdapterMeta, read_adapter_meta
from lora_engine.adapters.io import head_rows, load_adapter, read_adapter_files
from lora_engine.errors import AdapterError
from lora_engine.inject import head_module_names, lora_modules
from lora_engine.layers import LoRAEmbedding, LoRALinear, is_lora_param
from lora_engine.methods import adapter_method, peft_flags

LORA_SUFFIXES = ("lora_A.weight", "lora_B.weight", "lora_magnitude")


@dataclass
class ServedAdapter:
    key: str
    meta: AdapterMeta
    layers: dict[str, LoRALinear]  # qualified name of the resident layer -> its served update
    heads: dict[str, nn.Module] = field(default_factory=dict)  # head name -> this adapter's own head
    bytes: int = 0


def skeleton(model: nn.Module, num_labels: int | None = None) -> nn.Module:
    """The model's architecture on the meta device (no storage), for `load_adapter`'s checks."""
    config = copy.deepcopy(model.config)
    if num_labels is not None:
        config.num_labels = num_labels
    with torch.device("meta"):
        return type(model)(config)


def label_count(folder: Path, meta: AdapterMeta) -> int | None:
    """The classifier's label count, found as `load_for_inference` finds it."""
    if meta.kind != "classification":
        return None
    return meta.num_labels or len(meta.label_names) or head_rows(folder)


def read_served_adapter(key: str, folder: str | Path, model: nn.Module, *, kind: str,
                        base_aliases: set[str]) -> ServedAdapter:
    """The adapter in `folder`, checked against the resident `model`, ready to route to."""
    folder = Path(folder)
    meta = read_adapter_meta(folder)
    if meta.kind != kind:
        raise AdapterError(f"adapter {key!r} is a {meta.kind} adapter; this base serves {kind}")
    if meta.base_model not in base_aliases:
        raise AdapterError(f"adapter {key!r} was trained on {meta.base_model!r}, not on this base "
                           f"({sorted(base_aliases)[0]!r})")
    files = read_adapter_files(folder)
    method = adapter_method(files.settings.method)
    if method.changes_base:
        raise AdapterError(f"adapter {key!r} uses {method.name}, which changes the base weights: "
                           "it cannot share a resident base")
    if (files.config.get("bias") or "none") != "none":
        raise AdapterError(f"adapter {key!r} trains biases of the base model (bias="
                           f"{files.config.get('bias')!r}); served adapters must use bias 'none'")
    shadow = skeleton(model, label_count(folder, meta))
    load_adapter(shadow, files)  # every check `adapter predict` makes, on no storage
    heads = head_module_names(shadow)
    extra = sorted({k.rsplit(".", 1)[0] for k in files.weights if not is_lora_param(k)
                    and not any(k.startswith(h + ".") for h in heads)})
    if extra:
        raise AdapterError(f"adapter {key!r} saves modules of the base body ({', '.join(extra[:5])}); "
                           "only LoRA layers and the classification head can be served per request")
    flags = peft_flags(method.name)
    layers: dict[str, LoRALinear] = {}
    size = 0
    with torch.random.fork_rng(devices=[]), torch.no_grad():  # LoRALinear's init draws; kept out of
        for name, planned in lora_modules(shadow):                # the caller's random stream
            if isinstance(planned, LoRAEmbedding):
                raise AdapterError(f"adapter {key!r} adapts the embedding {name!r}; serving routes "
                                   "LoRA on linear layers only")
            layer = LoRALinear(model.get_submodule(name).base if _served(model, name)
                               else model.get_submodule(name), planned.r, planned.alpha, **flags)
            for suffix in LORA_SUFFIXES:
                tensor = files.weights.get(f"{name}.{suffix}")
                if tensor is not None:
                    target = layer.get_parameter(suffix)
                    target.copy_(tensor.to(device=target.device, dtype=target.dtype))
                    size += target.numel() * target.element_size()
            layer.requires_grad_(False)
            layers[name] = layer.eval()
        own_heads = _heads(shadow, files.weights, heads, model)
    size += sum(t.numel() * t.element_size() for h in own_heads.values() for t in h.state_dict().values())
    return ServedAdapter(key, meta, layers, own_heads, size)


def _served(model: nn.Module, name: str) -> bool:
    from lora_engine.serving.layer import ServedLinear

    return isinstance(model.get_submodule(name), ServedLinear)


def _heads(shadow: nn.Module, weights: dict[str, torch.Tensor], heads: list[str],
           model: nn.Module) -> dict[str, nn.Module]:
    """This adapter's head modules (those it saves), materialised from the skeleton and filled
    from the file; a head it does not save is the resident base's (none is owned)."""
    param = next(model.parameters())
    out = {}
    for head in heads:
        saved = {k[len(head) + 1:]: v for k, v in weights.items() if k.startswith(head + ".")}
        if not saved:
            continue
        module = shadow.get_submodule(head).to_empty(device=param.device)
        state = module.state_dict()
        missing = sorted(set(state) - set(saved))
        if missing:
            raise AdapterError(f"the adapter's head {head!r} lacks {', '.join(missing)}")
        module.load_state_dict({k: v.to(dtype=state[k].dtype) for k, v in saved.items()})
        out[head] = module.eval().requires_grad_(False)
    return out
