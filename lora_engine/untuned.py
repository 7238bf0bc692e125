"""The untuned baseline: the base model scored on the task's validation split, nothing trained.

    evaluate_untuned(spec, data_dir=...) -> EvalResult(metrics, stats)     (spec.method == "none")

- classification / regression: the base model with a fresh classification head drawn from the
  spec's seed, exactly as a training job draws it before its first step (`reset_head` after
  `seed_everything(seed)`), so the same spec always gives the same numbers and "what training
  added" is measured from the very head training starts from; the head reads the base model's own
  pooling (`model_ref.base_pooling`, what an auto-pooled job trains with). Classification also reports
  `majority_class_rate`: the share of the most frequent label in the scored rows (the accuracy of
  always answering it) — a second reference a fresh head should land near. Regression (STS-B)
  reports none: a constant prediction has no Pearson or Spearman correlation (undefined, 0/0).
- generation: the base model's own greedy continuation of the task's prompt (the E2E template,
  or a custom prompt verbatim), scored with the task's metrics.
"""

from __future__ import annotations

import time
from pathlib import Path

from lora_engine.device import DeviceInfo, PeakMemory, pick_device, seed_everything, synchronize
from lora_engine.errors import LoraConfigError
from lora_engine.evaluate import (
    EvalResult,
    EvalStats,
    majority_class_rate,
    score_validation,
    validation_examples,
)
from lora_engine.spec import TrainingSpec, validate_spec

__all__ = ["evaluate_untuned"]


def evaluate_untuned(spec: TrainingSpec | dict, *, data_dir: str | Path, cache=None,
                     device: DeviceInfo | None = None, decode=None, meteor: bool = True) -> EvalResult:
    """Score the untuned base model of `spec` (method 'none') on its task's validation split.

    `cache`: a warm worker's BaseModelCache (the model is checked in pristine afterwards).
    """
    from lora_engine.forward.encoder import set_pooling
    from lora_engine.generate import GREEDY
    from lora_engine.inject import head_module_names
    from lora_engine.model_ref import base_pooling
    from lora_engine.recipe import eval_target, label_names_for, load_model, reset_head

    wall0 = time.perf_counter()
    spec = validate_spec(spec).resolved()
    if spec.method != "none":
        raise LoraConfigError(f"evaluate_untuned scores method 'none' specs, not {spec.method!r}; "
                              "train() runs the others")
    info = spec.info
    device = device or pick_device()
    target = eval_target(spec)
    examples = validation_examples(target, data_dir=data_dir)
    num_labels = len(label_names_for(spec)) if info.kind == "classification" else None
    mem = PeakMemory(device)
    mem.start()
    model, tokenizer = load_model(spec, info, num_labels, cache)
    try:
        model.to(device.device)
        heads = head_module_names(model) if info.kind != "generation" else []
        if heads:
            set_pooling(model, base_pooling(spec.base_model))  # the base model as it is
        seed_everything(spec.seed)
        reset_head(model, heads)
        t0 = time.perf_counter()
        metrics = score_validation(model, tokenizer, target, examples, device=device,
                                   decode=decode or GREEDY, meteor=meteor)
        synchronize(device)
        device_s = time.perf_counter() - t0
    finally:
        if cache is not None:
            cache.checkin()
    if info.kind == "classification":
        metrics["validation"]["majority_class_rate"] = majority_class_rate(examples)
    stats = EvalStats(wall_s=time.perf_counter() - wall0, device_s=device_s, device=device.name,
                      peak_mem_bytes=mem.peak_bytes(), scored=len(examples))
    return EvalResult(metrics=metrics, stats=stats)
