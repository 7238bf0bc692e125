"""The training recipe: typed spec → `setup()` → `fit()` → pure evaluation → adapter folder.

    train(spec, output_dir, data_dir=...) -> TrainResult(adapter_dir, metrics, stats)

1. The spec is validated as a whole and resolved (task defaults filled in) before any model is
   loaded: a bad submission fails in milliseconds with every problem listed.
2. `setup()` loads the base model (or takes it from a warm `BaseModelCache`), re-initialises the
   head from the seed, injects LoRA (or unfreezes everything for `full`), tokenises the data once
   (the rows of each batch when it is first drawn, the rest in a thread once training is over;
   see `data/streaming.py`) and builds AdamW with four parameter groups: {body, head} × {decayed, not
   decayed}. Weight decay skips 1-D tensors (biases, LayerNorm gains, DoRA magnitudes): decaying
   a gain towards 0 would shrink activations rather than regularise.
3. `fit()` runs optimizer steps: `grad_accum` micro-batches, each loss divided by `grad_accum` so
   the update is that of one batch `grad_accum` times larger; gradient norm clipped to 1.0 (the
   norm before clipping, which `clip_grad_norm_` computes anyway, is reported with each step's
   progress and read in the same device sync as the step's last loss: no sync of its own); the
   learning rate of every group is `base_lr · lr_factor(step)` (see `schedule.py`).
   Hooks: progress every step, should-stop every step (checkpoint, then `TrainingStopped`),
   checkpoint every N steps (each reported to `on_checkpoint` once on disk); a run resumes from
   the newest checkpoint in `checkpoint_dir`. A diverging loss (non-finite, or above a factor of
   its start for N steps) raises `TrainingDiverged` before the update: no adapter is written.
   With `eval_every`, a held-out slice of the training rows is scored every N steps; the best
   evaluation's weights become the adapter and `patience` evaluations without improvement stop
   the run early (selection.py).
   `fit()` is the loop alone: what follows the backward passes of a step is `end_step()`, and what
   follows the last step is `end_run()`, both shared with the pack (packed/trainer.py), which also
   takes its spec through `resolve_spec()` and its setup through `prepare_run()`.
4. Evaluation (evaluate.py) scores the validation split; the adapter (PEFT format) or, for
   `full`, the whole model (`save_pretrained`, safetensors) is written atomically with
   lorafleet.json and a README model card.

Losses. Classification: mean cross-entropy; STS-B: mean squared error of the single logit;
generation: mean next-token cross-entropy over the completion tokens only (labels -100 on the
prompt). For causal LMs the output projection runs only on positions that carry a label: the
prompt's hidden states never go through the 49k-wide vocabulary matrix.
"""

from __future__ import annotations

