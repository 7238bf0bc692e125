"""The adapter folder's layout and its JSON files, without torch (`adapters.io` writes the tensors).

    <folder>/adapter_config.json        PEFT's LoraConfig (absent in a `full` model folder)
             adapter_model.safetensors  the LoRA tensors and saved modules, PEFT's key names
             lorafleet.json             AdapterMeta: what a later user needs without the job's spec
             README.md                  the model card (modelcard.py)

`lorafleet.json` has one typed definition, `AdapterMeta`, one writer (`write_adapter_meta`) and
one reader (`read_adapter_meta`). The reader takes every file lorafleet has written: the full
record the recipe writes, the record of an imported adapter, and the bare `{"base_model": ...}`
(plus whatever `extra` the caller gave) that `save_adapter` wrote for library users; what a file
does not say (kind, method, base model) is read from its adapter_config.json, so a plain PEFT
adapter with no lorafleet.json reads too. Keys it does not know are kept and written back.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from lora_engine.catalog import KINDS, METHODS, POOLINGS, TaskInfo
from lora_engine.errors import AdapterError, shown
from lora_engine.methods import method_of_peft_config
from lora_engine.model_ref import alias_of
from lora_engine.safe_json import DocumentError, loads
from lora_engine.spec import BOUNDS, MAX_RANK, allowed_range

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
META_NAME = "lorafleet.json"
CARD_NAME = "README.md"
PEFT_TYPES = ("LORA",)
META_FORMAT = "lorafleet-adapter/1"
# The whole numbers a record holds, and their bounds (a head of 10**30 labels is no model's):
# label count, and max_length as a spec bounds it.
WHOLE_NUMBERS = {"num_labels": 100_000, "max_length": int(BOUNDS["max_length"][1])}
# The PEFT task type of each kind, and back: a SEQ_CLS adapter is a classifier or a regressor
# (read as a classifier when lorafleet.json does not say which).
PEFT_TASK_OF_KIND = {"classification": "SEQ_CLS", "regression": "SEQ_CLS", "generation": "CAUSAL_LM"}
KINDS_OF_PEFT_TASK = {task: tuple(k for k, t in PEFT_TASK_OF_KIND.items() if t == task)
                      for task in dict.fromkeys(PEFT_TASK_OF_KIND.values())}


def write_json(path: Path, data: Any) -> None:
    """The folder's JSON style: indented, keys sorted, a final newline (diffable, stable bytes)."""
    Path(path).write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _read_json_object(path: Path) -> dict:
    """The JSON object in `path`, read as every document from outside is (`safe_json`)."""
    try:
        data = loads(path.read_bytes(), what=path.name)
    except DocumentError as exc:
        raise AdapterError(f"{path}: not valid JSON ({exc.reason})") from None
    if not isinstance(data, dict):
        raise AdapterError(f"{path}: expected a JSON object")
    return data


def read_adapter_config(folder: str | os.PathLike) -> dict:
    """The adapter_config.json of `folder`, checked to be a LoRA adapter (AdapterError otherwise)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise AdapterError(f"adapter folder {str(folder)!r} does not exist")
    path = folder / CONFIG_NAME
    if not path.is_file():
        raise AdapterError(f"{str(folder)!r} is not an adapter folder: {CONFIG_NAME} is missing")
    config = _read_json_object(path)
    problem = peft_type_problem(config)
    if problem:
        raise AdapterError(f"{path}: {problem}")
    return config


def peft_type_problem(config: dict) -> str | None:
    """Why an adapter_config's peft_type is not one lorafleet runs (None: it is)."""
    if config.get("peft_type") in PEFT_TYPES:
        return None
    return (f"peft_type {str(config.get('peft_type'))[:40]!r} is not supported; "
            f"allowed: {', '.join(PEFT_TYPES)} (LoRA, rsLoRA, DoRA)")


