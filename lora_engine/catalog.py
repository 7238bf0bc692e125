"""What each task is: its data fields, label count, official metrics and training defaults.

Pure data, no torch: the CLI validates submissions against it.

The defaults are per task because the right learning rate and schedule depend on the data size
and the head: LoRA's low-rank update wants a learning rate ~10x that of full fine-tuning, and a
freshly initialised classifier head wants its own (higher) rate.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# method_of_flags and peft_flags live in methods.py; docs/CONTRACTS.md and callers outside the
# engine name them here.
from lora_engine.methods import ADAPTER_METHODS, NAMES, method, method_of_flags, peft_flags  # noqa: F401

GLUE_TASKS = ("cola", "sst2", "mrpc", "stsb", "rte", "qnli", "mnli", "qqp")
GENERATION_TASKS = ("e2e",)
CUSTOM_TASKS = ("custom-classification", "custom-generation")
ALL_TASKS = GLUE_TASKS + GENERATION_TASKS + CUSTOM_TASKS
KINDS = ("classification", "regression", "generation")  # what a task's model does (TaskInfo.kind)

# The training methods, in the order of their table (methods.py, where each is one entry).
# LORA_METHODS train an adapter over a frozen base; "full" trains every weight; "none" trains
# nothing: the job evaluates the untuned base model (the baseline every method is compared with).
LORA_METHODS = ADAPTER_METHODS
METHODS = NAMES

# How a classification/regression head reads a text: "cls", the last layer's first-token state
# (Hugging Face's BERT/RoBERTa heads), or "mean", the mean of the last layer over the row's real
# tokens (what sentence-transformers models such as all-MiniLM-L6-v2 were trained to produce).
# Either goes through the same head (BERT: pooler -> dropout -> classifier). A model carries it as
# `config.classifier_pooling`, the name ModernBERT's config uses for the same choice.
POOLINGS = ("cls", "mean")


# Method-aware defaults per architecture: (lr, head lr, targets) for a LoRA-family method, the lr
# for `full`. A task's own TaskInfo values win where it sets them (E2E: lr 1e-3 on all linear
# layers of SmolLM2, measured). The bert row is measured on MiniLM-L6 with the auto budget (see
# bench/RESULTS.md, "GLUE with the `auto` budget"): LoRA r=8 on query+value at lr 2e-3, 1e-3 and
# 5e-4 left RTE at chance over 6 epochs (held-out rows at most 56.3) while full fine-tuning learnt
# it (held-out 66.1, validation 58.2); on all linear layers at 1e-3 (20x full FT's 5e-5; "LoRA
# Without Regret" has ~10x for all-linear LoRA) the held-out score rose too (60.3 by epoch 4),
# though RTE's validation split did not follow (51.0). Those runs read the [CLS] token; MiniLM-L6
# now pools by mean (its own, `POOLINGS`), where the same lr gave MRPC LoRA r=8 74.2 / 77.6
# held-out after epochs 1 / 2 (66.1 / 75.2 with [CLS]): the lrs are not re-measured for it yet.
# The other architectures have no pretrained classifier base here to measure on (only random tiny
# ones), so they keep the earlier query+value values (one epoch of SST-2 on MiniLM: ~40x full FT).
@dataclass(frozen=True)
class MethodDefaults:
    lora_lr: float
    full_lr: float
    head_lr: float | None
    targets: tuple[str, ...] | None  # None: inject.DEFAULT_TARGETS of the architecture


ARCH_DEFAULTS: dict[str, MethodDefaults] = {
    "bert": MethodDefaults(lora_lr=1e-3, full_lr=5e-5, head_lr=2e-3, targets=("all-linear",)),
    "roberta": MethodDefaults(lora_lr=2e-3, full_lr=5e-5, head_lr=2e-3, targets=None),
    "gpt2": MethodDefaults(lora_lr=2e-3, full_lr=5e-5, head_lr=2e-3, targets=None),
    "llama": MethodDefaults(lora_lr=2e-3, full_lr=5e-5, head_lr=2e-3, targets=None),
}


@dataclass(frozen=True)
class TaskInfo:
    name: str
    kind: str  # "classification" | "regression" | "generation"
    text_fields: tuple[str, ...] = ()
    num_labels: int | None = None  # None: read from the data (custom classification)
    label_names: tuple[str, ...] = ()
    metrics: tuple[str, ...] = ()
    primary_metric: str = ""
    base_model: str = "minilm-l6"
    max_length: int = 128
    # Training defaults, overridable by the spec; None: the architecture's (`ARCH_DEFAULTS`).
    # One-epoch budgets: LoRA's update starts at zero and needs ~40x the full-FT rate to move as far
    # (SST-2 on MiniLM-L6, one epoch: lr 5e-4 -> 83.1, 1e-3 -> 84.2, 2e-3 -> 85.3; full 5e-5 -> 84.2).
    lora_lr: float | None = None
    full_lr: float | None = None
    head_lr: float | None = None
    warmup_ratio: float = 0.06
    targets: tuple[str, ...] | None = None
    extra: dict = field(default_factory=dict)

    @property
    def is_generation(self) -> bool:
        return self.kind == "generation"


def _glue(name, fields, labels, metrics, **kw) -> TaskInfo:
    kind = "regression" if name == "stsb" else "classification"
    return TaskInfo(
        name=name,
        kind=kind,
        text_fields=fields,
        num_labels=1 if kind == "regression" else len(labels),
        label_names=labels,
        metrics=metrics,
        primary_metric=metrics[0],
        **kw,
    )


TASKS: dict[str, TaskInfo] = {
    "cola": _glue("cola", ("sentence",), ("unacceptable", "acceptable"), ("matthews_corr",)),
    "sst2": _glue("sst2", ("sentence",), ("negative", "positive"), ("accuracy",)),
    "mrpc": _glue("mrpc", ("sentence1", "sentence2"), ("not_equivalent", "equivalent"), ("accuracy", "f1")),
    "stsb": _glue("stsb", ("sentence1", "sentence2"), (), ("pearson", "spearman")),
    # RTE's premises are long: at 128 tokens 12 % of its training pairs (14.5 % of validation's)
    # lost their end, where the evidence often is; 256 cuts 0.1 % (the longest pair is 289) for
    # ~5 % more tokens. LoRA r=8, auto budget: validation 54.22 -> 58.63 (bench/RESULTS.md).
    "rte": _glue("rte", ("sentence1", "sentence2"), ("entailment", "not_entailment"), ("accuracy",),
                 max_length=256),
    "qnli": _glue("qnli", ("question", "sentence"), ("entailment", "not_entailment"), ("accuracy",)),
    "mnli": _glue(
        "mnli", ("premise", "hypothesis"), ("entailment", "neutral", "contradiction"), ("accuracy",)
    ),
    "qqp": _glue("qqp", ("question1", "question2"), ("not_duplicate", "duplicate"), ("accuracy", "f1")),
    "e2e": TaskInfo(
        name="e2e",
        kind="generation",
        text_fields=("mr", "ref"),
        metrics=("bleu", "nist", "meteor", "rouge_l", "cider"),
        primary_metric="bleu",
        base_model="smollm2-135m",
        max_length=128,
        # 60-step probe, completion loss on 128 validation rows: q,v lr 2e-4 -> 1.95,
        # q,v 1e-3 -> 1.56, q,v 2e-3 -> 1.50, all-linear 1e-3 -> 1.44.
        lora_lr=1e-3,
        full_lr=2e-5,
        targets=("all-linear",),
    ),
    "custom-classification": TaskInfo(
        name="custom-classification",
        kind="classification",
        text_fields=("text", "text_pair"),
        metrics=("accuracy", "f1_macro"),
        primary_metric="accuracy",
    ),
    "custom-generation": TaskInfo(
        name="custom-generation",
        kind="generation",
        text_fields=("prompt", "completion"),
        metrics=("bleu", "rouge_l"),
        primary_metric="rouge_l",
        base_model="smollm2-135m",
        lora_lr=2e-4,
        full_lr=2e-5,
    ),
}


def method_defaults(info: TaskInfo, method_name: str, arch: str | None, rank: int = 8) -> dict:
    """{"lr", "head_lr", "targets"} for `method_name` on a base of architecture `arch` (None: unknown,
    the bert values). Generation tasks train no head (head_lr None); `full` trains every weight
    at one rate (head_lr None, targets None).

    An adapter method's lr is LoRA's (the task's, else the architecture's) times its entry's
    `lr_factor` (methods.py: LoRA+, PiSSA and OLoRA move further per step than LoRA). rsLoRA
    scales the update by alpha/sqrt(r) instead of alpha/r, sqrt(r) times LoRA's at the same alpha;
    its default lr is LoRA's divided by sqrt(r) so the first steps move as far.
    """
    arch_d = ARCH_DEFAULTS.get(arch or "bert", ARCH_DEFAULTS["bert"])
    entry = method(method_name)
    if not entry.adapter:
        return {"lr": info.full_lr or arch_d.full_lr, "head_lr": None, "targets": None}
    lr = (info.lora_lr or arch_d.lora_lr) * entry.lr_factor
    if entry.scaling == "alpha/sqrt(r)":
        lr = lr / rank**0.5
    head_lr = None if info.kind == "generation" else (info.head_lr or arch_d.head_lr)
    targets = info.targets if info.targets is not None else arch_d.targets
    return {"lr": lr, "head_lr": head_lr, "targets": list(targets) if targets else None}


def task_info(name: str) -> TaskInfo:
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; allowed: {', '.join(ALL_TASKS)}") from None
