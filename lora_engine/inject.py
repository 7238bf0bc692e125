"""Injection: replace a model's target layers by LoRA layers, and the operations on the result.

One function walks `named_modules()`, matches target names by suffix (PEFT semantics: a target
`q_proj` matches `model.layers.0.self_attn.q_proj`), and `setattr`s the LoRA layer on the parent.
Every problem (unknown method, bad rank, nothing matched) is found before the first module is
replaced, so a failed call leaves the model untouched.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from torch import nn

from lora_engine.errors import LoraConfigError
from lora_engine.layers import LORA_LAYERS, LoRAEmbedding, LoRALinear, is_conv1d, is_lora_param
from lora_engine.methods import ADAPTER_METHODS, BY_NAME
from lora_engine.quantize import linear_shape

ALL_LINEAR = "all-linear"
DEFAULT_TARGETS: dict[str, list[str]] = {
    "gpt2": ["c_attn"],
    "bert": ["query", "value"],
    "roberta": ["query", "value"],
    "llama": ["q_proj", "v_proj"],
}
HEAD_NAMES = ("classifier", "score")  # sequence-classification heads (BERT/RoBERTa, GPT-2/Llama)
BIAS_MODES = ("none", "all", "lora_only")


@dataclass(frozen=True)
class LoraSettings:
    """How to adapt a model. alpha None means 2·rank; targets None means the architecture default.

    `targets` may be a list of module-name suffixes, ["all-linear"], or a regex string that must
    match a whole qualified module name (PEFT's string form).
    """

    method: str = "lora"
    rank: int = 8
    alpha: float | None = None
    dropout: float = 0.0
    targets: list[str] | str | None = None

    @property
    def lora_alpha(self) -> float:
        return float(self.alpha) if self.alpha is not None else float(2 * self.rank)


def _arch(model: nn.Module) -> str:
    return getattr(getattr(model, "config", None), "model_type", "") or type(model).__name__


def _is_linear(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or is_conv1d(module)


def linear_layer_names(model: nn.Module) -> list[str]:
    """Qualified names of every Linear / Conv1D (what a user may target)."""
    return [n for n, m in model.named_modules() if _is_linear(m) or isinstance(m, LoRALinear)]


def head_module_names(model: nn.Module) -> list[str]:
    """Names of the sequence-classification head(s) to train and save with the adapter.

    BERT's pooler, tanh(W·h_CLS), feeds its classifier: left frozen it caps what LoRA on q,v can
    reach (STS-B on MiniLM-L6, one epoch: Pearson 0.24 with it frozen, 0.83 trained; full FT 0.75),
    so it is trained and saved with the head, as PEFT does for any `modules_to_save` entry.
    """
    heads = [n for n in HEAD_NAMES if isinstance(getattr(model, n, None), nn.Module)]
    prefix = getattr(model, "base_model_prefix", "")
    body = getattr(model, prefix, None) if prefix else None
    if heads and isinstance(getattr(body, "pooler", None), nn.Module):
        heads.append(f"{prefix}.pooler")
    return heads


def default_targets(model: nn.Module) -> list[str]:
    """Default LoRA targets for the model's architecture (attention query and value, as the paper)."""
    arch = _arch(model)
    if arch not in DEFAULT_TARGETS:
        raise LoraConfigError(
            f"no default LoRA targets for architecture {arch!r} (known: {', '.join(DEFAULT_TARGETS)}); "
            f"pass targets explicitly, e.g. from its linear layers: {_short_list(linear_layer_names(model))}"
        )
    return list(DEFAULT_TARGETS[arch])


def _short_list(names: Sequence[str], limit: int = 40) -> str:
    more = f", ... ({len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def _excluded_from_all_linear(model: nn.Module) -> set[str]:
    """The output layer (lm_head) and classification heads are never LoRA targets under all-linear."""
    out: set[str] = set()
    get_out = getattr(model, "get_output_embeddings", None)
    out_emb = get_out() if callable(get_out) else None
    for name, module in model.named_modules():
        if module is out_emb:
            out.add(name)
    heads = head_module_names(model)
    for name, _ in model.named_modules():
        if any(name == h or name.startswith(h + ".") for h in heads):
            out.add(name)
    return out


def _matches(name: str, targets: list[str] | str) -> bool:
    if isinstance(targets, str):
        return re.fullmatch(targets, name) is not None
    return any(name == t or name.endswith("." + t) for t in targets)


def plan_injection(model: nn.Module, settings: LoraSettings) -> list[tuple[str, nn.Module]]:
    """Validate `settings` against `model` and return the (name, module) pairs to replace.

    Touches nothing. Raises LoraConfigError for an unknown method, a bad rank or dropout, targets
    matching nothing, or a model that already carries LoRA layers.
    """
    method = BY_NAME.get(settings.method)
    if method is None:
        raise LoraConfigError(f"unknown LoRA method {settings.method!r}; "
                              f"allowed: {', '.join(ADAPTER_METHODS)}")
    if not method.adapter:
        raise LoraConfigError(f"method {method.name!r} is {method.summary} and injects no LoRA layers; "
                              f"inject_lora accepts only {', '.join(ADAPTER_METHODS)}")
    if not isinstance(settings.rank, int) or isinstance(settings.rank, bool) or settings.rank <= 0:
        raise LoraConfigError(f"rank must be a positive integer, got {settings.rank!r}")
    if not 0.0 <= settings.dropout < 1.0:
        raise LoraConfigError(f"dropout must be in [0, 1), got {settings.dropout!r}")
    if settings.alpha is not None and settings.alpha <= 0:
        raise LoraConfigError(f"alpha must be > 0, got {settings.alpha!r}")
    if any(isinstance(m, LORA_LAYERS) for m in model.modules()):
        raise LoraConfigError("this model already has LoRA layers; load a fresh base model to inject again")

    targets = settings.targets if settings.targets is not None else default_targets(model)
    all_linear = targets == ALL_LINEAR or (isinstance(targets, list) and targets == [ALL_LINEAR])
    if all_linear:
        excluded = _excluded_from_all_linear(model)
        found = [(n, m) for n, m in model.named_modules() if _is_linear(m) and n not in excluded]
    else:
        if isinstance(targets, list) and not all(isinstance(t, str) and t for t in targets):
            raise LoraConfigError(f"targets must be non-empty module names, got {targets!r}")
        # Heads are trained whole (modules_to_save); a LoRA inside one would be redundant.
        heads = _excluded_from_all_linear(model)
        found = [(n, m) for n, m in model.named_modules()
                 if n and n not in heads and _matches(n, targets)]
    if not found:
        raise LoraConfigError(
            f"LoRA targets {targets!r} match no layer of this {_arch(model)} model; its linear layers "
            f"are: {_short_list(linear_layer_names(model))}"
        )
    for name, module in found:
        if isinstance(module, nn.Embedding):
            if not method.embeddings:
                raise LoraConfigError(f"layer {name!r} is an embedding; method {method.name!r} adapts "
                                      "linear layers only")
            low = min(module.weight.shape)
        elif _is_linear(module):
            low = min(linear_shape(module))
        else:
            raise LoraConfigError(
                f"target {name!r} is a {type(module).__name__}, not a Linear, Conv1D or Embedding; "
                f"linear layers are: {_short_list(linear_layer_names(model))}"
            )
        if settings.rank > low:
            raise LoraConfigError(
                f"rank {settings.rank} is too large for layer {name!r} of shape "
                f"{tuple(module.weight.shape) if isinstance(module, nn.Embedding) else linear_shape(module)}"
                ": "
                f"allowed ranks are 1..{low}"
            )
    return found


def set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Put `new` at the qualified name `name` of `model` (its parent's attribute)."""
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


def inject_lora(model: nn.Module, settings: LoraSettings) -> list[str]:
    """Replace the target layers of `model` in place by LoRA layers; return their qualified names."""
    found = plan_injection(model, settings)
    for name, module in found:
        if isinstance(module, nn.Embedding):  # plan_injection refused a method without embeddings
            layer = LoRAEmbedding(module, settings.rank, settings.lora_alpha, method=settings.method)
        else:
            layer = LoRALinear(module, settings.rank, settings.lora_alpha, settings.dropout,
                               method=settings.method)
        layer.train(module.training)
        set_module(model, name, layer)
    return [n for n, _ in found]


def lora_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, LORA_LAYERS)]