def lora_numbers_problem(config: dict) -> str | None:
    """Why an adapter_config's `r`, `lora_alpha` or `lora_dropout` is not a value a training spec
    could hold (None: all are): a whole rank 1..MAX_RANK (not `true`, not 8.5), a finite alpha
    within the spec's bounds, a dropout in [0, 1)."""
    r, alpha, dropout = config.get("r"), config.get("lora_alpha"), config.get("lora_dropout")
    if type(r) is not int or not 1 <= r <= MAX_RANK:
        return f"r must be a whole number between 1 and {MAX_RANK} (got {shown(r)})"
    low, high, _ = BOUNDS["alpha"]
    if type(alpha) not in (int, float) or not low < alpha <= high:
        return f"lora_alpha must be a number {allowed_range('alpha')} (got {shown(alpha)})"
    if dropout is not None and (type(dropout) not in (int, float) or not 0 <= dropout < 1):
        return f"lora_dropout must be a number in [0, 1) (got {shown(dropout)})"
    return None


def method_of_config(config: dict) -> str:
    """The LoRA method an adapter_config.json describes (AdapterError for flags we do not run)."""
    try:
        return method_of_peft_config(config)
    except ValueError as exc:
        raise AdapterError(f"{CONFIG_NAME}: {exc}") from None


def prompt_template_for(task: str, kind: str) -> str | None:
    """How a generation adapter's input becomes its prompt (E2E: the MR template; custom: verbatim)."""
    if task == "e2e":
        from lora_engine.data.e2e import E2E_PROMPT

        return E2E_PROMPT
    return "{prompt}" if kind == "generation" else None