import contextvars
import dataclasses
import json
import math
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lora_engine.adapters.digest import folder_bytes
from lora_engine.adapters.folder import AdapterMeta
from lora_engine.cache import BaseModelCache
from lora_engine.catalog import TaskInfo
from lora_engine.checkpoint import (
    Checkpoint,
    capture_rng_state,
    latest_checkpoint,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from lora_engine.device import DeviceInfo, PeakMemory, autocast, pick_device, seed_everything, synchronize
from lora_engine.errors import LoraConfigError, TrainingDiverged, TrainingStopped
from lora_engine.forward import recompute, training_loss
from lora_engine.forward.encoder import set_pooling
from lora_engine.methods import method
from lora_engine.multidevice.local import local_view
from lora_engine.schedule import lr_factor, total_optimizer_steps, warmup_steps
from lora_engine.selection import EvalPoint, Selection, split_holdout
from lora_engine.spec import TrainingSpec, validate_spec

__all__ = ["BaseModelCache", "Progress", "RunStats", "TrainHooks", "TrainResult", "fit", "setup", "train"]

GRAD_CLIP = 1.0


# --- public types ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Progress:
    step: int  # optimizer steps done
    total: int
    loss: float  # this step's training loss (mean over its micro-batches)
    examples_per_s: float  # since this process started training
    tokens: int  # non-pad tokens trained so far (whole run, across resumes)
    lr: float = 0.0  # the body's learning rate used by this step
    epoch: float = 0.0  # epochs done after this step (fractional)
    grad_norm: float | None = None  # the step's gradient norm before clipping (L2, all trainables)


@dataclass
class TrainHooks:
    on_progress: Callable[[Progress], None] | None = None
    should_stop: Callable[[], bool] | None = None
    checkpoint_every: int = 0  # optimizer steps; 0: only when stopped
    checkpoint_dir: Path | None = None
    # Called after each checkpoint is on disk (step, its folder): a caller records what it can
    # resume from instead of guessing from the schedule.
    on_checkpoint: Callable[[int, Path], None] | None = None
    # Called once when the run resumes from a checkpoint (its step, its folder), before training.
    on_resume: Callable[[int, Path], None] | None = None
    # Divergence: a non-finite loss always stops the run; with a factor, so does a loss above
    # factor x the run's first loss for `divergence_patience` steps in a row (see `divergence`).
    divergence_factor: float | None = None
    divergence_patience: int = 20
    on_evaluate: Callable[[EvalPoint], None] | None = None  # each evaluation during training
    # Called as a stretch of work without optimizer steps begins: "evaluating" (an evaluation
    # during training, or the final one), "saving" (the adapter folder); steps mean "training".
    on_phase: Callable[[str], None] | None = None

    def __post_init__(self):
        if self.checkpoint_every < 0:
            raise ValueError(f"checkpoint_every must be >= 0 (got {self.checkpoint_every})")
        if self.checkpoint_every and self.checkpoint_dir is None:
            raise ValueError("checkpoint_every needs a checkpoint_dir to write into")
        if self.divergence_factor is not None and not self.divergence_factor > 1:
            raise ValueError(f"divergence_factor must be > 1 (got {self.divergence_factor})")
        if self.divergence_patience < 1:
            raise ValueError(f"divergence_patience must be >= 1 (got {self.divergence_patience})")


@dataclass(frozen=True)
class RunStats:
    trainable_params: int
    total_params: int
    adapter_bytes: int
    wall_s: float
    device_s: float
    device: str
    peak_mem_bytes: int
    examples: int
    tokens: int
    # Peak minus the memory once the model was loaded (None in a pack, which loads once for all),
    # and the mean device time of this attempt's optimizer steps: what gradient checkpointing trades.
    activation_mem_bytes: int | None = None
    step_s: float | None = None
    # A run across devices > 1: how its ranks held the model ("replicate" or "fsdp",
    # multidevice.sharding) and rank 0's resident training state (its part of the weights, a
    # gradient for each trainable one, the optimizer's state). None on one device.
    sharding: str | None = None
    state_bytes: int | None = None


@dataclass(frozen=True)
class TrainResult:
    adapter_dir: Path
    metrics: dict[str, dict[str, float]]
    stats: RunStats
    losses: list[float] = field(default_factory=list)  # per optimizer step, whole run
    # Evaluations during training on the held-out training rows (empty when eval_every is 0);
    # the adapter holds the weights of the best one (metrics["selection"] summarises it).
    eval_history: list[EvalPoint] = field(default_factory=list)


# --- setup ----------------------------------------------------------------------------------------


@dataclass
class Run:
    """Everything `fit()` needs, built by `setup()`."""

    spec: TrainingSpec
    info: TaskInfo
    device: DeviceInfo
    model: nn.Module
    tokenizer: Any
    encoded: Any  # batching.Encoded of the training split
    sampler: Any  # batching.BucketBatchSampler
    optimizer: torch.optim.Optimizer
    total_steps: int
    warmup: int
    trainable: dict[str, nn.Parameter]
    heads: list[str]
    label_names: tuple[str, ...]
    lora_settings: Any = None  # inject.LoraSettings, None for full
    holdout: list = field(default_factory=list)  # training rows held out for evaluation
    selection: Selection | None = None  # None: no evaluation during training
    step: int = 0
    losses: list[float] = field(default_factory=list)
    examples: int = 0
    tokens: int = 0
    device_s: float = 0.0
    # This attempt's optimizer steps and their device time (not checkpointed: a resumed attempt
    # counts its own).
    fit_steps: int = 0
    fit_s: float = 0.0
    # Data parallel across ranks (multidevice.parallel.DataParallel): this rank trains its slice
    # of every batch and the gradients are averaged before each update; None: one process.
    parallel: Any = None


def label_names_for(spec: TrainingSpec) -> tuple[str, ...]:
    if spec.task == "custom-classification":
        from lora_engine.data import custom_label_names

        return tuple(custom_label_names(spec.dataset))
    return tuple(spec.info.label_names)


def reset_head(model: nn.Module, heads: list[str]) -> None:
    """Re-draw the classification head from the current torch RNG: N(0, initializer_range), bias 0.

    A cold load and a cached base then start every job from the same head (the one HF drew at load
    time depended on whatever the RNG held then).
    """
    from lora_engine.inject import HEAD_NAMES

    std = float(getattr(model.config, "initializer_range", 0.02) or 0.02)
    with torch.no_grad():
        # Only the freshly added heads: a pretrained pooler trained along with them keeps its weights.
        for name in (h for h in heads if h in HEAD_NAMES):
            for module in model.get_submodule(name).modules():
                if isinstance(module, nn.Linear):
                    module.weight.normal_(0.0, std)
                    if module.bias is not None:
                        module.bias.zero_()


# LoRA+ (Hayou et al. 2024) as PEFT's `create_loraplus_optimizer` groups the body's tensors: B (and
# any 1-D tensor) at lr × loraplus_lr_ratio, a LoRA embedding's A and B at a fixed small rate, the
# rest (A) at lr. What PEFT's function does not know, lorafleet's head and weight decay, stay as
# for every method: the head at head_lr, no decay on 1-D tensors.
LORAPLUS_LR_EMBEDDING = 1e-6  # PEFT's `loraplus_lr_embedding` default (and the LoRA+ authors')


def _loraplus_rate(name: str, p: nn.Parameter) -> str:
    """"", "B" or "embedding": which LoRA+ rate a body tensor trains at."""
    parts = name.split(".")
    if "lora_embedding_A" in parts or "lora_embedding_B" in parts:
        return "embedding"
    return "B" if "lora_B" in parts or p.ndim == 1 else ""


# `Method.lr_rule` -> (the rate's name for a body tensor, its lr given (lr, ratio)).
LR_RULES: dict[str, tuple[Callable[[str, nn.Parameter], str], dict[str, Callable[[float, float], float]]]] = {
    "loraplus": (_loraplus_rate, {"": lambda lr, ratio: lr, "B": lambda lr, ratio: lr * ratio,
                                  "embedding": lambda lr, ratio: LORAPLUS_LR_EMBEDDING}),
}


def param_groups(model: nn.Module, heads: list[str], *, lr: float, head_lr: float | None,
                 weight_decay: float, lr_rule: str | None = None,
                 lr_ratio: float | None = None) -> list[dict]:
    """AdamW groups {body, head} × {decay, no decay} (× the body's rates of `lr_rule`, LoRA+'s);
    empty groups are left out.

    No decay on 1-D tensors (biases, LayerNorm gains, DoRA magnitudes).
    """
    rate_of, rates = LR_RULES[lr_rule] if lr_rule is not None else (lambda n, p: "", {"": lambda lr, r: lr})
    groups: dict[tuple[bool, bool, str], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        is_head = any(name == h or name.startswith(h + ".") for h in heads)
        rate = "" if is_head else rate_of(name, p)
        groups.setdefault((is_head, p.ndim >= 2, rate), []).append(p)
    out = []
    for (is_head, decay, rate), params in sorted(groups.items()):
        group_lr = head_lr if (is_head and head_lr is not None) else rates[rate](lr, lr_ratio)
        out.append({"params": params, "lr": group_lr, "initial_lr": group_lr,
                    "weight_decay": weight_decay if decay else 0.0,
                    "name": ("head" if is_head else "body") + (f"/{rate}" if rate else "")
                    + ("" if decay else "/no_decay")})
    return out


def load_model(spec: TrainingSpec, info: TaskInfo, num_labels: int | None, cache):
    """The spec's base model: checked out of a warm cache when given, else loaded."""
    kind = info.kind
    if cache is not None:
        return cache.checkout(spec.base_model, kind, num_labels, quantize=spec.quantize)
    from lora_engine.models import load_base_model

    return load_base_model(spec.base_model, kind, num_labels, quantize=spec.quantize)


def _adapt(spec: TrainingSpec, model: nn.Module, heads: list[str]):
    """Inject LoRA (or load `init_from`), freeze the rest; or unfreeze all for a method without an
    adapter (`full`)."""
    from lora_engine.inject import LoraSettings, mark_only_lora_as_trainable

    entry = method(spec.method)
    if not entry.trains:
        raise LoraConfigError(f"method {entry.name!r} is {entry.summary}: evaluate_untuned scores it, "
                              "train does not")
    if not entry.adapter:
        if spec.init_from:
            raise LoraConfigError(f"init_from continues a LoRA adapter; it cannot be used with method "
                                  f"{entry.name!r}")
        for p in model.parameters():
            p.requires_grad_(True)
        return None
    if spec.init_from:
        from lora_engine.adapters.io import load_adapter, settings_from_config
        from lora_engine.inject import lora_modules

        settings = settings_from_config(load_adapter(model, spec.init_from))
        if settings.method != entry.stored_method or settings.rank != spec.rank:
            raise LoraConfigError(
                f"init_from adapter is {settings.method} r={settings.rank}, the spec asks for "
                f"{spec.method} r={spec.rank}: give the adapter's method and rank to continue it"
            )
        # A LoRA adapter continued by LoRA+ (the same files, trained at other rates) is LoRA+'s now.
        settings = dataclasses.replace(settings, method=entry.name)
        for _, layer in lora_modules(model):
            layer.method = entry.name
    else:
        from lora_engine.inject import inject_lora

        settings = LoraSettings(method=spec.method, rank=spec.rank, alpha=spec.alpha, dropout=spec.dropout,
                                targets=spec.targets)
        inject_lora(model, settings)
    mark_only_lora_as_trainable(model, modules_to_save=heads)
    return settings


def resolve_spec(spec: TrainingSpec | dict, *, data_dir: str | Path) -> TrainingSpec:
    """The spec as a run takes it: validated, defaults filled in, "auto" values worked out from
    the training file's size. Raises SpecError before anything is loaded."""
    spec = validate_spec(spec).resolved()
    if spec.needs_train_rows:
        spec = spec.resolved(train_rows=train_rows(spec, data_dir=data_dir))
    return spec


def training_examples(spec: TrainingSpec, *, data_dir: str | Path) -> list:
    """The training split of a resolved spec, held-out rows included."""
    from lora_engine.data import load_examples

    return load_examples(spec.task, "train", data_dir=data_dir, dataset=spec.dataset)


def training_inputs(spec: TrainingSpec, *, data_dir: str | Path) -> tuple[list, tuple[str, ...]]:
    """(training examples, label names) of a resolved spec."""
    return training_examples(spec, data_dir=data_dir), label_names_for(spec)


@dataclass(frozen=True)
class TrainingData:
    """A run's training split as `prepare_run` takes it: held-out rows apart, the rest tokenised
    or being tokenised."""

    encoded: Any  # batching.Encoded of the rows trained on, or streaming.PendingEncoded
    holdout: list  # the rows scored during training (empty without `eval_holdout`)


def training_data(spec: TrainingSpec, examples: list, tokenizer) -> TrainingData:
    """Hold out the rows scored during training (here, so every path trains on the same rows) and
    take the rest from the token cache, or as a split tokenised as its rows are asked for
    (`streaming.pending_split`: only what decides the rows trained on is tokenised here).
    Touches no RNG and no model."""
    from lora_engine.data.streaming import pending_split

    examples, holdout = split_holdout(examples, spec.eval_holdout or 0, spec.seed)
    encoded = pending_split(examples, tokenizer, spec.max_length)
    if len(encoded) == 0:
        raise LoraConfigError(f"max_length {spec.max_length} leaves no training row with a target token")
    return TrainingData(encoded, holdout)


def setup(spec: TrainingSpec, *, data_dir: str | Path, cache=None, device: DeviceInfo | None = None,
          place: bool = True) -> Run:
    """Load, adapt and prepare everything for `fit()`. `spec` must be validated and resolved.
    `place=False` leaves the model where it was loaded (the CPU), for a rank that places it
    itself (`multidevice.sharding` puts only its shard of each weight on its device).

    When the base model must be loaded (no warm cache, or another base in it), the training data
    are read in a second thread meanwhile, with a tokenizer of its own (one tokenizer object is
    not shared between threads: a call may reconfigure its truncation), and handed over as soon
    as the rows trained on are known (`streaming.PendingEncoded`; for generation, once every
    distinct prompt is tokenised). From then on a batch tokenises its chunk's rows when it is
    first drawn, in the job's thread, and the rows no batch asked for are tokenised once training
    is over (`finish_tokenising`), so they compete with no step. Step 1 waits for the load and one
    chunk (E2E: ~1 s of the data's ~3.5 s of CPU). On a resident base the rows are tokenised in
    the job's thread as batches ask for them. Tokenising touches no RNG: the run is the one a
    serial setup gives.
    """
    info = spec.info
    device = device or pick_device()
    label_names = label_names_for(spec)
    num_labels = len(label_names) if info.kind == "classification" else None
    if cache is not None and cache.key == cache.key_of(spec.base_model, info.kind, num_labels, spec.quantize):
        model, tokenizer = load_model(spec, info, num_labels, cache)
        data = training_data(spec, training_examples(spec, data_dir=data_dir), tokenizer)
    else:
        handed = beside_the_load(spec, data_dir)
        model, tokenizer = load_model(spec, info, num_labels, cache)
        data = handed.result()
    if place:
        model.to(device.device)
    return prepare_run(spec, model, tokenizer, data=data, label_names=label_names, device=device)


def beside_the_load(spec: TrainingSpec, data_dir: str | Path) -> Future:
    """Start the "training-data" thread of a cold setup: read the split, hold rows out, hand the
    `TrainingData` over (the future) once the rows trained on are known. The job's log context
    goes along (a line logged there still names the job)."""
    from lora_engine.data.streaming import PendingEncoded
    from lora_engine.models import training_tokenizer

    handed: Future = Future()

    def read_and_tokenise() -> None:
        try:
            examples = training_examples(spec, data_dir=data_dir)
            tokenizer = training_tokenizer(spec.base_model)
            data = training_data(spec, examples, tokenizer)
            if isinstance(data.encoded, PendingEncoded):
                data.encoded.own(tokenizer)  # loaded here for the data alone
        except BaseException as exc:  # the job's thread raises it, from `handed.result()`
            handed.set_exception(exc)
            return
        handed.set_result(data)

    context = contextvars.copy_context()
    threading.Thread(target=context.run, args=(read_and_tokenise,), name="training-data", daemon=True).start()
    return handed


def prepare_run(spec: TrainingSpec, model: nn.Module, tokenizer, *, data: TrainingData,
                label_names: tuple[str, ...], device: DeviceInfo) -> Run:
    """Everything after the base model is loaded and the data tokenised: seed, head, LoRA,
    schedule, optimizer.

    The packed trainer calls it on a model that shows one job's view of a shared base, so a job
    starts from the same RNG draws, groups and data order packed as alone.
    """
    from lora_engine.data.batching import BucketBatchSampler
    from lora_engine.inject import head_module_names

    info = spec.info
    heads = head_module_names(model) if info.kind != "generation" else []
    if heads:  # what the head reads, in training and every evaluation (a full model saves it)
        set_pooling(model, spec.pooling)
    seed_everything(spec.seed)
    reset_head(model, heads)
    settings = _adapt(spec, model, heads)
    recompute.set_enabled(model, spec.gradient_checkpointing)

    encoded = data.encoded
    sampler = BucketBatchSampler(encoded.lengths, spec.batch_size, seed=spec.seed)
    total = total_optimizer_steps(len(sampler), epochs=spec.epochs, max_steps=spec.max_steps,
                                  grad_accum=spec.grad_accum)
    return Run(spec=spec, info=info, device=device, model=model, tokenizer=tokenizer, encoded=encoded,
               sampler=sampler, optimizer=make_optimizer(spec, model, heads), total_steps=total,
               warmup=warmup_steps(total, spec.warmup_ratio), trainable=trainable_of(model), heads=heads,
               label_names=label_names, lora_settings=settings, holdout=data.holdout,
               selection=Selection(info.primary_metric, spec.patience or 0, spec.min_delta)
               if spec.eval_every else None)


def make_optimizer(spec: TrainingSpec, model: nn.Module, heads: list[str]) -> torch.optim.Optimizer:
    """AdamW over the model's trainable parameters in `param_groups`' groups."""
    return torch.optim.AdamW(
        param_groups(model, heads, lr=spec.lr, head_lr=spec.head_lr, weight_decay=spec.weight_decay,
                     lr_rule=method(spec.method).lr_rule, lr_ratio=spec.loraplus_lr_ratio),
        lr=spec.lr, betas=(0.9, 0.999), eps=1e-8,
    )


def trainable_of(model: nn.Module) -> dict[str, nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def rebind_parameters(run: Run) -> None:
    """The run's optimizer and trainable tensors again, after its model's parameters were
    replaced (sharded: `multidevice.sharding.shard_model`); before any step or resume."""
    run.optimizer = make_optimizer(run.spec, run.model, run.heads)
    run.trainable = trainable_of(run.model)


def train_rows(spec: TrainingSpec, *, data_dir: str | Path) -> int:
    """Rows of the training split: what the `auto` budget is worked out from."""
    from lora_engine.data import count_train_rows, load_examples

    try:
        return count_train_rows(spec.task, data_dir=data_dir, dataset=spec.dataset)
    except FileNotFoundError:  # no local file: the hub's copy (data/hub.py), loaded in full
        return len(load_examples(spec.task, "train", data_dir=data_dir, dataset=spec.dataset))


# --- checkpoints ----------------------------------------------------------------------------------


def _fingerprint(spec: TrainingSpec) -> str:
    # `devices` and `sharding` place the run, they do not change its math: a checkpoint resumes
    # on any count, sharded or not.
    return json.dumps(spec.model_dump(mode="json", exclude={"devices", "sharding"}), sort_keys=True)


def save_run_checkpoint(run: Run, folder: Path) -> Path | None:
    """Write the run's checkpoint into `folder`; its path. Across ranks every rank calls it (a
    sharded run gathers each tensor whole) and rank 0 alone writes (None elsewhere)."""
    trainable = {n: p.detach() for n, p in run.trainable.items()}
    optimizer = run.optimizer.state_dict()
    extra = run.selection.tensors() if run.selection is not None else {}
    if run.parallel is not None:
        trainable = run.parallel.gathered(trainable)
        optimizer = run.parallel.gathered_optimizer(optimizer)
        extra = run.parallel.gathered(extra, like={f"best/{n}": p for n, p in run.trainable.items()})
        if not run.parallel.writes:
            return None
    meta = {"total_steps": run.total_steps, "losses": run.losses, "examples": run.examples,
            "tokens": run.tokens, "device_s": run.device_s, "spec": _fingerprint(run.spec)}
    if run.selection is not None:
        meta["selection"] = run.selection.to_meta()
    ckpt = Checkpoint(step=run.step, trainable=trainable, optimizer=optimizer, rng=capture_rng_state(),
                      sampler=run.sampler.state_dict(), meta=meta, extra=extra)
    return save_checkpoint(folder, ckpt)


def restore_run(run: Run, path: Path) -> None:
    """Put `run` exactly where the checkpoint left off (weights, optimizer, data, RNG, counters)."""
    ckpt = load_checkpoint(path)
    if ckpt.meta.get("spec") != _fingerprint(run.spec):
        raise ValueError(f"checkpoint {path} was written for another training spec; "
                         "use an empty checkpoint_dir for a new spec")
    if set(ckpt.trainable) != set(run.trainable):
        raise ValueError(f"checkpoint {path} holds other trainable tensors than this model")
    layout = run.parallel
    with torch.no_grad():
        for name, p in run.trainable.items():
            whole = ckpt.trainable[name]
            p.copy_(layout.placed(whole, p) if layout is not None else whole.to(p.device, p.dtype))
    optimizer = ckpt.optimizer
    if layout is not None:
        in_order = [p for group in run.optimizer.param_groups for p in group["params"]]
        optimizer = layout.placed_optimizer(optimizer, in_order)
    run.optimizer.load_state_dict(optimizer)
    run.sampler.load_state_dict(ckpt.sampler)
    run.step = ckpt.step
    run.losses = list(ckpt.meta["losses"])
    run.examples, run.tokens = int(ckpt.meta["examples"]), int(ckpt.meta["tokens"])
    run.device_s = float(ckpt.meta.get("device_s", 0.0))
    if run.selection is not None:
        extra = ckpt.extra
        if layout is not None:  # the best weights as this rank keeps them (`Selection.record`)
            extra = {k: local_view(layout.placed(t, run.trainable[k[len("best/"):]])) if k.startswith("best/")
                     else t for k, t in extra.items()}
        run.selection.load(ckpt.meta["selection"], extra)
    restore_rng_state(ckpt.rng)


def resume_run(run: Run, checkpoint_dir: Path | None) -> Path | None:
    """Restore `run` from the newest checkpoint in `checkpoint_dir`; the checkpoint, or None when
    there is none (the run starts from step 0)."""
    resume = latest_checkpoint(checkpoint_dir)
    if resume is not None:
        restore_run(run, resume)
    return resume


# --- the loop -------------------------------------------------------------------------------------


def training_batches(run: Run) -> Iterator:
    from lora_engine.data.batching import collate

    for indices in run.sampler.forever():
        rows = run.encoded.ready(indices)
        if run.parallel is None:
            yield collate(rows, indices)
        else:  # this rank's slice of the batch
            yield run.parallel.shard(rows, indices)


@dataclass
class Pace:
    """Examples trained since this process began training a run (what examples/s reports)."""

    started: float = field(default_factory=time.perf_counter)
    seen: int = 0

    def count(self, run: Run, batch) -> None:
        """A micro-batch trained: into this pace and the run's totals (kept across resumes)."""
        self.seen += batch.examples
        run.examples += batch.examples
        run.tokens += batch.tokens

    def rate(self) -> float:
        return self.seen / max(time.perf_counter() - self.started, 1e-9)


def begin_step(run: Run) -> tuple | None:
    """Set every group's learning rate for the step `run.step` is about to take; with gradient
    accumulation, return the state the step starts from (for `abandon_step`)."""
    factor = lr_factor(run.step, run.total_steps, run.warmup)
    for group in run.optimizer.param_groups:
        group["lr"] = group["initial_lr"] * factor
    if run.spec.grad_accum == 1:
        return None
    return run.sampler.state_dict(), capture_rng_state(), run.examples, run.tokens


def abandon_step(run: Run, start: tuple, hooks: TrainHooks) -> None:
    """Drop a partly accumulated step, checkpoint the state before it, raise TrainingStopped."""
    sampler, rng, run.examples, run.tokens = start
    run.optimizer.zero_grad(set_to_none=True)
    run.sampler.load_state_dict(sampler)
    restore_rng_state(rng)
    if hooks.checkpoint_dir is not None:
        save_run_checkpoint(run, hooks.checkpoint_dir)
    raise TrainingStopped(run.step)


def clip_gradients(params: list[nn.Parameter]) -> torch.Tensor:
    """Clip the step's accumulated gradient to norm GRAD_CLIP in place; its norm before clipping,
    left on the device: the caller reads it in the device sync the step makes anyway."""
    return torch.nn.utils.clip_grad_norm_(params, GRAD_CLIP)


def apply_update(run: Run) -> None:
    """Take the optimizer step on the clipped gradient, clear the gradients, count the step."""
    run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)
    run.step += 1


def divergence(losses: list[float], factor: float | None, patience: int) -> str | None:
    """Why a run whose step losses so far are `losses` has diverged, or None.

    Non-finite last loss: diverged at once (the next update would write NaN into the weights).
    Otherwise, with a `factor`: the last `patience` losses all above `factor * losses[0]` (the
    run's first step, kept across resumes by the checkpoint). A single spike is not divergence.
    """
    if not losses:
        return None
    if not math.isfinite(losses[-1]):
        return "the loss is not finite (try a lower learning rate)"
    start = losses[0]
    if factor is None or not math.isfinite(start) or start <= 0 or len(losses) <= patience:
        return None
    tail = losses[-patience:]
    if all(loss > factor * start for loss in tail):
        return (f"the loss stayed above {factor:g} x its first value {start:.4g} for {patience} steps "
                "(try a lower learning rate)")
    return None


def progress_event(run: Run, step_loss: float, examples_per_s: float, grad_norm: float | None = None
                   ) -> Progress:
    """The progress of the step `run` just took."""
    epoch = run.step * run.spec.grad_accum / max(len(run.sampler), 1)
    return Progress(run.step, run.total_steps, step_loss, examples_per_s, run.tokens,
                    run.optimizer.param_groups[0]["lr"], epoch, grad_norm)


def end_step(run: Run, hooks: TrainHooks, step_loss: float, grad_norm: float, pace: Pace, *,
             since: float) -> None:
    """Everything after the backward passes and the clipping (`clip_gradients`, whose norm is
    `grad_norm`) of one optimizer step, alone or in a pack.

    A diverging loss raises TrainingDiverged before the update (nothing non-finite reaches the
    weights); then the update (step, zero_grad), the step's loss, its device time (from
    `since`), the progress hook (with the loss and the gradient norm), an evaluation of the
    held-out rows when due, a checkpoint when due or stopping; TrainingStopped (after the
    checkpoint) when `hooks.should_stop()`.
    """
    why = divergence([*run.losses, step_loss], hooks.divergence_factor, hooks.divergence_patience)
    if why is not None:
        raise TrainingDiverged(run.step + 1, step_loss, why)
    apply_update(run)
    run.losses.append(step_loss)
    took = time.perf_counter() - since
    run.device_s += took
    run.fit_s += took
    run.fit_steps += 1
    if hooks.on_progress is not None:
        hooks.on_progress(progress_event(run, step_loss, pace.rate(), grad_norm))
    if run.selection is not None and (run.step % run.spec.eval_every == 0 or run.step == run.total_steps):
        if hooks.on_phase is not None:
            hooks.on_phase("evaluating")
        point = evaluate_holdout(run)
        if hooks.on_evaluate is not None:
            hooks.on_evaluate(point)
    stop = hooks.should_stop is not None and hooks.should_stop()
    if hooks.checkpoint_dir is not None and (stop or (
            hooks.checkpoint_every and run.step % hooks.checkpoint_every == 0)):
        saved = save_run_checkpoint(run, hooks.checkpoint_dir)
        if hooks.on_checkpoint is not None:
            hooks.on_checkpoint(run.step, saved)
    if stop:
        raise TrainingStopped(run.step)


def fit(run: Run, hooks: TrainHooks) -> None:
    """Optimizer steps from `run.step` to `run.total_steps`, with the hooks. Mutates `run`."""
    model, kind, dev = run.model, run.info.kind, run.device
    params, batches, pace = list(run.trainable.values()), training_batches(run), Pace()
    model.train()
    while run.step < run.total_steps and not (run.selection is not None and run.selection.stopped_early):
        t_step = time.perf_counter()
        start = begin_step(run)
        step_loss = 0.0
        for micro in range(run.spec.grad_accum):
            # With gradient accumulation a step can be long (1024 micro-batches): stop requests
            # are obeyed between micro-batches too. The partial step is dropped and the run put
            # back exactly where the step began, so its checkpoint resumes as if never interrupted.
            if micro and hooks.should_stop is not None and hooks.should_stop():
                abandon_step(run, start, hooks)
            batch = next(batches)
            inputs = {k: v.to(dev.device, non_blocking=True) for k, v in batch.inputs.items()}
            with autocast(dev):
                loss = training_loss(model, inputs, kind) * batch.share / run.spec.grad_accum
            loss.backward()
            pace.count(run, batch)
            if micro + 1 < run.spec.grad_accum:
                step_loss += loss.item()
        last = loss.detach().float()
        if run.parallel is not None:  # every rank: the mean of the ranks' gradients and step losses
            step_loss, last = 0.0, run.parallel.sync_step(params, last + step_loss)
        norm = clip_gradients(params) if run.parallel is None else run.parallel.clip(params, GRAD_CLIP)
        # The last loss and the gradient norm in one read: the step's one device sync (its
        # device time ends here), as when the loss alone was read.
        last, grad_norm = torch.stack([last, norm.float()]).tolist()
        end_step(run, hooks, step_loss + last, grad_norm, pace, since=t_step)


# --- evaluation + output --------------------------------------------------------------------------


def eval_target(spec: TrainingSpec):
    """The validation split a resolved spec is scored on."""
    from lora_engine.evaluate import EvalTarget

    return EvalTarget(task=spec.task, max_length=spec.max_length, eval_size=spec.eval_size,
                      dataset=spec.dataset)


def evaluate_holdout(run: Run) -> EvalPoint:
    """Score the held-out training rows now and record it in `run.selection` (weights untouched)."""
    from lora_engine.evaluate import evaluate_classification

    t0 = time.perf_counter()
    scores = evaluate_classification(run.model, run.tokenizer, run.info, run.holdout,
                                     max_length=run.spec.max_length, device=run.device)
    scores = {k: float(v) for k, v in scores.items() if math.isfinite(v)}
    point = EvalPoint(step=run.step, epoch=round(run.step * run.spec.grad_accum / len(run.sampler), 3),
                      score=scores.get(run.info.primary_metric, -math.inf), metrics=scores)
    run.selection.record(point, run.trainable, final=run.step == run.total_steps)
    run.device_s += time.perf_counter() - t0
    return point


def evaluate_run(run: Run, *, data_dir: str | Path, decode=None, meteor: bool = True) -> dict[str, dict]:
    """{"validation": metrics} for the run's model (pure: weights untouched)."""
    from lora_engine.evaluate import score_validation, validation_examples
    from lora_engine.generate import GREEDY

    target = eval_target(run.spec)
    examples = validation_examples(target, data_dir=data_dir)
    return score_validation(run.model, run.tokenizer, target, examples, device=run.device,
                            decode=decode or GREEDY, meteor=meteor)


def adapter_meta(run: Run, metrics: dict) -> AdapterMeta:
    """lorafleet.json: what a later user needs to use the adapter without the job's spec."""
    spec = run.spec
    return AdapterMeta.for_task(run.info, base_model=spec.base_model, method=spec.method,
                                label_names=run.label_names, max_length=spec.max_length,
                                modules_to_save=tuple(run.heads), metrics=metrics,
                                spec=spec.model_dump(mode="json"),
                                pooling=spec.pooling if run.heads else "cls")


def write_output(run: Run, output_dir: Path, meta: AdapterMeta, card_stats: dict,
                 state: dict[str, torch.Tensor] | None = None) -> Path:
    """The adapter (PEFT format) or, for `full`, the whole model, with lorafleet.json and the card.
    `state`: the model's tensors gathered whole from a sharded run (None: the model's own)."""
    from lora_engine.adapters.io import save_adapter, save_full_model

    if not method(run.spec.method).adapter:
        return save_full_model(run.model, run.tokenizer, output_dir, meta, card_stats=card_stats, state=state)
    return save_adapter(run.model, output_dir, base_model_name=run.spec.base_model,
                        settings=run.lora_settings, task_type=run.info.kind, modules_to_save=run.heads,
                        meta=meta, card_stats=card_stats, state=state)


def placement_stats(run: Run) -> dict:
    """RunStats' `sharding` and `state_bytes` of a run across ranks (nothing on one device)."""
    if run.parallel is None:
        return {}
    from lora_engine.multidevice.sharding import local_state_bytes

    return {"sharding": run.parallel.sharding, "state_bytes": local_state_bytes(run.model, run.optimizer)}


# --- the whole run --------------------------------------------------------------------------------


def train(spec: TrainingSpec | dict, output_dir: str | Path, *, data_dir: str | Path,
          hooks: TrainHooks | None = None, cache=None, device: DeviceInfo | None = None,
          decode=None, meteor: bool = True) -> TrainResult:
    """Validate → setup → fit (resuming from `hooks.checkpoint_dir` if it holds a checkpoint) →
    evaluate → write the adapter folder. Raises SpecError before loading anything on a bad spec,
    TrainingStopped (after checkpointing) when `hooks.should_stop()` turns true.

    `decode` (generate.DecodeSettings) and `meteor` tune generation evaluation (tests use greedy).
    """
    wall0 = time.perf_counter()
    spec = resolve_spec(spec, data_dir=data_dir)
    hooks = hooks or TrainHooks()
    device = device or pick_device()
    mem = PeakMemory(device)
    mem.start()
    run = None
    try:
        run = setup(spec, data_dir=data_dir, cache=cache, device=device)
        mem.mark_loaded()
        resumed = resume_run(run, hooks.checkpoint_dir)
        if resumed is not None and hooks.on_resume is not None:
            hooks.on_resume(run.step, resumed)
        fit(run, hooks)
        return end_run(run, hooks, Path(output_dir), data_dir=data_dir, mem=mem, wall0=wall0, decode=decode,
                       meteor=meteor)
    finally:
        if cache is not None:
            # A method that changed the base weights: the cache must not hand them out again.
            cache.checkin(dirty=method(spec.method).changes_base)
        if run is not None:
            finish_tokenising(run)


def finish_tokenising(run: Run) -> threading.Thread | None:
    """The rows of the training split no batch asked for, tokenised in a "training-data" thread
    once training is over (the token cache then has the split for the next job on the same data).
    The thread uses the split's own tokenizer (a cold setup's), or a copy of the one it had (the
    run's, which this thread goes on using). The thread, or None when nothing is left."""
    from lora_engine.data.streaming import PendingEncoded

    split = run.encoded
    if not isinstance(split, PendingEncoded) or split.rows_done() == len(split):
        return None
    split.own_copy()  # a warm run's split tokenises with the run's tokenizer, which goes on serving
    thread = threading.Thread(target=contextvars.copy_context().run, args=(split.tokenise_rest,),
                              name="training-data", daemon=True)
    thread.start()
    return thread


def end_run(run: Run, hooks: TrainHooks, output_dir: Path, *, data_dir: str | Path, mem: PeakMemory,
            wall0: float, decode=None, meteor: bool = True) -> TrainResult | None:
    """Everything after a run's last step, alone or in a pack: the best evaluation's weights back
    (with evaluation during training), phase "evaluating" and the final evaluation, phase "saving"
    and the adapter folder, the run statistics (wall time from `wall0`, peak memory from `mem`).
    Every rank of a sharded run takes part (the forward and the gathering are collective); rank 0
    writes and returns the result, the others None."""
    if run.selection is not None:
        run.selection.restore_best(run.trainable)
    t_eval = time.perf_counter()
    if hooks.on_phase is not None:
        hooks.on_phase("evaluating")
    metrics = evaluate_run(run, data_dir=data_dir, decode=decode, meteor=meteor)
    if run.selection is not None:
        metrics["selection"] = run.selection.summary()
    synchronize(run.device)
    run.device_s += time.perf_counter() - t_eval
    if hooks.on_phase is not None:
        hooks.on_phase("saving")
    return finish_run(run, output_dir, metrics, mem=mem, wall0=wall0)


def finish_run(run: Run, output_dir: Path, metrics: dict, *, mem: PeakMemory, wall0: float
               ) -> TrainResult | None:
    """Write the adapter folder + model card; gather the run statistics (None on a rank that
    does not write)."""
    state = None
    if run.parallel is not None:
        # What the folder holds: an adapter the trainable tensors, a full model every one.
        names = set(run.trainable) if method(run.spec.method).adapter else None
        state = run.parallel.model_state(run.model, names)
        if not run.parallel.writes:
            return None
    meta = adapter_meta(run, metrics)
    trainable = sum(p.numel() for p in run.trainable.values())
    total = sum(p.numel() for p in run.model.parameters())
    card_stats = {"trainable_params": trainable, "total_params": total, "optimizer_steps": run.step,
                  "examples": run.examples, "tokens": run.tokens, "device": run.device.name,
                  "device_s": round(run.device_s, 2)}
    folder = write_output(run, output_dir, meta, card_stats, state)
    # Sizes only: whoever publishes the folder hashes it, once, where it finally lies.
    adapter_bytes = folder_bytes(folder)
    stats = RunStats(trainable_params=trainable, total_params=total, adapter_bytes=adapter_bytes,
                     wall_s=time.perf_counter() - wall0, device_s=run.device_s, device=run.device.name,
                     peak_mem_bytes=mem.peak_bytes(), examples=run.examples, tokens=run.tokens,
                     activation_mem_bytes=mem.activation_bytes(),
                     step_s=run.fit_s / run.fit_steps if run.fit_steps else None,
                     **placement_stats(run))
    return TrainResult(adapter_dir=folder, metrics=metrics, stats=stats, losses=list(run.losses),
                       eval_history=list(run.selection.history) if run.selection is not None else [])


