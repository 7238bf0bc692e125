"""Re-evaluating many adapters on one resident base model.

    reevaluate([AdapterToScore(id, folder, task, base_model), ...], data_dir=...) -> ReevalResult

Adapters are grouped by base model and model class (sequence classification / causal LM). Per
group the base is checked out of a `BaseModelCache` once (loaded once, or not at all when the
worker already holds it); the first adapter is injected (`load_adapter`); every further adapter
only has its tensors copied into the LoRA layers and heads already there (`swap_adapter`: no
reload, no re-injection, no copy of the base). Only an adapter whose layers differ (other targets,
rank, or DoRA vs not) makes the model strip its LoRA layers and inject afresh; adapters are
ordered by layout so those re-injections are as few as possible.

An adapter whose method changes the base weights (`methods.Method.changes_base`) cannot have the
next adapter swapped onto its base: it is scored in a group of its own, and its base is checked in
dirty (evicted) afterwards. (PiSSA and OLoRA change the base while training only: their files are
a plain LoRA on the untouched base, read as such, and swapped like any other.)

Heads: before each adapter the head tensors go back to the base's (`cache.reset_heads`), so an
adapter that saves no pooler is scored with the pristine one; a head of another label count (SST-2
2, MNLI 3, STS-B 1 on one base) gets a Linear of its own shape for that adapter, and the original
module is put back afterwards. At the end the cache's check-in strips everything and fingerprints
the base: a re-evaluation that wrote into a base weight would evict it.

Each adapter is scored as its job scored it: its task's validation split, the job's max length
and eval size (from lorafleet.json), unless `eval_size` overrides. An adapter that cannot be
scored (files gone, a custom data set no longer there, layers that fit no base) is reported in
`skipped` with the reason; the others are still scored.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from lora_engine.cache import BaseModelCache, strip_lora
from lora_engine.catalog import TASKS
from lora_engine.device import DeviceInfo, PeakMemory, pick_device, synchronize
from lora_engine.errors import AdapterError, LoraFleetInputError
from lora_engine.evaluate import EvalStats, EvalTarget, score_validation, validation_examples
from lora_engine.inject import set_module
from lora_engine.methods import Method, method

__all__ = ["AdapterToScore", "ReevalResult", "reevaluate"]


@dataclass(frozen=True)
class AdapterToScore:
    id: str
    folder: Path
    task: str
    base_model: str


@dataclass(frozen=True)
class ReevalResult:
    scores: dict[str, dict[str, dict[str, float]]]  # adapter id -> {"validation": {name: value}}
    skipped: dict[str, str]  # adapter id -> why it was not scored
    stats: EvalStats
    base_loads: int = 0  # base models loaded (0 when the cache already held them)
    injections: int = 0  # LoRA injections (one per group, plus one per layout change)
    swaps: int = 0  # adapters swapped in place


@dataclass
class _Prepared:
    item: AdapterToScore
    files: object  # adapters.io.AdapterFiles
    target: EvalTarget
    kind: str
    num_labels: int | None
    method: Method
    layout: tuple = field(default=())
    pooling: str = "cls"


def _model_class(kind: str) -> str:
    return "causal-lm" if kind == "generation" else "sequence-classification"


def _prepare(item: AdapterToScore, eval_size: int | None) -> _Prepared:
    from lora_engine.adapters.io import read_adapter_files, read_adapter_meta

    if item.task not in TASKS:
        raise LoraFleetInputError(f"unknown task {item.task!r}")
    info = TASKS[item.task]
    meta = read_adapter_meta(item.folder)
    files = read_adapter_files(item.folder)
    job_spec = meta.spec or {}
    target = EvalTarget(task=item.task, max_length=meta.max_length or info.max_length,
                        eval_size=eval_size if eval_size is not None else job_spec.get("eval_size"),
                        dataset=job_spec.get("dataset"))
    num_labels = None
    if info.kind == "classification":
        num_labels = meta.num_labels or len(meta.label_names) or info.num_labels
        if not num_labels:
            raise AdapterError(f"adapter {item.id}: lorafleet.json records no label count")
    s = files.settings
    entry = method(s.method)
    # What decides whether a swap can reuse the layers in place: the variant's parameters
    # (DoRA's magnitude), the rank and the targets; plain LoRA layouts (no variant) sort first.
    layout = (entry.variant or "", s.rank, str(s.targets))
    return _Prepared(item, files, target, info.kind, num_labels, entry, layout, meta.pooling)


class _Heads:
    """Head modules of other shapes swapped in for one adapter, and put back afterwards."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.originals: dict[str, nn.Module] = {}

    def fit(self, weights: dict[str, torch.Tensor]) -> None:
        """Give every Linear whose saved weight has another shape a fresh Linear of that shape."""
        from lora_engine.layers import is_lora_param

        state = self.model.state_dict()
        for key, tensor in weights.items():
            if is_lora_param(key) or key not in state or tuple(state[key].shape) == tuple(tensor.shape):
                continue
            name = key.rsplit(".", 1)[0]
            old = self.model.get_submodule(name)
            if not isinstance(old, nn.Linear) or key != f"{name}.weight" or tensor.ndim != 2:
                continue  # load/swap reports the mismatch
            self.originals.setdefault(name, old)
            new = nn.Linear(old.in_features, tensor.shape[0], bias=old.bias is not None,
                            device=old.weight.device, dtype=old.weight.dtype)
            set_module(self.model, name, new)
            state = self.model.state_dict()

    def restore(self) -> None:
        for name, module in self.originals.items():
            set_module(self.model, name, module)
        self.originals.clear()


