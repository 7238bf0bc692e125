"""What a job would cost, before it runs: examples and tokens it would train, device-seconds and
money, from the throughput measured on earlier jobs of the same base model (on the device that
base ran on most recently). Used by `job submit --dry-run` and by the monthly device-hour budget.

Examples = max_steps × batch_size × grad_accum, or epochs × training rows. Tokens are estimated
from the data set's ~4-characters-a-token count (custom data sets) and are None otherwise.
Device-seconds = examples / (examples per device-second measured); None when nothing was
measured on this base yet (the estimate says so rather than guessing).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from sqlalchemy.orm import Session

from lora_engine.catalog import CUSTOM_TASKS, GLUE_TASKS
from lora_engine.data.custom import HOLDOUT_FRACTION
from lora_engine.spec import TrainingSpec
from orchestrator.config import Settings
from orchestrator.registry import repositories as repo
from orchestrator.registry.models import Dataset


@dataclass(frozen=True)
class Estimate:
    train_rows: int | None
    examples: int | None
    tokens: int | None
    device: str | None
    device_seconds: float | None
    money: float | None
    basis: str  # where the device-seconds come from, or why there are none

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@cache
def _count_rows(path: Path, mtime: float, csv_header: bool) -> int:
    with path.open("rb") as fh:
        n = sum(1 for line in fh if line.strip())
    return max(n - int(csv_header), 0)


def _train_rows(spec: TrainingSpec, dataset: Dataset | None, data_dir: Path) -> int | None:
    if spec.task in CUSTOM_TASKS:
        if dataset is None:
            return None
        held = 0 if dataset.validation_sha256 else max(1, round(HOLDOUT_FRACTION * dataset.rows))
        return dataset.rows - held
    if spec.task in GLUE_TASKS:
        path, header = data_dir / "glue" / spec.task / "train.jsonl", False
    else:
        path, header = data_dir / "e2e" / "train.csv", True
    return _count_rows(path, path.stat().st_mtime, header) if path.is_file() else None


def price_per_hour(settings: Settings, device: str) -> float | None:
    """The configured price of a device type: an exact key, else the longest matching prefix."""
    if device in settings.prices:
        return settings.prices[device]
    matches = [k for k in settings.prices if device.startswith(k)]
    return settings.prices[max(matches, key=len)] if matches else None


def estimate_job(
    session: Session, spec: TrainingSpec, dataset: Dataset | None, settings: Settings
) -> Estimate:
    """The estimate of a resolved spec (see the module docstring)."""
    rows = _train_rows(spec, dataset, settings.data_dir)
    # An "auto" value still unresolved (the data could not be read here) gives no estimate; the
    # rows held out for evaluation are not trained on; early stopping can only make it less.
    batch = spec.batch_size if isinstance(spec.batch_size, int) else None
    epochs = spec.epochs if isinstance(spec.epochs, int | float) else None
    if spec.max_steps:
        examples: int | None = spec.max_steps * batch * spec.grad_accum if batch else None
    elif rows is not None and epochs is not None:
        examples = math.ceil(epochs * (rows - (spec.eval_holdout or 0)))
    else:
        examples = None
    tokens = None
    if dataset is not None and examples is not None and dataset.rows:
        tokens = math.ceil(examples * dataset.token_estimate / dataset.rows)
    measured = repo.throughput(session, spec.base_model or "")
    if measured is None or examples is None:
        why = (f"no earlier job on {spec.base_model!r} was measured" if measured is None
               else "the training rows are unknown")
        return Estimate(rows, examples, tokens, None, None, None, f"no estimate: {why}")
    device, rate, attempts = measured
    seconds = examples / rate
    price = price_per_hour(settings, device)
    money = seconds / 3600 * price if price is not None else None
    basis = f"{rate:.1f} examples/device-s measured on {device} over {attempts} earlier attempt(s)"
    return Estimate(rows, examples, tokens, device, seconds, money, basis)