def _module_matches(name: str, wanted: Iterable[str]) -> bool:
    return any(name == w or name.endswith("." + w) for w in wanted)


def _saved_module_prefixes(model: nn.Module, modules_to_save: Sequence[str]) -> list[str]:
    prefixes = []
    for wanted in modules_to_save:
        hits = [n for n, _ in model.named_modules() if n and _module_matches(n, [wanted])]
        if not hits:
            raise LoraConfigError(
                f"modules_to_save entry {wanted!r} matches no module; top-level modules are: "
                f"{', '.join(n for n, _ in model.named_children())}"
            )
        prefixes += hits
    return prefixes


def _lora_bias_names(model: nn.Module) -> set[str]:
    return {f"{n}.bias" for n, m in lora_modules(model) if getattr(m, "bias", None) is not None}


def _kept(name: str, bias: str, saved: list[str], lora_biases: set[str]) -> bool:
    if is_lora_param(name):
        return True
    if any(name.startswith(p + ".") for p in saved):
        return True
    if bias == "all" and name.endswith("bias"):
        return True
    return bias == "lora_only" and name in lora_biases


def mark_only_lora_as_trainable(model: nn.Module, bias: str = "none",
                                modules_to_save: Sequence[str] = ()) -> int:
    """Freeze everything except the LoRA tensors, the chosen biases and `modules_to_save` (heads).

    bias: "none" | "all" (every bias) | "lora_only" (biases of LoRA-wrapped layers). Returns the
    number of trainable parameters.
    """
    if bias not in BIAS_MODES:
        raise LoraConfigError(f"bias must be one of {', '.join(BIAS_MODES)}, got {bias!r}")
    saved = _saved_module_prefixes(model, modules_to_save)
    lora_biases = _lora_bias_names(model)
    count = 0
    for name, param in model.named_parameters():
        param.requires_grad_(_kept(name, bias, saved, lora_biases))
        count += param.numel() if param.requires_grad else 0
    return count


