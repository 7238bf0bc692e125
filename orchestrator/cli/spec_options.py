"""`job submit`'s options, generated from the training spec's fields, so every field is reachable.

Each field of `lora_engine.spec.TrainingSpec` becomes `--field-name` with the field's type (a
`Literal` becomes a choice, `targets` a comma-separated list); `--set key=value` reaches any field
too (the value is read as JSON when it parses, else as text; JSON with a duplicate key, NaN or
nesting past the cap is refused, as in every document from outside: `lora_engine.safe_json`). The
options are built on first use
of the command (its parsing or its --help), not at CLI start-up, so `lorafleet --help` does not
import pydantic.
"""

from __future__ import annotations

import json
import types
import typing
from typing import Any

import click

HELP = {
    "task": "GLUE task, e2e, custom-classification or custom-generation",
    "method": "lora, rslora, dora, loraplus (B at loraplus_lr_ratio x A's lr), pissa / olora (A and B "
              "from W0's SVD / QR, stored as a LoRA of rank 2r), full; 'none' trains nothing: it scores "
              "the untuned base model (a baseline)",
    "loraplus_lr_ratio": "loraplus only: B's learning rate over A's (default 16)",
    "rank": "LoRA rank (default 8)",
    "alpha": "LoRA alpha (default: 2 x rank)",
    "base_model": "model alias, local folder ('./name', '/path'), hub id ('org/name'), or the id of one "
                  "of the tenant's full fine-tunes (default: the task's)",
    "dataset": "custom tasks: a data set id, or a JSONL file (validated and uploaded first)",
    "init_from": "start from this adapter id (same tenant and base model), for lineage; or an adapter "
                 "folder (registered as the tenant's adapter first)",
    "max_steps": "training budget in optimizer steps",
    "epochs": "training budget in epochs, or auto (default: from the data size)",
    "lr": "learning rate, or auto (default: the method's for the architecture)",
    "batch_size": "rows per micro-batch, or auto (default: from the data size)",
    "eval_every": "score held-out training rows every N steps, keep the best (default: each epoch "
                  "with an auto budget, else 0 = never)",
    "eval_holdout": "training rows held out for those evaluations (default: 10%, 32..500)",
    "patience": "stop after N evaluations without improvement (default 3; 0 = never early)",
    "min_delta": "the improvement an evaluation must beat the best by (default 0)",
    "eval_size": "validation rows to score (default: all)",
    "targets": "comma-separated module names, or all-linear",
    "gradient_checkpointing": "recompute activations in the backward pass: ~0.4x the activation "
                              "memory for 1.3-1.5x the step time, same numbers",
    "pooling": "what a classifier's head reads: the first token (cls) or the mean of the last layer "
               "(mean); auto (default): the base model's own (MiniLM-L6: mean)",
    "devices": "devices one run spans, data parallel (default 1); a worker started with "
               "`--devices K` takes jobs of up to K",
    "sharding": "with devices > 1: replicate (every device the whole model), fsdp (each device a "
                "1/N shard of the weights, gradients and optimizer state) or auto (default: fsdp when "
                "that state would not fit one CUDA device; never on CPUs); same numbers either way",
    "quantize": "QLoRA: nf4 loads the base 4-bit through bitsandbytes (a Llama-family base, lora or "
                "rslora, a generation task; CUDA workers only)",
}


class NumberOrAuto(click.ParamType):
    """A number (int or float, as the field is) or the word `auto`."""

    def __init__(self, number: type):
        self.number = number
        self.name = f"{number.__name__}|auto"

    def convert(self, value: Any, param: Any, ctx: Any) -> Any:
        if value == "auto" or isinstance(value, self.number):
            return value
        try:
            return self.number(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is neither a number nor 'auto'", param, ctx)


def _click_type(annotation: Any) -> tuple[Any, bool]:
    """(click type, is a list) of a field annotation such as `int | None` or a Literal."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    numbers = [a for a in args if a in (int, float)]
    if numbers and any(typing.get_origin(a) is typing.Literal for a in args):  # e.g. float | "auto"
        return NumberOrAuto(numbers[0]), False
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(args) == 1:
        annotation = args[0]
    if typing.get_origin(annotation) is typing.Literal:
        return click.Choice([str(a) for a in typing.get_args(annotation)]), False
    if typing.get_origin(annotation) is list:
        return click.STRING, True
    return {int: click.INT, float: click.FLOAT, bool: click.BOOL}.get(annotation, click.STRING), False


def spec_options() -> list[click.Option]:
    from lora_engine.catalog import ALL_TASKS
    from lora_engine.model_ref import MODEL_ALIASES
    from lora_engine.spec import BOUNDS, HALF_OPEN, TrainingSpec, allowed_range

    options = []
    for name, field in TrainingSpec.model_fields.items():
        kind, _ = _click_type(field.annotation)
        text = HELP.get(name, name.replace("_", " "))
        if name in BOUNDS or name in HALF_OPEN:
            text += f" ({allowed_range(name)})"
        if name == "task":
            text += f"; one of {', '.join(ALL_TASKS)}"
        if name == "base_model":
            text += f"; aliases: {', '.join(MODEL_ALIASES)}"
        options.append(click.Option([f"--{name.replace('_', '-')}", name], type=kind, default=None,
                                    required=name == "task", help=text[0].upper() + text[1:] + "."))
    return options


class SpecCommand(click.Command):
    """A command whose spec options are added on first use (see the module docstring)."""

    _spec_added = False

    def get_params(self, ctx: click.Context) -> list[click.Parameter]:
        if not self._spec_added:
            self._spec_added = True
            self.params[:0] = spec_options()
        return super().get_params(ctx)


def _value(key: str, text: str) -> Any:
    """`text` read as JSON (under safe_json's limits) when it is JSON at all, else the text."""
    from lora_engine.safe_json import DocumentError, loads

    try:
        return loads(text, what=f"--set {key[:40]}")
    except DocumentError:
        try:
            json.loads(text)
        except (ValueError, RecursionError):
            return text  # not JSON: a name or a path, as typed
        raise  # JSON, but a kind safe_json refuses: say why rather than take it as text


def spec_from_options(options: dict[str, Any], overrides: tuple[str, ...]) -> dict[str, Any]:
    """The spec fields given (by option or by --set); None options are left to the defaults."""
    from lora_engine.spec import TrainingSpec

    spec: dict[str, Any] = {}
    for name, field in TrainingSpec.model_fields.items():
        value = options.get(name)
        if value is None:
            continue
        if _click_type(field.annotation)[1] and isinstance(value, str):
            value = [part.strip() for part in value.split(",")]
        spec[name] = value
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not key=value", param_hint="--set")
        if key in spec:
            raise click.BadParameter(f"{key} is given twice (as an option and by --set)", param_hint="--set")
        spec[key] = _value(key, text)
    return spec
