"""The adapter folder, written atomically and read strictly: PEFT files, lorafleet.json, the card.

A folder holds `adapter_config.json` (PEFT's LoraConfig fields), `adapter_model.safetensors` (keys
as PEFT writes them: `base_model.model.<module>.lora_A.weight`, `...lora_B.weight`, DoRA's
`...lora_magnitude_vector`, whole saved modules such as `base_model.model.classifier.weight`),
`lorafleet.json` (`AdapterMeta`: task, labels, prompt template, ...; see `adapters.folder`) and,
for a trained run, a README.md model card. So an adapter made here loads with
`peft.PeftModel.from_pretrained`, and one PEFT saved loads here. A `full` fine-tune's folder
(`save_full_model`) is the model's own `save_pretrained` output with the same lorafleet.json and
card. Every folder is built beside its final place and renamed into it (`atomic.atomic_folder`).

`load_adapter` checks everything (files, format, config, every key and shape) before it changes the
model, so a bad adapter raises AdapterError and leaves the model as it was. A weights file is
checked torch-free (`adapters.check.check_weights`: a well-formed header, finite values) before
safetensors maps it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from lora_engine.adapters.check import check_weights
from lora_engine.adapters.digest import adapter_files_digest, folder_bytes
from lora_engine.adapters.folder import (
    CARD_NAME,
    CONFIG_NAME,
    KINDS_OF_PEFT_TASK,
    META_NAME,
    PEFT_TASK_OF_KIND,
    WEIGHTS_NAME,
    AdapterMeta,
    lora_numbers_problem,
    method_of_config,
    read_adapter_config,
    read_adapter_meta,
    write_adapter_meta,
    write_json,
)
from lora_engine.atomic import atomic_folder
from lora_engine.catalog import KINDS
from lora_engine.errors import AdapterError, LoraConfigError
from lora_engine.inject import (
    LoraSettings,
    head_module_names,
    inject_lora,
    lora_modules,
    lora_state_dict,
    mark_only_lora_as_trainable,
    plan_injection,
)
from lora_engine.layers import is_lora_param
from lora_engine.methods import Method, adapter_method, peft_flag_values
from lora_engine.model_ref import hub_id_of
from lora_engine.quantize import linear_shape
from lora_engine.safetensors_header import read_header

PEFT_PREFIX = "base_model.model."
# save_adapter's task_type: one of our kinds, or a PEFT task type as it is.
TASK_TYPES = {**PEFT_TASK_OF_KIND, **{t: t for t in ("SEQ_CLS", "CAUSAL_LM", "FEATURE_EXTRACTION")}}
_MAG_OURS, _MAG_PEFT = "lora_magnitude", "lora_magnitude_vector"


# -- key names ------------------------------------------------------------------------------------
def to_peft_key(name: str) -> str:
    if name.endswith("." + _MAG_OURS):
        name = name[: -len(_MAG_OURS)] + _MAG_PEFT
    return PEFT_PREFIX + name


def from_peft_key(key: str) -> str:
    name = key[len(PEFT_PREFIX):] if key.startswith(PEFT_PREFIX) else key
    # Older PEFT wrote the magnitude as `lora_magnitude_vector.weight`.
    for suffix in (f".{_MAG_PEFT}.weight", f".{_MAG_PEFT}"):
        if name.endswith(suffix):
            return name[: -len(suffix)] + "." + _MAG_OURS
    return name


# -- saving ---------------------------------------------------------------------------------------
def _target_modules(model: nn.Module) -> list[str] | str:
    """What PEFT must target to rebuild exactly our LoRA layers.

    The list of last name parts when PEFT's suffix matching selects exactly those modules; otherwise
    (e.g. `dense` also matching a pooler we did not adapt) a regex naming each module in full.
    """
    names = [n for n, _ in lora_modules(model)]
    suffixes = sorted({n.rsplit(".", 1)[-1] for n in names})
    selected = {n for n, _ in model.named_modules()
                if n and any(n == s or n.endswith("." + s) for s in suffixes)}
    if selected == set(names):
        return suffixes
    return "^(" + "|".join(re.escape(n) for n in names) + ")$"


def _check_layers_match(layers: list[tuple[str, nn.Module]], settings: LoraSettings) -> None:
    """The config is written from `settings`: refuse a file whose tensors would contradict it."""
    for name, m in layers:
        if (m.r, float(m.alpha), m.method) != (settings.rank, settings.lora_alpha, settings.method):
            raise AdapterError(
                f"layer {name!r} is {m.method} r={m.r} alpha={m.alpha}, but the settings given to "
                f"save_adapter say {settings.method} r={settings.rank} alpha={settings.lora_alpha}"
            )


def _finish_folder(tmp: Path, meta: AdapterMeta, card_stats: dict | None) -> None:
    """lorafleet.json and (with `card_stats`) the model card, into a folder being built; the card
    records the size of the files written so far (config, weights, lorafleet.json) as `adapter_bytes`."""
    write_adapter_meta(tmp, meta)
    if card_stats is not None:
        from lora_engine.adapters.modelcard import render_model_card

        stats = {**card_stats, "adapter_bytes": folder_bytes(tmp)}
        (tmp / CARD_NAME).write_text(render_model_card(meta, stats=stats), encoding="utf-8")


def _kind_of(task_type: str | None) -> str | None:
    if task_type in KINDS:
        return task_type
    kinds = KINDS_OF_PEFT_TASK.get(task_type or "")
    return kinds[0] if kinds else None


def save_adapter(model: nn.Module, folder: str | os.PathLike, *, base_model_name: str,
                 settings: LoraSettings, task_type: str | None = None,
                 modules_to_save: Sequence[str] | None = None, meta: AdapterMeta | None = None,
                 card_stats: dict | None = None, bias: str = "none",
                 state: dict[str, torch.Tensor] | None = None) -> Path:
    """Write the adapter of `model` to `folder` atomically (temp folder beside it, fsync, rename;
    an adapter already there is replaced only once the new one is complete).

    task_type: "classification" | "regression" | "generation" or a PEFT task type ("SEQ_CLS", ...).
    modules_to_save: whole modules saved with the adapter; None means the model's classification
    head(s) for SEQ_CLS, else none.
    meta: the lorafleet.json record (default: the base model, the method and the kind);
    card_stats: run statistics for a README.md model card (None: no card).
    state: the model's tensors by name, gathered whole from a sharded model (multidevice.sharding);
    they stand in for the model's own (None: the model's own are whole).
    """
    layers = lora_modules(model)
    if not layers:
        raise AdapterError("the model has no LoRA layers to save; call inject_lora first")
    _check_layers_match(layers, settings)
    peft_task = TASK_TYPES.get(task_type) if task_type is not None else None
    if task_type is not None and peft_task is None:
        raise AdapterError(f"unknown task_type {task_type!r}; allowed: {', '.join(TASK_TYPES)}")
    if meta is None:
        meta = AdapterMeta(base_model=base_model_name, kind=_kind_of(task_type), method=settings.method)
    elif (meta.base_model, meta.method) != (base_model_name, settings.method):
        raise AdapterError(f"the adapter's record says {meta.method} on {meta.base_model!r}, but "
                           f"save_adapter was given {settings.method} on {base_model_name!r}")
    if modules_to_save is None:
        modules_to_save = head_module_names(model) if peft_task == "SEQ_CLS" else []
    tensors = lora_state_dict(model, bias=bias, modules_to_save=modules_to_save)
    if state is not None:
        tensors = {n: state.get(n, t) for n, t in tensors.items()}
    entry = adapter_method(settings.method)
    if entry.changes_base:
        tensors = {**tensors, **_on_untouched_base(layers, tensors)}
    weights = {to_peft_key(n): t.detach().to("cpu").contiguous() for n, t in tensors.items()}
    # What the files describe: the method's stored form (a converted PiSSA/OLoRA: LoRA, rank 2r,
    # α' = 2α so that s = α'/2r = α/r is unchanged, as PEFT converts it).
    alpha = settings.lora_alpha * entry.stored_rank_factor
    config = {
        "peft_type": "LORA",
        "task_type": peft_task,
        # The hub id for an alias we ship, so PEFT and the Hub can resolve the base anywhere.
        "base_model_name_or_path": hub_id_of(base_model_name),
        "r": entry.stored_rank(settings.rank),
        "lora_alpha": int(alpha) if float(alpha).is_integer() else alpha,
        "lora_dropout": settings.dropout,
        # The flags of the method the files hold (init_lora_weights included: PEFT's True unless its
        # entry says otherwise).
        **adapter_method(entry.stored_method).config_flags(),
        "target_modules": _target_modules(model),
        "fan_in_fan_out": any(getattr(m, "fan_in_fan_out", False) for _, m in layers),
        "bias": bias,
        "modules_to_save": list(modules_to_save) or None,
        "inference_mode": True,
        "layers_to_transform": None,
        "layers_pattern": None,
        "rank_pattern": {},
        "alpha_pattern": {},
        "revision": None,
        "lora_bias": False,
    }
    folder = Path(folder)
    with atomic_folder(folder, replace=True) as tmp:
        write_json(tmp / CONFIG_NAME, config)
        save_file(weights, str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
        _finish_folder(tmp, meta, card_stats)
    return folder


def _on_untouched_base(layers: list[tuple[str, nn.Module]], tensors: dict[str, torch.Tensor]
                       ) -> dict[str, torch.Tensor]:
    """A PiSSA/OLoRA run's update as a plain LoRA of rank 2r on the untouched base, as PEFT's
    `subtract_mutated_init` computes it: W0 = W_res + s·B0·A0 and W0 + ΔW = W_res + s·B·A give
    ΔW = s·(B·A − B0·A0) = s·[B, −B0]·[A; A0]. `tensors`: the adapter's A and B by name."""
    out = {}
    for name, m in layers:
        a, b = tensors[f"{name}.lora_A.weight"], tensors[f"{name}.lora_B.weight"]
        out[f"{name}.lora_A.weight"] = torch.cat([a, m.initial_A.to(a.device, a.dtype)], dim=0)
        out[f"{name}.lora_B.weight"] = torch.cat([b, -m.initial_B.to(b.device, b.dtype)], dim=1)
    return out


