"""What an attempt hands an executor, and what an executor hands back.

An executor does the work of one job kind (`worker.kinds`): it reads its own spec from
`JobContext.spec`, reports through `JobContext.hooks`, writes any adapter under
`JobContext.staging_dir`, and returns a `JobResult`. It never touches the registry and never
decides a retry: it returns, or raises a typed error that the retry policy classifies. The
attempt (`worker.attempt`) owns everything around it (claim, heartbeat, cancel, publishing,
recording, retry), the same for every kind.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.config import Settings
from orchestrator.services.leases import UsageRecord
from orchestrator.services.metrics import Point


@dataclass(frozen=True)
class JobHooks:
    """The lifecycle's side of a running job (heartbeat, cancel flag, checkpoint events)."""

    # (step, total, loss, gradient norm before clipping: training steps only)
    on_progress: Callable[[int, int | None, float | None, float | None], None]
    should_stop: Callable[[], bool]  # cancel requested, or the worker shutting down
    on_checkpoint: Callable[[int, Path], None]  # (step, folder) once the checkpoint is on disk
    on_resume: Callable[[int, Path], None]  # (step, folder) the work resumed from
    # (step, epoch, {series: value}): points of the job's training curves (metric history)
    on_metrics: Callable[[int, float, dict[str, float]], None] | None = None
    # "evaluating" / "saving" as such a stretch begins (steps again mean "training")
    on_phase: Callable[[str], None] | None = None


@dataclass(frozen=True)
class JobContext:
    job_id: str
    tenant_id: str
    kind: str
    attempt: int  # 1-based, this claim's
    spec: dict[str, Any]  # the job's stored (resolved) spec, as JSON
    settings: Settings
    hooks: JobHooks
    staging_dir: Path  # this attempt's own folder (not created); an adapter is written here
    checkpoint_dir: Path  # the job's checkpoints, shared by its attempts
    cache: Any  # the worker's warm lora_engine BaseModelCache, or None


@dataclass(frozen=True)
class StagedAdapter:
    """An adapter folder written under the staging dir, not yet published or hashed."""

    folder: Path
    trainable_params: int
    total_params: int


@dataclass(frozen=True)
class JobResult:
    metrics: dict[str, dict[str, float]]  # {split: {name: value}}
    usage: UsageRecord
    adapter: StagedAdapter | None = None  # train: the adapter it wrote; other kinds: None
    points: Sequence[Point] = ()  # curves to add to the metric history (evaluations in training)
    # reevaluate: {adapter_id: {split: {name: value}}}, the scores of the adapters it re-scored
    reevaluated: dict[str, dict[str, dict[str, float]]] | None = None


Executor = Callable[[JobContext], JobResult]
