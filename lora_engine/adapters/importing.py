"""Checking a PEFT adapter made elsewhere before lorafleet registers it (`lorafleet adapter import`).

Accepted: a LoRA adapter (peft_type LORA: plain, rsLoRA or DoRA) with its weights in safetensors
(a pickled adapter_model.bin is refused, never opened; `adapters.check` does these format checks
for `init_from` too), for a base model we can load whose name
matches the adapter's own `base_model_name_or_path`, and whose every tensor fits that base —
checked by loading it into the base model with `load_adapter`'s strict shape checks. Each refusal
says what was wrong and what is allowed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from lora_engine.adapters.folder import (
    CARD_NAME,
    CONFIG_NAME,
    KINDS_OF_PEFT_TASK,
    META_NAME,
    WEIGHTS_NAME,
    AdapterMeta,
    read_adapter_meta,
)
from lora_engine.catalog import TASKS
from lora_engine.errors import AdapterError
from lora_engine.model_ref import alias_of, base_model_problem, hub_id_of, is_folder_name

# The files that travel into the registry's copy; anything else in the folder stays behind.
IMPORTED_FILES = (CONFIG_NAME, WEIGHTS_NAME, CARD_NAME)


@dataclass(frozen=True)
class ForeignAdapter:
    folder: Path
    base_model: str  # the lorafleet name: an alias, a local folder or a hub id
    task: str
    kind: str
    method: str
    rank: int
    num_labels: int | None
    trainable_params: int
    total_params: int
    pooling: str = "cls"  # what the head reads: a lorafleet adapter's record says; PEFT's is [CLS]

    def meta(self) -> AdapterMeta:
        """lorafleet.json for the registry's copy."""
        return AdapterMeta.for_task(TASKS[self.task], base_model=self.base_model, method=self.method,
                                    num_labels=self.num_labels, pooling=self.pooling, imported=True)


def _same_base(a: str, b: str) -> bool:
    """Whether two base names agree; a folder path is not compared by its spelling (the same
    folder has many, and the strict load below checks every tensor against the base anyway)."""
    if is_folder_name(a) or is_folder_name(b):
        return True
    return alias_of(a) == alias_of(b) or hub_id_of(a) == hub_id_of(b)


def recorded_base(folder: str | os.PathLike) -> str | None:
    """The base model an adapter folder's adapter_config.json names (an alias for a shipped hub
    id), None when it names none; read without torch, after `adapter_folder_problems`."""
    from lora_engine.adapters.check import read_json_document

    recorded = read_json_document(Path(folder) / CONFIG_NAME).get("base_model_name_or_path")
    return alias_of(recorded) if isinstance(recorded, str) and recorded else None


def check_foreign_adapter(folder: str | os.PathLike, *, task: str | None = None,
                          base_model: str | None = None) -> ForeignAdapter:
    """Validate the adapter in `folder` for `task` (default: the task its lorafleet.json records)
    and `base_model` (default: the adapter's own, as named; the orchestrator resolves and confines
    it first, `services.inputs`)."""
    from lora_engine.adapters.check import adapter_folder_problems
    from lora_engine.adapters.io import head_rows, load_adapter, read_adapter_config, settings_from_config
    from lora_engine.models import load_base_model

    folder = Path(folder)
    # The format checks (LoRA, safetensors that really are safetensors, no pickle) without torch.
    problems = adapter_folder_problems(folder, None, what="adapter import")
    if problems:
        raise AdapterError("; ".join(problems))
    config = read_adapter_config(folder)
    settings = settings_from_config(config)
    if task is None:
        task = recorded_task(folder)
    if task not in TASKS:
        raise AdapterError(f"unknown task {task!r}; allowed: {', '.join(TASKS)}")
    info = TASKS[task]
    peft_task = config.get("task_type")
    kinds = KINDS_OF_PEFT_TASK.get(peft_task or "")
    if kinds is None or info.kind not in kinds:
        raise AdapterError(f"the adapter's task_type {peft_task!r} does not fit task {task!r} ({info.kind}); "
                           f"allowed: SEQ_CLS for classification/regression tasks, CAUSAL_LM for generation")
    recorded = config.get("base_model_name_or_path")
    if base_model is None:
        if not recorded:
            raise AdapterError("the adapter does not name its base model; give --base-model")
        base_model = alias_of(recorded)
    elif recorded and not _same_base(base_model, recorded):
        raise AdapterError(f"--base-model {base_model!r} does not match the adapter's base model "
                           f"{recorded!r}")
    problem = base_model_problem(base_model, needs_causal=info.kind == "generation")
    if problem:
        raise AdapterError(problem)
    num_labels = None
    if info.kind != "generation":
        rows = head_rows(folder)
        num_labels = info.num_labels or rows
        if rows is not None and num_labels != rows:
            raise AdapterError(f"the adapter's classification head has {rows} outputs; task {task!r} has "
                               f"{num_labels} labels")
        if num_labels is None:
            raise AdapterError("the adapter saves no classification head, and the task does not fix the "
                               "label count; save the head with the adapter (modules_to_save)")
    model, _ = load_base_model(base_model, info.kind, num_labels)
    load_adapter(model, folder)  # strict: every tensor must fit this base (AdapterError otherwise)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    pooling = read_adapter_meta(folder).pooling if (folder / META_NAME).is_file() else "cls"
    return ForeignAdapter(folder=folder, base_model=base_model, task=task, kind=info.kind,
                          method=settings.method, rank=settings.rank, num_labels=num_labels,
                          trainable_params=trainable, total_params=total, pooling=pooling)


def recorded_task(folder: Path) -> str:
    """The task a lorafleet adapter's own record names; a PEFT adapter made elsewhere names none,
    and a SEQ_CLS head alone does not say which task it was trained for."""
    task = read_adapter_meta(folder).task if (folder / META_NAME).is_file() else None
    if not task:
        raise AdapterError(f"the adapter does not say which task it was trained for (no task in "
                           f"{META_NAME}); give --task, one of: {', '.join(TASKS)}")
    return task
