"""The training spec: the one contract between the CLI, the registry and the engine.

Importable without torch. `validate_spec` checks a whole submission before anything is queued or
loaded and reports every problem at once, in one `SpecError`.
"""

from __future__ import annotations

import math
import re
import typing
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from lora_engine.budget import resolve_budget
from lora_engine.catalog import ALL_TASKS, CUSTOM_TASKS, METHODS, TASKS, TaskInfo, method_defaults
from lora_engine.errors import SpecError, shown
from lora_engine.methods import BY_NAME
from lora_engine.methods import method as method_entry
from lora_engine.model_ref import MODEL_ALIASES, base_arch, base_model_problem, base_pooling

MAX_RANK = 1024
# LoRA+'s default ηB/ηA (2^4, the LoRA+ paper's choice; PEFT's create_loraplus_optimizer has no default).
LORAPLUS_LR_RATIO = 16.0
MAX_DEVICES = 64
# Architectures whose base loads quantised (`quantize`): Llama-family causal LMs, whose linear
# layers bitsandbytes replaces and whose modules our LoRA layers and padding-free forward call.
QUANTIZABLE_ARCHS = ("llama",)
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
    "loraplus_lr_ratio": (1, 1024, True),
    "devices": (1, MAX_DEVICES, True),  # the fleet's own bound is a setting (max_job_devices)
}
# Text and lists are bounded too: base_model lands in a 255-character registry column, a path is
# at most PATH_MAX, and a module name or a list of them longer than these is no model's.
MAX_CHARS = {"task": 64, "base_model": 255, "dataset": 4096, "init_from": 4096}
MAX_TARGETS, MAX_TARGET_CHARS = 64, 200
AUTO = "auto"
AUTO_FIELDS = ("lr", "epochs", "batch_size")  # a number or "auto"
HALF_OPEN = {"dropout": "[0, 1)", "warmup_ratio": "[0, 1)"}  # 0 <= x < 1


def _integer_field(annotation: Any) -> bool:
    args = typing.get_args(annotation) or (annotation,)
    return int in args and float not in args


class TrainingSpec(BaseModel):
    """What to fine-tune and how. `None` means "the task's default", "auto" a value worked out
    from the data set's size (lora_engine.budget); see `resolved()`."""

    # allow_inf_nan=False: "nan"/"inf" are refused by pydantic too, whatever path built the spec.
    # strict: no coercion; `rank: true` is not 1, `rank: 8.5` not 8, `lr: "0.1"` not a number.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False, strict=True)

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
    # LoRA+ only: B's learning rate over A's (lr). None: LORAPLUS_LR_RATIO.
    loraplus_lr_ratio: float | None = None
    # Recompute each layer's activations in the backward pass instead of keeping them: 0.38-0.42x
    # the activation memory for 1.3-1.5x the step's CPU time (bench/bench_grad_ckpt.py); the
    # numbers trained are the same.
    gradient_checkpointing: bool = False
    # Devices one training run spans (data parallel, lora_engine.multidevice): the global batch
    # is split across them, so the run's math is that of one device.
    devices: int = 1
    # How a run of devices > 1 holds the model (lora_engine.multidevice.sharding): "replicate",
    # every rank the whole model (data parallel); "fsdp", each rank a 1/devices shard of every
    # weight, gradient and optimizer state (FSDP2, gathered a unit at a time for its forward and
    # backward); "auto", fsdp when the run's resident training state (weights, gradients and AdamW's
    # two moments of what trains) would not fit one CUDA device, else replicate (a CPU: replicate).
    # The numbers trained are the same either way: a checkpoint resumes under the other.
    sharding: Literal["auto", "replicate", "fsdp"] = AUTO
    # Load the frozen base quantised to 4-bit NF4 with double quantisation through bitsandbytes,
    # computing in bf16 (QLoRA, Dettmers et al. 2023): about a quarter of the base's memory. A
    # Llama-family causal base, an adapter method, a CUDA worker; the adapter is a plain LoRA
    # adapter of the unquantised base (lora_engine.quantize).
    quantize: Literal["nf4"] | None = None

    @property
    def info(self) -> TaskInfo:
        return TASKS[self.task]

    @property
    def needs_train_rows(self) -> bool:
        """True while a value still waits for the training set's size (`resolved(train_rows=)`)."""
        if not method_entry(self.method).trains:
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
        entry = method_entry(self.method)
        if not entry.trains:
            # Nothing is trained: no rank, no training defaults; only what evaluation reads. The
            # base model is scored as it is, with its own pooling (untuned.py).
            return self.model_copy(update={"rank": 0, "base_model": base_model,
                                           "max_length": self.max_length or info.max_length,
                                           "lr": None, "epochs": None})
        pooling = self.pooling
        if pooling == AUTO and not info.is_generation:
            pooling = base_pooling(base_model)
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
            "targets": self.targets if (self.targets is not None or not entry.adapter) else method["targets"],
        }
        if entry.lr_rule == "loraplus" and self.loraplus_lr_ratio is None:
            update["loraplus_lr_ratio"] = LORAPLUS_LR_RATIO
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


