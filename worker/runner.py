"""The lifecycle of one job on this worker, the same for every job kind:

    claim (atomic, fair share) → JobHooks (progress → heartbeat + cancel flag; checkpoint events)
      → the kind's executor (`worker.kinds`) → its staged adapter, if any, renamed to its final
      folder and hashed (once) → finish_job_success (adapter + metrics + usage, one transaction)

Failures are classified by `worker.policy` (the only place that decides retries). Paths come
from `orchestrator.artifacts`; a job's checkpoints are removed once it succeeded.

The base model stays resident between jobs (`BaseModelCache`, one per worker process): the next
job on the same base only re-creates its LoRA parameters and head.
"""

from __future__ import annotations

import contextlib
import dataclasses
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

from orchestrator import artifacts
from orchestrator.config import Settings, get_settings
from orchestrator.registry.db import session_scope
from orchestrator.services.leases import UsageRecord
from worker.executor import JobContext, JobHooks, JobResult
from worker.logs import bind_job
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
    points: list = field(default_factory=list)  # metric-history points not yet written
    lock: threading.Lock = field(default_factory=threading.Lock)

    def on_progress(self, step: int, total: int | None, loss: float | None) -> None:
        self.step, self.total = int(step), total
        self.loss = None if loss is None else float(loss)
        now = time.monotonic()
        last_step = total is not None and step >= total
        if now - self.last_sent < HEARTBEAT_MIN_INTERVAL_S and not last_step and self.last_sent:
            return
        # Raises LeaseLost when the job is no longer ours: the executor unwinds, we write nothing.
        self.send()

    def on_checkpoint(self, step: int, path: Path) -> None:
        """The executor saved a checkpoint: a `checkpoint` event says where a retry resumes."""
        from orchestrator.services import record_checkpoint

        with session_scope(self.settings) as session:
            record_checkpoint(session, self.job_id, self.worker_id, int(step), str(path))

    def on_metrics(self, step: int, epoch: float, values: dict[str, float]) -> None:
        """Buffer curve points; the next heartbeat writes them (one transaction per beat)."""
        from orchestrator.services.metrics import Point

        with self.lock:
            self.points += [Point(name, int(step), float(epoch), float(v)) for name, v in values.items()
                            if v is not None]

    def hooks(self) -> JobHooks:
        return JobHooks(on_progress=self.on_progress, should_stop=self.should_stop,
                        on_checkpoint=self.on_checkpoint, on_metrics=self.on_metrics)

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
            if self.points:
                from orchestrator.services.metrics import record_points

                record_points(session, self.job_id, self.worker_id, self.points)
                self.points = []

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


def _failed_usage(wall_s: float) -> UsageRecord:
    """An attempt that raised still cost its wall time on a device."""
    return UsageRecord(device=_device_name(), device_seconds=wall_s, wall_seconds=wall_s)


