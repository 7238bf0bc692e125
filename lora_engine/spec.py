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

from lora_engine.budget import resolve_budget
from lora_engine.catalog import ALL_TASKS, CUSTOM_TASKS, METHODS, TASKS, TaskInfo, method_defaults
from lora_engine.errors import SpecError
from lora_engine.model_ref import MODEL_ALIASES, base_model_problem, base_pooling

MAX_RANK = 1024
UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")

# Every number of a spec is finite and inside these bounds: (low, high, low inclusive). The
# bounds are generous for real use and small enough that no value overflows a 32-bit column,
# a step counter or the device (`grad_accum: 1e9` would spend forever on step 0).
BOUNDS: dict[str, tuple[float, float, bool]] = {
    "rank": (1, MAX_RANK, True),
    "alpha": (0, 65536, False),
    "lr": (0, 1.0, False),
    "head_lr": (0, 1.0, False),
    "epochs": (0, 1000, False),
    "max_steps": (1, 10_000_000, True),
    "batch_size": (1, 4096, True),
    "grad_accum": (1, 1024, True),
    "weight_decay": (0, 10.0, True),
    "max_length": (1, 32768, True),
    "seed": (0, 2**31 - 1, True),
    "eval_size": (1, 10_000_000, True),
    "eval_every": (0, 10_000_000, True),
    "eval_holdout": (0, 1_000_000, True),
    "patience": (0, 1000, True),
    "min_delta": (0, 1.0, True),
}
AUTO = "auto"
AUTO_FIELDS = ("lr", "epochs", "batch_size")  # a number or "auto"
HALF_OPEN = {"dropout": "[0, 1)", "warmup_ratio": "[0, 1)"}  # 0 <= x < 1


