"""lora_engine: our own LoRA for Hugging Face transformers models, usable as a library.

    import lora_engine as le

    model = transformers.AutoModelForSequenceClassification.from_pretrained(...)
    le.inject_lora(model, le.LoraSettings(rank=8, alpha=16))
    le.mark_only_lora_as_trainable(model)
    ...  # train with any loop
    le.save_adapter(model, "out/", base_model_name="...", settings=...)  # a PEFT-format folder

Importing the package is cheap (no torch): the names below load their module on first use
(PEP 562), so the CLI can read the spec and the task catalog without importing torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# The engine modules that import no torch or transformers, declared once: what the CLI, the
# services and any other front door may import (docs/CONTRACTS.md cites this; a test imports
# each in a fresh interpreter, and checks that the orchestrator's imports of the engine are here).
TORCH_FREE = (
    "lora_engine",
    "lora_engine.adapter_merging",
    "lora_engine.adapters",
    "lora_engine.adapters.check",
    "lora_engine.adapters.digest",
    "lora_engine.adapters.folder",
    "lora_engine.adapters.importing",
    "lora_engine.adapters.modelcard",
    "lora_engine.atomic",
    "lora_engine.baseline",
    "lora_engine.budget",
    "lora_engine.catalog",
    "lora_engine.data",
    "lora_engine.data.custom",
    "lora_engine.errors",
    "lora_engine.methods",
    "lora_engine.model_ref",
    "lora_engine.packing",
    "lora_engine.safe_json",
    "lora_engine.safetensors_header",
    "lora_engine.schedule",
    "lora_engine.spec",
)

# public name -> the module that defines it
_PUBLIC = {
    "LoraSettings": "lora_engine.inject",
    "inject_lora": "lora_engine.inject",
    "mark_only_lora_as_trainable": "lora_engine.inject",
    "lora_state_dict": "lora_engine.inject",
    "merge_lora": "lora_engine.inject",
    "unmerge_lora": "lora_engine.inject",
    "export_merged": "lora_engine.inject",
    "write_merged_folder": "lora_engine.adapters.merged_export",
    "save_adapter": "lora_engine.adapters.io",
    "load_adapter": "lora_engine.adapters.io",
    "train": "lora_engine.recipe",
    "TrainHooks": "lora_engine.recipe",
    "TrainResult": "lora_engine.recipe",
    "TrainingSpec": "lora_engine.spec",
    "validate_spec": "lora_engine.spec",
    "load_for_inference": "lora_engine.predict",
    "evaluate_untuned": "lora_engine.untuned",
    "reevaluate": "lora_engine.reevaluation",
    "AdapterToScore": "lora_engine.reevaluation",
}

__all__ = [  # the same names as _PUBLIC (a test checks)
    "AdapterToScore",
    "LoraSettings",
    "TrainHooks",
    "TrainResult",
    "TrainingSpec",
    "evaluate_untuned",
    "export_merged",
    "inject_lora",
    "load_adapter",
    "load_for_inference",
    "lora_state_dict",
    "mark_only_lora_as_trainable",
    "merge_lora",
    "reevaluate",
    "save_adapter",
    "train",
    "unmerge_lora",
    "validate_spec",
    "write_merged_folder",
]

if TYPE_CHECKING:
    from lora_engine.adapters.io import load_adapter, save_adapter
    from lora_engine.adapters.merged_export import write_merged_folder
    from lora_engine.inject import (
        LoraSettings,
        export_merged,
        inject_lora,
        lora_state_dict,
        mark_only_lora_as_trainable,
        merge_lora,
        unmerge_lora,
    )
    from lora_engine.predict import load_for_inference
    from lora_engine.recipe import TrainHooks, TrainResult, train
    from lora_engine.reevaluation import AdapterToScore, reevaluate
    from lora_engine.spec import TrainingSpec, validate_spec
    from lora_engine.untuned import evaluate_untuned


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'lora_engine' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))