@dataclass(frozen=True)
class AdapterMeta:
    """lorafleet.json. `base_model` is lorafleet's name for the base (an alias such as `minilm-l6`,
    a local folder or a hub id; adapter_config.json carries the hub id); `kind` is classification,
    regression or generation; `spec` the resolved training spec (None for an imported adapter);
    `pooling` what a classifier's head reads (catalog.POOLINGS): older records and plain PEFT
    adapters say nothing and were trained on Hugging Face's [CLS] head, so "cls"."""

    base_model: str
    kind: str | None = None
    method: str = "lora"
    task: str | None = None
    label_names: tuple[str, ...] = ()
    num_labels: int | None = None
    text_fields: tuple[str, ...] = ()
    prompt_template: str | None = None
    max_length: int | None = None
    modules_to_save: tuple[str, ...] = ()
    pooling: str = "cls"
    metrics: dict[str, Any] = field(default_factory=dict)
    spec: dict[str, Any] | None = None
    imported: bool = False
    extra: dict[str, Any] = field(default_factory=dict)  # keys this version does not know

    @classmethod
    def for_task(cls, info: TaskInfo, *, base_model: str, method: str,
                 label_names: tuple[str, ...] | None = None, num_labels: int | None = None,
                 max_length: int | None = None, **rest: Any) -> AdapterMeta:
        """The record of an adapter for task `info`: its fields, labels and prompt template filled
        in from the catalog (label_names: the run's, for a custom task; num_labels: the label
        count for classification, 1 for regression, none for generation, unless given)."""
        labels = tuple(info.label_names if label_names is None else label_names)
        if num_labels is None:
            num_labels = len(labels) if info.kind == "classification" else (
                1 if info.kind == "regression" else None)
        return cls(base_model=base_model, kind=info.kind, method=method, task=info.name, label_names=labels,
                   num_labels=num_labels, text_fields=tuple(info.text_fields),
                   prompt_template=prompt_template_for(info.name, info.kind),
                   max_length=max_length or info.max_length, **rest)

    def to_json(self) -> dict[str, Any]:
        known = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        for name in ("label_names", "text_fields", "modules_to_save"):
            known[name] = list(known[name])
        return {**self.extra, "format": META_FORMAT, **known}

    @classmethod
    def from_json(cls, data: dict[str, Any], *, config: dict | None = None,
                  where: str = META_NAME) -> AdapterMeta:
        """Parse a lorafleet.json object; what it leaves out is taken from `config` (the
        adapter_config.json beside it). AdapterError naming `where` for anything malformed."""
        fmt = data.get("format", META_FORMAT)  # the first files had no format key
        if not (isinstance(fmt, str) and fmt.split("/")[0] == META_FORMAT.split("/")[0]):
            raise AdapterError(f"{where}: format {fmt!r} is not a lorafleet adapter record ({META_FORMAT})")
        if fmt != META_FORMAT:
            raise AdapterError(f"{where}: format {fmt!r} was written by a newer lorafleet; "
                               f"this one reads {META_FORMAT}")
        names = {f.name for f in fields(cls)} - {"extra"}
        values = {k: v for k, v in data.items() if k in names and v is not None}
        extra = {k: v for k, v in data.items() if k not in names and k not in ("format", "extra")}
        if config is not None:
            if not values.get("base_model") and isinstance(config.get("base_model_name_or_path"), str):
                values["base_model"] = alias_of(config["base_model_name_or_path"])
            values.setdefault("kind", KINDS_OF_PEFT_TASK.get(config.get("task_type") or "", KINDS)[0])
            values.setdefault("method", method_of_config(config))
        problems = []
        if not (isinstance(values.get("base_model"), str) and values["base_model"]):
            problems.append("it does not name its base model")
        if values.get("kind") is not None and values["kind"] not in KINDS:
            problems.append(f"kind {values['kind']!r} is not one of {', '.join(KINDS)}")
        if values.get("pooling", "cls") not in POOLINGS:
            problems.append(f"pooling {values['pooling']!r} is not one of {', '.join(POOLINGS)}")
        if values.get("method", "lora") not in METHODS:
            problems.append(f"method {values['method']!r} is not one of {', '.join(METHODS)}")
        for name, high in WHOLE_NUMBERS.items():
            if name in values and (type(values[name]) is not int or not 1 <= values[name] <= high):
                problems.append(f"a field has the wrong type ({name} must be a whole number between 1 and "
                                f"{high}, got {shown(values[name])})")
        try:
            for name in ("label_names", "text_fields", "modules_to_save"):
                if name in values:
                    values[name] = tuple(str(x) for x in values[name])
            for name in ("metrics", "spec"):
                if name in values and not isinstance(values[name], dict):
                    problems.append(f"{name} is not a JSON object")
        except (TypeError, ValueError) as exc:
            problems.append(f"a field has the wrong type ({exc})")
        if problems:
            raise AdapterError(f"{where}: " + "; ".join(problems))
        return cls(**values, extra=extra)


def write_adapter_meta(folder: str | os.PathLike, meta: AdapterMeta) -> Path:
    """Write lorafleet.json into `folder` (a folder being built: `atomic.atomic_folder`)."""
    path = Path(folder) / META_NAME
    write_json(path, meta.to_json())
    return path


def read_adapter_meta(folder: str | os.PathLike) -> AdapterMeta:
    """The AdapterMeta of an adapter folder (or a `full` model folder), kind always known: from
    lorafleet.json, completed from adapter_config.json where that file leaves something out."""
    folder = Path(folder)
    if not folder.is_dir():
        raise AdapterError(f"adapter folder {str(folder)!r} does not exist")
    path, has_config = folder / META_NAME, (folder / CONFIG_NAME).is_file()
    if not path.is_file() and not has_config:
        raise AdapterError(f"{str(folder)!r} has neither {META_NAME} nor {CONFIG_NAME}: not an adapter")
    data = _read_json_object(path) if path.is_file() else {}
    complete = all(data.get(k) for k in ("base_model", "kind", "method"))
    config = read_adapter_config(folder) if has_config and not complete else None
    meta = AdapterMeta.from_json(data, config=config, where=str(path))
    if meta.kind is None:
        raise AdapterError(f"{path}: it does not say whether the model classifies or generates (kind)")
    return meta