def lora_state_dict(model: nn.Module, bias: str = "none", modules_to_save: Sequence[str] = ()) -> dict:
    """The adapter's tensors under the model's own qualified names (LoRA + biases + saved modules)."""
    if bias not in BIAS_MODES:
        raise LoraConfigError(f"bias must be one of {', '.join(BIAS_MODES)}, got {bias!r}")
    saved = _saved_module_prefixes(model, modules_to_save)
    lora_biases = _lora_bias_names(model)
    return {n: t for n, t in model.state_dict().items() if _kept(n, bias, saved, lora_biases)}


def merge_lora(model: nn.Module) -> None:
    """Fold every LoRA update into its base weight (idempotent)."""
    for _, m in lora_modules(model):
        m.merge()


def unmerge_lora(model: nn.Module) -> None:
    """Undo `merge_lora` (idempotent)."""
    for _, m in lora_modules(model):
        m.unmerge()


def export_merged(model: nn.Module, *, inplace: bool = False) -> nn.Module:
    """A plain transformers model: every LoRA layer replaced by a Linear/Conv1D/Embedding holding
    its merged weight, so `save_pretrained` writes a checkpoint `from_pretrained` loads strictly.

    Works on a deep copy unless `inplace` (which saves memory but consumes the LoRA model).
    """
    target = model if inplace else copy.deepcopy(model)
    for name, module in lora_modules(target):
        set_module(target, name, module.to_plain())
    return target