def _device_name() -> str:
    try:
        from lora_engine.device import pick_device

        return pick_device().name
    except Exception:  # the device itself may be what failed
        return "unknown"


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
    from orchestrator.services import claim_next, unclaimable_reason
    from worker.kinds import executor_for

    settings = settings or get_settings()
    worker_id = worker_id or default_worker_id()
    with session_scope(settings) as session:
        job = claim_next(session, worker_id, settings.lease_seconds)
        if job is None:
            reason = unclaimable_reason(session, job_id)
            log.info("nothing to claim for message %s: %s", job_id, reason)
            return RunResult("skipped", None, reason)
        kind = job.kind
        job_id, tenant_id, spec_json, attempt = job.id, job.tenant_id, dict(job.spec), job.attempts
    bind_job(job_id, tenant_id)  # every log line from here on names the job and its tenant
    log.info("claimed %s job %s (attempt %d) as %s", kind, job_id, attempt, worker_id)

    beat = _Heartbeat(settings, job_id, worker_id)
    staging = artifacts.staging_path(settings, tenant_id, job_id, attempt)
    ctx = JobContext(
        job_id=job_id, tenant_id=tenant_id, kind=kind, attempt=attempt, spec=spec_json, settings=settings,
        hooks=beat.hooks(), staging_dir=staging,
        checkpoint_dir=artifacts.checkpoint_path(settings, tenant_id, job_id),
        cache=model_cache() if cache is _DEFAULT_CACHE else cache,
    )
    started = time.monotonic()
    keepalive = KeepAlive(beat, interval_s=max(settings.lease_seconds / KEEPALIVE_PER_LEASE, 0.1))
    keepalive.start()
    try:
        try:
            ctx = dataclasses.replace(ctx, spec=_resolve_inputs(settings, tenant_id, spec_json))
            result = executor_for(kind)(ctx)
        finally:
            keepalive.stop()
        return _succeed(ctx, worker_id, result)
    except Exception as exc:  # classified below; a bug surfaces as a requeue with its traceback logged
        keepalive.stop()
        return _settle(
            settings,
            job_id,
            worker_id,
            attempt,
            exc,
            _failed_usage(time.monotonic() - started),
            cancel_requested=beat.cancel,
        )
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        with contextlib.suppress(OSError):  # only if no other attempt is staging there
            staging.parent.rmdir()


def _resolve_inputs(settings: Settings, tenant_id: str, spec: dict[str, Any]) -> dict[str, Any]:
    """The spec an executor runs: a data set named by id replaced by its stored file, whose
    sha256 is checked against the registry (the executor itself never reads the registry)."""
    from lora_engine.spec import UUID_RE
    from orchestrator.services.datasets import dataset_for_training

    dataset = spec.get("dataset")
    if not isinstance(dataset, str) or not UUID_RE.match(dataset):
        return spec
    with session_scope(settings) as session:
        return {**spec, "dataset": str(dataset_for_training(session, dataset, tenant_id, settings))}


def _publish(ctx: JobContext, result: JobResult) -> Any:
    """Rename the staged adapter to its final folder (atomic) and hash it there, once."""
    from lora_engine.digest import adapter_files_digest
    from orchestrator.services import AdapterRecord

    staged = result.adapter
    adapter_id = str(uuid.uuid4())
    final = artifacts.adapter_path(ctx.settings, ctx.tenant_id, adapter_id)
    final.parent.mkdir(parents=True, exist_ok=True)
    os.replace(staged.folder, final)
    sha256, size = adapter_files_digest(final)
    return AdapterRecord(id=adapter_id, path=str(final), sha256=sha256, bytes=size,
                         trainable_params=staged.trainable_params, total_params=staged.total_params)


def _succeed(ctx: JobContext, worker_id: str, result: JobResult) -> RunResult:
    from orchestrator.services import finish_job_success

    record = _publish(ctx, result) if result.adapter is not None else None
    try:
        with session_scope(ctx.settings) as session:
            finish_job_success(session, ctx.job_id, worker_id, record, result.metrics, usage=result.usage,
                               reevaluated=result.reevaluated)
    except BaseException:
        # Not registered (the job was taken back while we worked, or the registry refused):
        # the registry does not know this folder, so it must not stay behind as an orphan.
        if record is not None:
            shutil.rmtree(record.path, ignore_errors=True)
        raise
    shutil.rmtree(ctx.checkpoint_dir, ignore_errors=True)
    if record is None:
        log.info("job %s succeeded", ctx.job_id)
        return RunResult("succeeded", ctx.job_id)
    log.info("job %s succeeded: adapter %s (%d bytes)", ctx.job_id, record.id, record.bytes)
    return RunResult("succeeded", ctx.job_id, adapter_id=record.id)


def _settle(
    settings: Settings,
    job_id: str,
    worker_id: str,
    attempt: int,
    exc: Exception,
    usage: UsageRecord,
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
