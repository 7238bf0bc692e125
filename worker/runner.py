"""Execute one job on this worker: claim, train with hooks, publish the adapter, record the outcome.

    claim (atomic, fair share) → TrainHooks(progress → heartbeat + cancel flag, checkpoints)
      → lora_engine.recipe.train → adapter moved to <artifacts>/<tenant_id>/<adapter_id>/
      → sha256 + size → finish_job_success (adapter + metrics + usage, one transaction)

Failures are classified by `worker.policy` (the only place that decides retries). Checkpoints
live in <artifacts>/<tenant_id>/checkpoints/<job_id>/, keyed by the job, not the attempt: a
requeued or retried job resumes from the last one; they are removed once the job succeeded.

The base model stays resident between jobs (`BaseModelCache`, one per worker process): the next
job on the same base only re-creates its LoRA parameters and head.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.config import Settings, get_settings
from orchestrator.registry.db import session_scope
from worker.policy import Outcome, classify, describe, retry_delay

log = logging.getLogger(__name__)

# Heartbeats are one registry transaction each: at most one per this many seconds (and on the
# last step), so fast tiny-model steps do not turn the registry into the bottleneck. A cancel is
# therefore noticed within this interval plus one training step.
HEARTBEAT_MIN_INTERVAL_S = 0.5

# The keep-alive beats this many times per lease when no training step does (see KeepAlive).
KEEPALIVE_PER_LEASE = 3

_model_cache: Any = None
_DEFAULT_CACHE: Any = object()
# Set by the worker's shutdown signal: the running job checkpoints, stops and goes back to the
# queue instead of holding the shutdown for the rest of its training.
_shutting_down = False


def shutting_down() -> bool:
    return _shutting_down


def request_shutdown() -> None:
    """Ask the running job (if any) to checkpoint and hand itself back to the queue."""
    global _shutting_down
    _shutting_down = True


def model_cache() -> Any:
    """This process's warm BaseModelCache (created on first use; torch loads here, not at import)."""
    global _model_cache
    if _model_cache is None:
        from lora_engine.cache import BaseModelCache

        _model_cache = BaseModelCache()
    return _model_cache


def reset_model_cache() -> None:
    """Forget the resident base model (after a fork, or to measure a cold start)."""
    global _model_cache
    _model_cache = None


def default_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass
class RunResult:
    """What happened to a message: `claimed` is None when there was nothing to claim."""

    outcome: str  # "succeeded" | "failed" | "cancelled" | "requeued" | "lost" | "skipped"
    job_id: str | None
    detail: str = ""
    adapter_id: str | None = None
    retry_in_s: float | None = None


@dataclass
class _Heartbeat:
    """The progress hook's state: heartbeats throttled, the last cancel flag remembered."""

    settings: Settings
    job_id: str
    worker_id: str
    last_sent: float = 0.0
    cancel: bool = False
    step: int = 0
    total: int | None = None
    loss: float | None = None
    checkpoints: set[int] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def on_progress(self, progress: Any) -> None:
        from orchestrator.services import record_checkpoint

        self.step = int(progress.step)
        now = time.monotonic()
        last_step = progress.total is not None and progress.step >= progress.total
        every = self.settings.checkpoint_every
        previous = self.step - 1
        if every and previous > 0 and previous % every == 0 and previous not in self.checkpoints:
            # The recipe saves a checkpoint right after the progress hook of every `every`-th step;
            # record it once the next step proves it was written.
            self.checkpoints.add(previous)
            with session_scope(self.settings) as session:
                record_checkpoint(session, self.job_id, self.worker_id, previous)
        self.total = progress.total
        self.loss = None if progress.loss is None else float(progress.loss)
        if now - self.last_sent < HEARTBEAT_MIN_INTERVAL_S and not last_step and self.last_sent:
            return
        # Raises LeaseLost when the job is no longer ours: train() unwinds, we write nothing.
        self.send()

    def send(self) -> None:
        """One heartbeat with the latest progress: extends the lease, reads the cancel flag."""
        from orchestrator.services import heartbeat

        with self.lock, session_scope(self.settings) as session:
            self.last_sent = time.monotonic()
            self.cancel = heartbeat(
                session,
                self.job_id,
                self.worker_id,
                self.step,
                self.total,
                self.loss,
                self.settings.lease_seconds,
            )

    def should_stop(self) -> bool:
        return self.cancel or _shutting_down