def save_full_model(model: nn.Module, tokenizer, folder: str | os.PathLike, meta: AdapterMeta, *,
                    card_stats: dict | None = None, state: dict[str, torch.Tensor] | None = None) -> Path:
    """A `full` fine-tune: `save_pretrained` (safetensors) + tokenizer + lorafleet.json (+ card),
    atomically, like an adapter. `state`: the model's state dict gathered whole from a sharded
    model (None: the model's own)."""
    folder = Path(folder)
    with atomic_folder(folder, replace=True) as tmp:
        model.save_pretrained(tmp, state_dict=state)
        tokenizer.save_pretrained(tmp)
        _finish_folder(tmp, meta, card_stats)
    return folder


# -- reading --------------------------------------------------------------------------------------
def settings_from_config(config: dict) -> LoraSettings:
    """The LoraSettings a PEFT adapter_config describes; AdapterError for features we do not run."""
    unsupported = [k for k in ("rank_pattern", "alpha_pattern", "layers_to_transform") if config.get(k)]
    if config.get("lora_bias"):
        unsupported.append("lora_bias")
    if config.get("init_lora_weights") not in (None, *peft_flag_values("init_lora_weights")):
        unsupported.append(f"init_lora_weights={config.get('init_lora_weights')!r}")
    if unsupported:
        raise AdapterError(f"adapter uses PEFT features lorafleet does not support: {', '.join(unsupported)}")
    problem = lora_numbers_problem(config)
    if problem:
        raise AdapterError(f"{CONFIG_NAME}: {problem}")
    r, alpha = config["r"], float(config["lora_alpha"])
    method = method_of_config(config)
    if adapter_method(method).stored_method != method:  # PiSSA/OLoRA: only ever stored converted
        raise AdapterError(
            f"adapter_config.json: init_lora_weights={config.get('init_lora_weights')!r} is a {method} "
            "adapter as trained, which needs the residual base it ran on; save it converted to a plain "
            "LoRA on the untouched base (PEFT: save_pretrained(..., "
            "path_initial_model_for_weight_conversion=...)) and import that")
    targets = config.get("target_modules")
    # A string is "all-linear" or a regex matched against whole module names, as PEFT does.
    if isinstance(targets, list | tuple):
        targets = list(targets)
    elif not isinstance(targets, str):
        raise AdapterError(f"adapter_config.json: target_modules {targets!r} is not a list or a string")
    return LoraSettings(method=method, rank=r, alpha=alpha, dropout=float(config.get("lora_dropout") or 0.0),
                        targets=targets)