class TrainingSpec(BaseModel):
    """What to fine-tune and how. `None` means "the task's default", "auto" a value worked out
    from the data set's size (lora_engine.budget); see `resolved()`."""

    # allow_inf_nan=False: "nan"/"inf" are refused by pydantic too, whatever path built the spec.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    task: str
    method: Literal[METHODS] = "lora"  # type: ignore[valid-type]
    rank: int = 8
    alpha: float | None = None  # default: 2 * rank
    dropout: float = 0.0
    targets: list[str] | None = None  # None: the task's/architecture's default; ["all-linear"]
    base_model: str | None = None
    lr: float | Literal["auto"] | None = AUTO  # auto: the method's default for the architecture
    head_lr: float | None = None
    epochs: float | Literal["auto"] | None = AUTO  # auto: from the data size (unless max_steps)
    max_steps: int | None = None
    batch_size: int | Literal["auto"] = AUTO
    grad_accum: int = 1
    warmup_ratio: float | None = None
    weight_decay: float = 0.01
    max_length: int | None = None
    seed: int = 42
    eval_size: int | None = None  # rows of the validation split to score; None: all
    # What the classifier reads (catalog.POOLINGS): the first token ("cls") or the mean of the
    # last layer over the real tokens ("mean"); auto: the base model's own (model_ref.base_pooling).
    # Classification and regression only.
    pooling: Literal["auto", "cls", "mean"] = AUTO
    # Evaluation during training (classification/regression), on `eval_holdout` rows held out of
    # the training split: every `eval_every` optimizer steps (0: never); the best evaluation's
    # weights become the adapter; stop after `patience` evaluations without an improvement of more
    # than `min_delta` (0: never early). None: the automatic budget's choice (lora_engine.budget).
    eval_every: int | None = None
    eval_holdout: int | None = None
    patience: int | None = None
    min_delta: float = 0.0
    # Custom tasks: a registered data set's id (the orchestrator's jobs) or a JSONL file (the
    # engine used alone; the worker passes the stored, hash-checked file).
    dataset: str | None = None
    init_from: str | None = None  # an adapter folder to start from (lineage)

    @property
    def info(self) -> TaskInfo:
        return TASKS[self.task]

    @property
    def needs_train_rows(self) -> bool:
        """True while a value still waits for the training set's size (`resolved(train_rows=)`)."""
        if self.method == "none":
            return False
        auto_epochs = self.epochs in (None, AUTO) and not self.max_steps
        return auto_epochs or self.batch_size == AUTO or self.eval_every is None

    def resolved(self, train_rows: int | None = None) -> TrainingSpec:
        """The same spec with every default filled in: what actually runs.

        Defaults that depend on the data (auto epochs and batch size, evaluation during training)
        are filled only when `train_rows` (the training split's row count) is given; until then
        they stay "auto"/None, and the worker resolves them from the file it trains on.
        """
        info = self.info
        base_model = self.base_model or info.base_model
        if self.method == "none":
            # Nothing is trained: no rank, no training defaults; only what evaluation reads. The
            # base model is scored as it is, with its own pooling (untuned.py).
            return self.model_copy(update={"rank": 0, "base_model": base_model,
                                           "max_length": self.max_length or info.max_length,
                                           "lr": None, "epochs": None})
        pooling = self.pooling
        if pooling == AUTO and not info.is_generation:
            pooling = base_pooling(base_model)
        full = self.method == "full"
        arch = MODEL_ALIASES.get(self.base_model or info.base_model)
        method = method_defaults(info, self.method, arch, self.rank)
        update: dict[str, Any] = {
            "alpha": self.alpha if self.alpha is not None else float(2 * self.rank),
            "base_model": base_model,
            "pooling": pooling,
            "lr": self.lr if self.lr not in (None, AUTO) else method["lr"],
            "head_lr": self.head_lr if self.head_lr is not None else method["head_lr"],
            "warmup_ratio": self.warmup_ratio if self.warmup_ratio is not None else info.warmup_ratio,
            "max_length": self.max_length or info.max_length,
            "targets": self.targets if (self.targets is not None or full) else method["targets"],
        }
        epochs = None if self.epochs in (None, AUTO) else self.epochs
        if self.max_steps:
            update["epochs"] = None
        if train_rows is not None and self.needs_train_rows:
            b = resolve_budget(train_rows=train_rows, kind=info.kind,
                               batch_size=None if self.batch_size == AUTO else self.batch_size,
                               epochs=epochs, max_steps=self.max_steps, grad_accum=self.grad_accum,
                               eval_every=self.eval_every, eval_holdout=self.eval_holdout,
                               patience=self.patience)
            update.update(batch_size=b.batch_size, epochs=b.epochs, eval_every=b.eval_every,
                          eval_holdout=b.eval_holdout, patience=b.patience)
        return self.model_copy(update=update)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def allowed_range(name: str) -> str:
    if name in HALF_OPEN:
        return f"in {HALF_OPEN[name]}"
    low, high, low_inclusive = BOUNDS[name]
    lo, hi = _fmt(low), _fmt(high)
    return f"between {lo} and {hi}" if low_inclusive else f"> {lo} and <= {hi}"


def _bound_problems(v: dict[str, Any]) -> list[str]:
    """Each finite numeric field outside its bounds, with the bounds in the message (NaN and
    infinities are refused by pydantic, reported with the same wording in `validate_spec`)."""
    problems = []
    for name, (low, high, low_inclusive) in BOUNDS.items():
        value = v.get(name)
        if not _number(value) or not math.isfinite(value):
            continue  # absent, None, or reported by pydantic
        if not ((value >= low if low_inclusive else value > low) and value <= high):
            problems.append(f"{name}: must be {allowed_range(name)} (got {value!r})")
    for name in HALF_OPEN:
        value = v.get(name)
        if _number(value) and math.isfinite(value) and not 0.0 <= value < 1.0:
            problems.append(f"{name}: must be {allowed_range(name)} (got {value!r})")
    return problems


# Fields only training reads: given with method 'none' they would be silently ignored.
UNTUNED_UNUSED = ("alpha", "targets", "lr", "head_lr", "epochs", "max_steps", "warmup_ratio", "init_from")