class KeepAlive(threading.Thread):
    """Heartbeats while no training step reports: loading the base, tokenising, evaluating.

    The progress hook only beats between optimiser steps, and a long evaluation (E2E decoding
    on a CPU takes minutes) would otherwise outlive the lease and have the reconciler hand the
    job to another worker. A worker process that dies takes this thread with it, so a crashed
    job's lease still expires.
    """

    def __init__(self, beat: _Heartbeat, interval_s: float):
        super().__init__(name=f"keepalive-{beat.job_id}", daemon=True)
        self.beat, self.interval_s = beat, interval_s
        self._stop_event = threading.Event()

    def run(self) -> None:
        from orchestrator.services import LeaseLost

        while not self._stop_event.wait(self.interval_s):
            if time.monotonic() - self.beat.last_sent < self.interval_s:
                continue  # training steps are beating
            try:
                self.beat.send()
            except LeaseLost as exc:
                log.warning("job %s: %s", self.beat.job_id, exc)
                return
            except Exception:  # a registry hiccup: the next tick tries again, well within the lease
                log.warning("job %s: keep-alive heartbeat failed", self.beat.job_id, exc_info=True)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=30)


def checkpoint_dir(settings: Settings, tenant_id: str, job_id: str) -> Path:
    return settings.artifacts / tenant_id / "checkpoints" / job_id


def _usage(stats: Any | None, wall_s: float) -> dict[str, Any]:
    if stats is None:
        # The attempt failed before the recipe reported: its wall time still cost a device.
        return {"device": _device_name(), "device_seconds": wall_s, "wall_seconds": wall_s}
    return {
        "device": stats.device,
        "device_seconds": float(stats.device_s),
        "wall_seconds": float(stats.wall_s),
        "peak_memory_bytes": stats.peak_mem_bytes,
        "examples": int(stats.examples),
        "tokens": int(stats.tokens),
    }


def _device_name() -> str:
    try:
        from lora_engine.device import pick_device

        return pick_device().name
    except Exception:  # the device itself may be what failed
        return "unknown"


def _publish(result: Any, settings: Settings, tenant_id: str) -> tuple[str, Path, str, int]:
    """Move the trained adapter to its final folder (one rename: atomic) and digest it."""
    from lora_engine.adapter_io import adapter_files_digest
    from orchestrator.services import new_adapter_path

    adapter_id = str(uuid.uuid4())
    final = Path(new_adapter_path(settings, tenant_id, adapter_id))
    final.parent.mkdir(parents=True, exist_ok=True)
    os.replace(result.adapter_dir, final)
    sha256, size = adapter_files_digest(final)
    return adapter_id, final, sha256, size


def run_job(
    job_id: str,
    *,
    worker_id: str | None = None,
    settings: Settings | None = None,
    cache: Any = _DEFAULT_CACHE,
) -> RunResult:
    """Claim and run one job (the message named `job_id`; fair share may pick another queued job).

    Never raises for a job's own failure: the outcome is recorded in the registry and returned.
    `cache=None` disables the warm base-model cache (benchmarks).
    """
    from lora_engine.spec import TrainingSpec
    from orchestrator.services import claim_next, unclaimable_reason
    from orchestrator.services.datasets import with_stored_dataset

    settings = settings or get_settings()
    worker_id = worker_id or default_worker_id()
    with session_scope(settings) as session:
        job = claim_next(session, worker_id, settings.lease_seconds)
        if job is None:
            reason = unclaimable_reason(session, job_id)
            log.info("nothing to claim for message %s: %s", job_id, reason)
            return RunResult("skipped", None, reason)
        job_id, tenant_id, spec_json, attempt = job.id, job.tenant_id, dict(job.spec), job.attempts
    log.info("claimed job %s (attempt %d) as %s", job_id, attempt, worker_id)

    beat = _Heartbeat(settings, job_id, worker_id)
    staging = settings.artifacts / tenant_id / ".staging" / f"{job_id}-{attempt}"
    started = time.monotonic()
    result = None
    keepalive = KeepAlive(beat, interval_s=max(settings.lease_seconds / KEEPALIVE_PER_LEASE, 0.1))
    keepalive.start()
    try:
        from lora_engine.recipe import TrainHooks, train

        spec = TrainingSpec.model_validate(spec_json)
        with session_scope(settings) as session:  # the stored, validated bytes (sha256 checked)
            spec = with_stored_dataset(session, spec, tenant_id, settings)
        hooks = TrainHooks(
            on_progress=beat.on_progress,
            should_stop=beat.should_stop,
            checkpoint_every=settings.checkpoint_every,
            checkpoint_dir=checkpoint_dir(settings, tenant_id, job_id),
        )
        try:
            result = train(
                spec,
                staging,
                data_dir=settings.data_dir,
                hooks=hooks,
                cache=model_cache() if cache is _DEFAULT_CACHE else cache,
            )
        finally:
            keepalive.stop()
        return _succeed(settings, job_id, tenant_id, worker_id, result)
    except Exception as exc:  # classified below; a bug surfaces as a requeue with its traceback logged
        keepalive.stop()
        return _settle(
            settings,
            job_id,
            worker_id,
            attempt,
            exc,
            _usage(getattr(result, "stats", None), time.monotonic() - started),
            cancel_requested=beat.cancel,
        )
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        with contextlib.suppress(OSError):  # only if no other attempt is staging there
            staging.parent.rmdir()