_INTEGER_FIELDS = frozenset(n for n, f in TrainingSpec.model_fields.items() if _integer_field(f.annotation))


def _number(value: Any) -> bool:
    """An int, or a finite float (a bool is neither; an int of any size is finite)."""
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (isinstance(value, float) and math.isfinite(value))


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def allowed_range(name: str) -> str:
    if name in HALF_OPEN:
        return f"in {HALF_OPEN[name]}"
    low, high, low_inclusive = BOUNDS[name]
    lo, hi = _fmt(low), _fmt(high)
    return f"between {lo} and {hi}" if low_inclusive else f"> {lo} and <= {hi}"


def _bound_problems(v: dict[str, Any], skip: set[str]) -> list[str]:
    """Each finite numeric field outside its bounds, with the bounds in the message (NaN and
    infinities are refused by pydantic, reported with the same wording in `validate_spec`);
    fields in `skip` were reported already."""
    problems = []
    for name, (low, high, low_inclusive) in BOUNDS.items():
        value = v.get(name)
        if not _number(value) or name in skip:
            continue  # absent, None, or reported by pydantic
        if not ((value >= low if low_inclusive else value > low) and value <= high):
            problems.append(f"{name}: must be {allowed_range(name)} (got {shown(value)})")
    for name in HALF_OPEN:
        value = v.get(name)
        if _number(value) and name not in skip and not 0.0 <= value < 1.0:
            problems.append(f"{name}: must be {allowed_range(name)} (got {shown(value)})")
    return problems


def _size_problems(v: dict[str, Any]) -> list[str]:
    """Text and lists longer than anything real (and than the registry's columns)."""
    problems = [f"{name}: at most {limit} characters (got {len(v[name])})"
                for name, limit in MAX_CHARS.items() if isinstance(v.get(name), str) and len(v[name]) > limit]
    targets = v.get("targets")
    if isinstance(targets, list) and (len(targets) > MAX_TARGETS or any(
            isinstance(t, str) and len(t) > MAX_TARGET_CHARS for t in targets)):
        problems.append(f"targets: at most {MAX_TARGETS} module names of at most {MAX_TARGET_CHARS} "
                        f"characters each (got {len(targets)} names)")
    return problems


# Fields only training reads: given with a method that trains nothing ('none') they would be
# silently ignored.
UNTUNED_UNUSED = ("alpha", "targets", "lr", "head_lr", "epochs", "max_steps", "warmup_ratio", "init_from",
                  "loraplus_lr_ratio", "gradient_checkpointing", "quantize", "sharding")


def _untuned_problems(v: dict[str, Any], method: str) -> list[str]:
    problems = [f"{name}: not used by method {method!r} (it evaluates the base model, trains nothing)"
                for name in UNTUNED_UNUSED if v.get(name) not in (None, AUTO) and v.get(name) is not False]
    if v.get("rank", 0) != 0:
        problems.append(f"rank: method {method!r} trains nothing; leave rank out or give 0 "
                        f"(got {shown(v['rank'])})")
    return problems


def _cross_field_problems(v: dict[str, Any], reported: set[str]) -> list[str]:
    """Checks that need more than one field, tolerant of fields pydantic already rejected (the
    `reported` ones are not checked against their bounds again)."""
    problems = _size_problems(v)
    if problems:
        return problems  # a 5,000-character path is not worth looking up
    task = v.get("task")
    if task is not None and task not in TASKS:
        problems.append(f"task: unknown task {shown(task)}; allowed: {', '.join(ALL_TASKS)}")
    method = v.get("method", "lora")
    entry = BY_NAME.get(method) if isinstance(method, str) else None
    if entry is None:
        problems.append(f"method: unknown method {shown(method)}; allowed: {', '.join(METHODS)}")
    trains_nothing = entry is not None and not entry.trains
    if trains_nothing:
        problems += _untuned_problems(v, method)
        problems += _bound_problems(v, reported | {"rank"})
    else:
        problems += _bound_problems(v, reported)
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
        elif trains_nothing:
            problems.append(f"pooling: not used by method {method!r} (it evaluates the base model as it is, "
                            "with the base model's own pooling)")
    if v.get("loraplus_lr_ratio") is not None and entry is not None and entry.lr_rule != "loraplus":
        problems.append(f"loraplus_lr_ratio: only method 'loraplus' reads it (got method {method!r})")
    if entry is not None and entry.changes_base and entry.adapter and v.get("init_from"):
        problems.append(f"init_from: method {method!r} starts from the base model's own weights; its "
                        f"adapters are stored as {entry.stored_method} of rank {entry.stored_rank_factor}r: "
                        f"continue one with method {entry.stored_method!r} and that rank")
    if entry is not None and entry.trains and not entry.adapter and targets:
        problems.append(f"targets: not used by method {method!r} (it trains every weight)")

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
    if v.get("sharding") not in (None, AUTO) and "sharding" not in reported and not trains_nothing:
        problems += sharding_problems(v["sharding"], v.get("devices", 1))
    if v.get("quantize") is not None and "quantize" not in reported and not trains_nothing:
        problems += quantize_problems(v.get("quantize"), entry, task, base, v.get("devices", 1))
    init_from = v.get("init_from")
    if isinstance(init_from, str) and not (Path(init_from) / "adapter_config.json").is_file():
        problems.append(f"init_from: {init_from!r} is not an adapter folder (no adapter_config.json)")
    return problems