def _read_weights(folder: Path) -> dict[str, torch.Tensor]:
    path = folder / WEIGHTS_NAME
    if not path.is_file():
        hint = " (adapter_model.bin is pickle, which lorafleet never loads)" if (
            folder / "adapter_model.bin").exists() else ""
        raise AdapterError(f"{str(folder)!r}: {WEIGHTS_NAME} is missing{hint}")
    check_weights(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no __iter__
    except Exception as exc:  # safetensors raises its own error types for truncated / corrupt files
        raise AdapterError(f"{path}: unreadable safetensors file (truncated or corrupt): {exc}") from exc


def head_rows(folder: str | os.PathLike) -> int | None:
    """Output rows of the classification head saved in an adapter (its label count), read from
    the safetensors header only; None when it saves no head."""
    for key, info in read_header(Path(folder) / WEIGHTS_NAME).items():
        if key.endswith(("classifier.weight", "score.weight", "out_proj.weight")) and info.shape:
            return info.shape[0]
    return None


def _expected_shapes(model: nn.Module, plan: list[tuple[str, nn.Module]], settings: LoraSettings) -> dict:
    """Our key name -> shape for every LoRA tensor injection with `settings` would create."""
    r = settings.rank
    out: dict[str, tuple[int, ...]] = {}
    for name, m in plan:
        if isinstance(m, nn.Embedding):
            num, dim = m.weight.shape
            out[f"{name}.lora_embedding_A"] = (r, num)
            out[f"{name}.lora_embedding_B"] = (dim, r)
            continue
        w = m.weight.shape
        fan_in, fan_out = (w[0], w[1]) if m.__class__.__name__ == "Conv1D" else linear_shape(m)[::-1]
        out[f"{name}.lora_A.weight"] = (r, fan_in)
        out[f"{name}.lora_B.weight"] = (fan_out, r)
        if adapter_method(settings.method).variant == "dora":  # DoRA's magnitude, one per output row
            out[f"{name}.lora_magnitude"] = (fan_out,)
    return out


def _mismatch(folder: Path, config: dict, problems: list[str]) -> AdapterError:
    base = config.get("base_model_name_or_path") or "an unrecorded base model"
    shown = "; ".join(problems[:5]) + (f"; ... ({len(problems) - 5} more)" if len(problems) > 5 else "")
    return AdapterError(
        f"adapter {str(folder)!r} does not fit this model (it was made for {base!r}): {shown}"
    )


@dataclass(frozen=True)
class AdapterFiles:
    """An adapter folder read and parsed (config, settings, tensors under our names), not yet
    checked against any model."""

    folder: Path
    config: dict
    settings: LoraSettings
    weights: dict[str, torch.Tensor]


def read_adapter_files(folder: str | os.PathLike) -> AdapterFiles:
    folder = Path(folder)
    config = read_adapter_config(folder)
    settings = settings_from_config(config)
    weights = {from_peft_key(k): v for k, v in _read_weights(folder).items()}
    return AdapterFiles(folder, config, settings, weights)


def load_adapter(model: nn.Module, folder: str | os.PathLike | AdapterFiles) -> dict:
    """Inject the adapter in `folder` into `model` and load its tensors; return its config.

    Strict: every tensor in the file must land in the model with its exact shape and every LoRA
    tensor the config implies must be in the file. Everything is checked before the model changes.
    The LoRA tensors and the saved modules (heads) are left trainable, the rest frozen.
    """
    files = folder if isinstance(folder, AdapterFiles) else read_adapter_files(folder)
    folder, config, settings, weights = files.folder, files.config, files.settings, files.weights
    try:
        plan = plan_injection(model, settings)
    except LoraConfigError as exc:
        raise _mismatch(folder, config, [str(exc)]) from exc
    expected = _expected_shapes(model, plan, settings)
    base_state = {n: t.shape for n, t in model.state_dict().items()}
    problems: list[str] = []
    for key, shape in expected.items():
        if key not in weights:
            problems.append(f"missing tensor {key!r}")
        elif tuple(weights[key].shape) != shape:
            problems.append(f"{key!r} has shape {tuple(weights[key].shape)}, this model needs {shape}")
    bias = config.get("bias") or "none"
    saved_modules = _saved_module_problems(weights, expected, base_state, bias, problems)
    if problems:
        raise _mismatch(folder, config, problems)

    inject_lora(model, settings)
    params = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    with torch.no_grad():
        for key, tensor in weights.items():
            target = params.get(key, buffers.get(key))
            target.copy_(tensor.to(device=target.device, dtype=target.dtype))
    mark_only_lora_as_trainable(model, bias=bias, modules_to_save=sorted(_top_saved(saved_modules, model)))
    return config


def _saved_module_problems(weights: dict, lora_keys, base_state: dict, bias: str, problems: list[str]
                           ) -> set[str]:
    """Check the tensors that are not LoRA (saved modules, biases) against the model's state;
    append problems; return the modules they belong to."""
    saved_modules: set[str] = set()
    for key, tensor in weights.items():
        if key in lora_keys:
            continue
        if is_lora_param(key) or key not in base_state:
            problems.append(f"unexpected tensor {key!r} (no such parameter in this model)")
        elif tuple(tensor.shape) != tuple(base_state[key]):
            problems.append(f"{key!r} has shape {tuple(tensor.shape)}, "
                            f"this model has {tuple(base_state[key])}")
        elif not (bias != "none" and key.endswith(".bias")):  # biases follow the bias mode
            saved_modules.add(key.rsplit(".", 1)[0])
    return saved_modules


def _lora_tensor_shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    """Our key name -> shape of every LoRA tensor the model carries now."""
    return {n: tuple(t.shape) for n, t in model.state_dict().items() if is_lora_param(n)}


def swap_adapter(model: nn.Module, files: AdapterFiles) -> bool:
    """Put another adapter's tensors into a model that already carries LoRA layers, in place: no
    re-injection, no copy of the base. True when done; False (model untouched) when the adapter's
    layers differ (other targets, rank, or the method's variant, e.g. DoRA vs not) or a method on
    either side changes the base (`Method.changes_base`): strip and `load_adapter` it instead.

    The adapter's method and scaling (alpha, rsLoRA) are set on every layer; its saved modules
    (heads) are copied into the model's. A module it does not save keeps whatever the model holds:
    the caller restores pristine heads first. Checked whole before anything changes, like `load_adapter`.
    """
    weights, settings = files.weights, files.settings
    current = _lora_tensor_shapes(model)
    wanted = {k: tuple(v.shape) for k, v in weights.items() if is_lora_param(k)}
    layers = lora_modules(model)
    entry = adapter_method(settings.method)
    if wanted != current or any(_unswappable(adapter_method(m.method), entry) for _, m in layers):
        return False
    problems: list[str] = []
    bias = files.config.get("bias") or "none"
    state = model.state_dict()
    _saved_module_problems(weights, current, {n: t.shape for n, t in state.items()}, bias, problems)
    if problems:
        raise _mismatch(files.folder, files.config, problems)
    with torch.no_grad():
        for key, tensor in weights.items():
            state[key].copy_(tensor.to(device=state[key].device, dtype=state[key].dtype))
    for _, m in layers:
        m.alpha, m.method = settings.lora_alpha, entry.name
        m.scaling = entry.scale(settings.lora_alpha, m.r)
    return True


def _unswappable(layer: Method, adapter: Method) -> bool:
    """True when an adapter of method `adapter` cannot take the place of a layer's of method `layer`:
    another variant computes the update otherwise, and a base one of them changed is not the other's."""
    return layer.variant != adapter.variant or layer.changes_base or adapter.changes_base


def _top_saved(saved: set[str], model: nn.Module) -> set[str]:
    """Collapse saved parameter owners (e.g. `classifier.dense`, `classifier.out_proj`) to their head."""
    heads = head_module_names(model)
    out = set()
    for name in saved:
        head = next((h for h in heads if name == h or name.startswith(h + ".")), None)
        out.add(head or name)
    return out


__all__ = [
    "CONFIG_NAME",
    "META_NAME",
    "WEIGHTS_NAME",
    "AdapterFiles",
    "AdapterMeta",
    "adapter_files_digest",
    "head_rows",
    "load_adapter",
    "read_adapter_config",
    "read_adapter_files",
    "read_adapter_meta",
    "save_adapter",
    "save_full_model",
    "settings_from_config",
    "swap_adapter",
]