def _untuned_problems(v: dict[str, Any]) -> list[str]:
    problems = [f"{name}: not used by method 'none' (it evaluates the base model, trains nothing)"
                for name in UNTUNED_UNUSED if v.get(name) not in (None, AUTO)]
    if v.get("rank", 0) != 0:
        problems.append(f"rank: method 'none' trains nothing; leave rank out or give 0 (got {v['rank']!r})")
    return problems


def _cross_field_problems(v: dict[str, Any]) -> list[str]:
    """Checks that need more than one field, tolerant of fields pydantic already rejected."""
    problems: list[str] = []
    task = v.get("task")
    if task is not None and task not in TASKS:
        problems.append(f"task: unknown task {task!r}; allowed: {', '.join(ALL_TASKS)}")
    method = v.get("method", "lora")
    if method not in METHODS:
        problems.append(f"method: unknown method {method!r}; allowed: {', '.join(METHODS)}")
    if method == "none":
        problems += _untuned_problems(v)
        problems += _bound_problems({k: x for k, x in v.items() if k != "rank"})
    else:
        problems += _bound_problems(v)
    if v.get("epochs") not in (None, AUTO) and v.get("max_steps") is not None:
        problems.append("epochs/max_steps: give one budget, not both")
    targets = v.get("targets")
    if isinstance(targets, list) and (not targets or any(not isinstance(t, str) or not t for t in targets)):
        problems.append("targets: must be a non-empty list of module names (or ['all-linear'])")
    if v.get("eval_every") and task in TASKS and TASKS[task].is_generation:
        problems.append("eval_every: evaluation during training is for classification and regression "
                        "tasks (a generation task is scored once, at the end)")
    if v.get("eval_every") and v.get("eval_holdout") == 0:
        problems.append("eval_holdout: evaluation during training needs held-out rows (give >= 1)")
    if v.get("pooling") not in (None, AUTO):
        if task in TASKS and TASKS[task].is_generation:
            problems.append("pooling: only a classification or regression head pools; "
                            f"task {task!r} generates text (leave pooling out)")
        elif method == "none":
            problems.append("pooling: not used by method 'none' (it evaluates the base model as it is, "
                            "with the base model's own pooling)")
    if method == "full" and targets:
        problems.append("targets: not used by method 'full' (it trains every weight)")

    dataset = v.get("dataset")
    if task in CUSTOM_TASKS and not dataset:
        problems.append(f"dataset: task {task!r} needs a JSONL data set (--dataset FILE)")
    if task in TASKS and task not in CUSTOM_TASKS and dataset:
        problems.append(f"dataset: task {task!r} uses its own data; --dataset is for custom tasks")
    if isinstance(dataset, str) and dataset and not UUID_RE.match(dataset) and not Path(dataset).is_file():
        problems.append(f"dataset: no such file or data set id {dataset!r}")

    base = v.get("base_model")
    if isinstance(base, str):
        generation = task in TASKS and TASKS[task].is_generation
        problem = base_model_problem(base, needs_causal=generation)
        if problem:
            problems.append(problem)
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
        auto_reported: set[str] = set()
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"]) or "spec"
            if err["loc"] and err["loc"][0] in AUTO_FIELDS:
                # A number-or-"auto" field: pydantic reports each branch; one line says both.
                name = str(err["loc"][0])
                if name not in auto_reported:
                    auto_reported.add(name)
                    problems.append(f"{name}: must be a finite number {allowed_range(name)}, or 'auto' "
                                    f"(got {err.get('input')!r})")
                continue
            if err["type"] == "extra_forbidden":
                allowed = ", ".join(TrainingSpec.model_fields)
                problems.append(f"{where}: unknown field; allowed fields: {allowed}")
            elif err["type"] == "literal_error" and where == "method":
                continue  # reported below with the allowed values
            elif err["type"] == "finite_number" and where in BOUNDS | HALF_OPEN:
                problems.append(f"{where}: must be a finite number {allowed_range(where)} "
                                f"(got {err.get('input')!r})")
            else:
                problems.append(f"{where}: {err['msg']} (got {err.get('input')!r})")
    problems += _cross_field_problems(raw)
    if problems or spec is None:
        raise SpecError(problems or ["spec could not be parsed"])
    return spec