def sharding_problems(sharding: str, devices: Any) -> list[str]:
    """Why an explicit `sharding` cannot run (none: it can): it says how a run spreads over
    several devices, so one device has nothing to shard or replicate. (`quantize` with devices > 1
    is refused on its own, so a 4-bit base never meets FSDP.)"""
    if isinstance(devices, int) and not isinstance(devices, bool) and devices > 1:
        return []
    return [f"sharding: {sharding!r} says how a run spreads over several devices; give devices > 1 "
            f"with it, or leave sharding out (got devices: {shown(devices)})"]


def quantize_problems(quantize: str, entry: Any, task: Any, base: Any, devices: Any = 1) -> list[str]:
    """Why a spec with `quantize` cannot run (none: it can): QLoRA trains a plain adapter over a
    frozen Llama-family causal LM (`QUANTIZABLE_ARCHS`) on one CUDA device, so the method, the
    task, the base and the device count must all allow it."""
    problems = []
    if isinstance(devices, int) and not isinstance(devices, bool) and devices > 1:
        # Each rank would hold its own 4-bit base: plausible, but never run here (no GPU to check).
        problems.append(f"quantize: an {quantize} job trains on one device (got devices: {devices})")
    if entry is not None and (not entry.adapter or entry.changes_base):
        allowed = ", ".join(n for n, m in BY_NAME.items() if quantizable_method(m))
        problems.append(f"quantize: method {entry.name!r} trains the base weights themselves, which a "
                        f"{quantize}-quantised base cannot; quantize is for adapter methods ({allowed})")
    elif entry is not None and entry.variant is not None:
        allowed = " or ".join(n for n, m in BY_NAME.items() if quantizable_method(m))
        problems.append(f"quantize: method {entry.name!r} rescales by the norm of the whole weight every "
                        f"step, which an {quantize} base holds only quantised; use {allowed} with quantize")
    if task in TASKS and not TASKS[task].is_generation:
        problems.append(f"quantize: task {task!r} trains a {TASKS[task].kind} head; quantize is for "
                        "generation tasks (a causal LM whose every linear layer but the output is quantised)")
    name = base if isinstance(base, str) else (TASKS[task].base_model if task in TASKS else None)
    if isinstance(name, str):
        arch = base_arch(name)
        if arch not in QUANTIZABLE_ARCHS:
            known = (f"a {arch} model" if arch
                     else "of an architecture this machine cannot read (not downloaded?)")
            problems.append(f"quantize: base model {name!r} is {known}; {quantize} is for Llama-family "
                            f"causal LMs ({', '.join(QUANTIZABLE_ARCHS)}), e.g. smollm2-135m")
    return problems


def quantizable_method(entry: Any) -> bool:
    """A method whose adapter trains over a quantised base: an adapter that leaves the base as
    loaded and adds s·B·A·x to its output (no variant needing the whole weight)."""
    return entry.adapter and not entry.changes_base and entry.variant is None


def validate_spec(data: dict[str, Any] | TrainingSpec) -> TrainingSpec:
    """Validate a whole submission; raise one SpecError listing every problem."""
    raw = data.model_dump(exclude_unset=True) if isinstance(data, TrainingSpec) else dict(data)
    problems: list[str] = []
    spec: TrainingSpec | None = None
    reported: set[str] = set()  # fields pydantic refused: not checked again against their bounds
    try:
        spec = TrainingSpec.model_validate(raw)
    except ValidationError as exc:
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"])[:80] or "spec"
            name, got = str(err["loc"][0]) if err["loc"] else "", shown(err.get("input"))
            if name in AUTO_FIELDS:
                # A number-or-"auto" field: pydantic reports each branch; one line says both.
                if name not in reported:
                    problems.append(f"{name}: must be a finite number {allowed_range(name)}, or 'auto' "
                                    f"(got {got})")
            elif err["type"] == "extra_forbidden":
                allowed = ", ".join(TrainingSpec.model_fields)
                problems.append(f"{where}: unknown field; allowed fields: {allowed}")
            elif err["type"] == "literal_error" and where == "method":
                pass  # reported below with the allowed values
            elif where in BOUNDS | HALF_OPEN and name in _INTEGER_FIELDS:
                problems.append(f"{where}: must be {allowed_range(where)}, a whole number (got {got})")
            elif where in BOUNDS | HALF_OPEN:
                problems.append(f"{where}: must be a finite number {allowed_range(where)} (got {got})")
            else:
                problems.append(f"{where}: {err['msg']} (got {got})")
            reported.add(name)
    problems += _cross_field_problems(raw, reported)
    if problems or spec is None:
        raise SpecError(problems or ["spec could not be parsed"])
    return spec