def _succeed(settings: Settings, job_id: str, tenant_id: str, worker_id: str, result: Any) -> RunResult:
    from orchestrator.services import AdapterRecord, LeaseLost, finish_job_success

    adapter_id, final, sha256, size = _publish(result, settings, tenant_id)
    stats = result.stats
    record = AdapterRecord(
        id=adapter_id,
        path=str(final),
        sha256=sha256,
        bytes=size,
        trainable_params=int(stats.trainable_params),
        total_params=int(stats.total_params),
    )
    try:
        with session_scope(settings) as session:
            finish_job_success(
                session, job_id, worker_id, record, result.metrics, usage=_usage(stats, stats.wall_s)
            )
    except LeaseLost:
        # The job was taken back while we trained: the registry does not know this folder.
        shutil.rmtree(final, ignore_errors=True)
        raise
    shutil.rmtree(checkpoint_dir(settings, tenant_id, job_id), ignore_errors=True)
    log.info("job %s succeeded: adapter %s (%d bytes)", job_id, adapter_id, size)
    return RunResult("succeeded", job_id, adapter_id=adapter_id)


def _settle(
    settings: Settings,
    job_id: str,
    worker_id: str,
    attempt: int,
    exc: Exception,
    usage: dict[str, Any],
    *,
    cancel_requested: bool = True,
) -> RunResult:
    """Record a job that did not succeed, as the retry policy says.

    `cancel_requested`: the job's cancel flag as last seen; a stop without it was the shutdown.
    """
    from orchestrator.dispatch import send_run_job
    from orchestrator.services import LeaseLost, fail_job, mark_cancelled, mark_dispatched, requeue_job

    outcome = classify(exc, cancel_requested=cancel_requested)
    reason = describe(exc) if cancel_requested or not _shutting_down else "worker shutting down"
    try:
        with session_scope(settings) as session:
            if outcome is Outcome.LOST:
                log.warning("job %s: %s; stopping without writing", job_id, reason)
                return RunResult("lost", job_id, reason)
            if outcome is Outcome.CANCELLED:
                mark_cancelled(session, job_id, worker_id, step=getattr(exc, "step", None), usage=usage)
                return RunResult("cancelled", job_id, reason)
            if outcome is Outcome.FAILED:
                log.info("job %s failed (bad input): %s", job_id, reason)
                fail_job(session, job_id, worker_id, reason, usage=usage)
                return RunResult("failed", job_id, reason)
            log.exception("job %s: transient failure on attempt %d", job_id, attempt, exc_info=exc)
            state = requeue_job(session, job_id, worker_id, reason, usage=usage)
            if state != "queued":
                return RunResult("failed", job_id, reason)
            # A job handed back by a shutting-down worker is resumable at once, by another worker.
            delay = 0.0 if _shutting_down and not cancel_requested else retry_delay(attempt)
            send_run_job(job_id, settings=settings, countdown=delay)
            mark_dispatched(session, [job_id])
            return RunResult("requeued", job_id, reason, retry_in_s=delay)
    except LeaseLost as lost:
        log.warning("job %s: %s; not recording %s", job_id, lost, outcome.value)
        return RunResult("lost", job_id, str(lost))
