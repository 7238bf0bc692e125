"""The training spec: the one contract between the CLI, the registry and the engine.

Importable without torch. `validate_spec` checks a whole submission before anything is queued or
loaded and reports every problem at once, in one `SpecError`.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from lora_engine.catalog import ALL_TASKS, CUSTOM_TASKS, METHODS, TASKS, TaskInfo
from lora_engine.errors import SpecError

# Offline aliases. The first two are real pretrained models installed from the package
# registry; the tiny ones are random-init models built from a config, for fast tests.
MODEL_ALIASES: dict[str, str] = {
    "minilm-l6": "bert",
    "smollm2-135m": "llama",
    "tiny-gpt2": "gpt2",
    "tiny-bert": "bert",
    "tiny-roberta": "roberta",
    "tiny-llama": "llama",
}
CAUSAL_ARCHS = {"gpt2", "llama"}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
MAX_RANK = 1024


class TrainingSpec(BaseModel):
    """What to fine-tune and how. `None` means "the task's default" (see `resolved()`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    task: str
    method: Literal["lora", "rslora", "dora", "full"] = "lora"
    rank: int = 8
    alpha: float | None = None  # default: 2 * rank
    dropout: float = 0.0
    targets: list[str] | None = None  # None: the task's/architecture's default; ["all-linear"]
    base_model: str | None = None
    lr: float | None = None
    head_lr: float | None = None
    epochs: float | None = None
    max_steps: int | None = None
    batch_size: int = 32
    grad_accum: int = 1
    warmup_ratio: float | None = None
    weight_decay: float = 0.01
    max_length: int | None = None
    seed: int = 42
    eval_size: int | None = None  # rows of the validation split to score; None: all
    dataset: str | None = None  # a tenant's JSONL file (custom tasks)
    init_from: str | None = None  # an adapter folder to start from (lineage)

    @property
    def info(self) -> TaskInfo:
        return TASKS[self.task]

    def resolved(self) -> TrainingSpec:
        """The same spec with every task default filled in: what actually runs."""
        info = self.info
        full = self.method == "full"
        return self.model_copy(
            update={
                "alpha": self.alpha if self.alpha is not None else float(2 * self.rank),
                "base_model": self.base_model or info.base_model,
                "lr": self.lr if self.lr is not None else (info.full_lr if full else info.lora_lr),
                "head_lr": self.head_lr if self.head_lr is not None else (None if full else info.head_lr),
                "epochs": self.epochs if (self.epochs is not None or self.max_steps) else 1.0,
                "warmup_ratio": self.warmup_ratio if self.warmup_ratio is not None else info.warmup_ratio,
                "max_length": self.max_length or info.max_length,
                "targets": self.targets if (self.targets is not None or full) else (
                    list(info.targets) if info.targets else None
                ),
            }
        )


def _positive(name: str, value: Any, problems: list[str]) -> None:
    if value is None:
        return
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        return  # pydantic reports the type
    if value <= 0:
        problems.append(f"{name}: must be > 0 (got {value})")


def _cross_field_problems(v: dict[str, Any]) -> list[str]:
    """Checks that need more than one field, tolerant of fields pydantic already rejected."""
    problems: list[str] = []
    task = v.get("task")
    if task is not None and task not in TASKS:
        problems.append(f"task: unknown task {task!r}; allowed: {', '.join(ALL_TASKS)}")
    method = v.get("method", "lora")
    if method not in METHODS:
        problems.append(f"method: unknown method {method!r}; allowed: {', '.join(METHODS)}")
    rank = v.get("rank", 8)
    if isinstance(rank, int) and not isinstance(rank, bool) and not 1 <= rank <= MAX_RANK:
        problems.append(f"rank: must be between 1 and {MAX_RANK} (got {rank})")
    for name in ("alpha", "lr", "head_lr", "epochs", "batch_size", "grad_accum", "max_length",
                 "max_steps", "eval_size"):
        _positive(name, v.get(name), problems)
    dropout = v.get("dropout", 0.0)
    if isinstance(dropout, int | float) and not 0.0 <= dropout < 1.0:
        problems.append(f"dropout: must be in [0, 1) (got {dropout})")
    warmup = v.get("warmup_ratio")
    if isinstance(warmup, int | float) and not 0.0 <= warmup < 1.0:
        problems.append(f"warmup_ratio: must be in [0, 1) (got {warmup})")
    wd = v.get("weight_decay", 0.0)
    if isinstance(wd, int | float) and wd < 0:
        problems.append(f"weight_decay: must be >= 0 (got {wd})")
    if v.get("epochs") is not None and v.get("max_steps") is not None:
        problems.append("epochs/max_steps: give one budget, not both")
    targets = v.get("targets")
    if isinstance(targets, list) and (not targets or any(not isinstance(t, str) or not t for t in targets)):
        problems.append("targets: must be a non-empty list of module names (or ['all-linear'])")
    if method == "full" and targets:
        problems.append("targets: not used by method 'full' (it trains every weight)")

    dataset = v.get("dataset")
    if task in CUSTOM_TASKS and not dataset:
        problems.append(f"dataset: task {task!r} needs a JSONL data set (--dataset FILE)")
    if task in TASKS and task not in CUSTOM_TASKS and dataset:
        problems.append(f"dataset: task {task!r} uses its own data; --dataset is for custom tasks")
    if isinstance(dataset, str) and dataset and not Path(dataset).is_file():
        problems.append(f"dataset: no such file {dataset!r}")

    base = v.get("base_model")
    if isinstance(base, str):
        if base not in MODEL_ALIASES and not Path(base).is_dir() and not _HUB_ID.match(base):
            problems.append(
                f"base_model: {base!r} is neither a known alias ({', '.join(MODEL_ALIASES)}), "
                "a local model folder, nor a hub id like 'org/name'"
            )
        elif (task in TASKS and TASKS[task].is_generation
              and MODEL_ALIASES.get(base, "gpt2") not in CAUSAL_ARCHS):
            problems.append(f"base_model: task {task!r} generates text and needs a causal LM, not {base!r}")
    init_from = v.get("init_from")
    if isinstance(init_from, str) and not (Path(init_from) / "adapter_config.json").is_file():
        problems.append(f"init_from: {init_from!r} is not an adapter folder (no adapter_config.json)")
    return problems


def validate_spec(data: dict[str, Any] | TrainingSpec) -> TrainingSpec:
    """Validate a whole submission; raise one SpecError listing every problem."""
    raw = data.model_dump(exclude_unset=True) if isinstance(data, TrainingSpec) else dict(data)
    problems: list[str] = []
    spec: TrainingSpec | None = None
    try:
        spec = TrainingSpec.model_validate(raw)
    except ValidationError as exc:
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"]) or "spec"
            if err["type"] == "extra_forbidden":
                allowed = ", ".join(TrainingSpec.model_fields)
                problems.append(f"{where}: unknown field; allowed fields: {allowed}")
            elif err["type"] == "literal_error" and where == "method":
                continue  # reported below with the allowed values
            else:
                problems.append(f"{where}: {err['msg']} (got {err.get('input')!r})")
    problems += _cross_field_problems(raw)
    if problems or spec is None:
        raise SpecError(problems or ["spec could not be parsed"])
    return spec