def _score_group(group: list[_Prepared], cache: BaseModelCache, *, data_dir, device: DeviceInfo, decode,
                 meteor: bool, examples: dict, result: dict, tick: Callable[[], None]
                 ) -> tuple[int, int, float]:
    """Score one group on its resident base; returns (injections, swaps, device seconds)."""
    from lora_engine.adapters.io import load_adapter, swap_adapter
    from lora_engine.forward.encoder import set_pooling
    from lora_engine.inject import lora_modules

    first = group[0]
    model, tokenizer = cache.checkout(first.item.base_model, first.kind, first.num_labels)
    heads = _Heads(model)
    injections = swaps = 0
    device_s = 0.0
    try:
        model.to(device.device)
        model.eval()
        for p in group:
            t0 = time.perf_counter()
            try:
                heads.restore()
                cache.reset_heads()
                heads.fit(p.files.weights)
                if not lora_modules(model):
                    load_adapter(model, p.files)
                    injections += 1
                elif swap_adapter(model, p.files):
                    swaps += 1
                else:
                    strip_lora(model)
                    load_adapter(model, p.files)
                    injections += 1
                if p.kind != "generation":
                    set_pooling(model, p.pooling)  # what this adapter's head was trained to read
                model.to(device.device)
                model.eval()
                key = p.target
                if key not in examples:
                    examples[key] = validation_examples(key, data_dir=data_dir)
                result["scores"][p.item.id] = score_validation(model, tokenizer, key, examples[key],
                                                               device=device, decode=decode, meteor=meteor)
                result["scored"] += len(examples[key])
            except (AdapterError, LoraFleetInputError, OSError, ValueError) as exc:
                result["skipped"][p.item.id] = str(exc)
            synchronize(device)
            device_s += time.perf_counter() - t0
            tick()
    finally:
        heads.restore()
        cache.checkin(dirty=any(p.method.changes_base for p in group))
    return injections, swaps, device_s


def reevaluate(adapters: Sequence[AdapterToScore], *, data_dir: str | Path,
               cache: BaseModelCache | None = None, device: DeviceInfo | None = None,
               eval_size: int | None = None, decode=None, meteor: bool = True,
               on_progress: Callable[[int, int], None] | None = None,
               should_stop: Callable[[], bool] | None = None) -> ReevalResult:
    """Score every adapter on its task's validation split, one resident base per group.

    on_progress(done, total) after each adapter; should_stop() is asked after each adapter and
    raises TrainingStopped(done) when true (what was scored so far is not returned).
    """
    from lora_engine.errors import TrainingStopped
    from lora_engine.generate import GREEDY

    wall0 = time.perf_counter()
    device = device or pick_device()
    cache = cache if cache is not None else BaseModelCache()
    loads0 = cache.loads
    result: dict = {"scores": {}, "skipped": {}, "scored": 0}
    groups: dict[tuple[str, str, str], list[_Prepared]] = {}
    for item in adapters:
        try:
            p = _prepare(item, eval_size)
        except (AdapterError, LoraFleetInputError, OSError, ValueError) as exc:
            result["skipped"][item.id] = str(exc)
            continue
        # An adapter whose method changes the base is scored alone, on a base evicted after it.
        alone = item.id if p.method.changes_base else ""
        groups.setdefault((item.base_model, _model_class(p.kind), alone), []).append(p)
    done = len(result["skipped"])
    total = len(adapters)

    def tick() -> None:
        nonlocal done
        done += 1
        if on_progress is not None:
            on_progress(done, total)
        if should_stop is not None and should_stop():
            raise TrainingStopped(done)

    mem = PeakMemory(device)
    mem.start()
    injections = swaps = 0
    device_s = 0.0
    examples: dict = {}
    for key in sorted(groups):
        group = sorted(groups[key], key=lambda p: (p.layout, p.item.id))
        i, s, d = _score_group(group, cache, data_dir=data_dir, device=device, decode=decode or GREEDY,
                               meteor=meteor, examples=examples, result=result, tick=tick)
        injections, swaps, device_s = injections + i, swaps + s, device_s + d
    stats = EvalStats(wall_s=time.perf_counter() - wall0, device_s=device_s, device=device.name,
                      peak_mem_bytes=mem.peak_bytes(), scored=result["scored"])
    return ReevalResult(scores=result["scores"], skipped=result["skipped"], stats=stats,
                        base_loads=cache.loads - loads0, injections=injections, swaps=swaps)
