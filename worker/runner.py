"""The lifecycle of one job on this worker, the same for every job kind:

    claim (atomic, fair share) → JobHooks (progress → heartbeat + cancel flag; checkpoint events)
      → the kind's executor (`worker.kinds`) → its staged adapter, if any, renamed to its final
      folder and hashed (once) → finish_job_success (adapter + metrics + usage, one transaction)

Failures are classified by `orchestrator.retries` (the only place that decides retries). Paths come
from `orchestrator.artifacts`; a job's checkpoints are removed once it succeeded. A failed attempt
is first held against the worker's own environment (`worker.preflight.environment_faults`): if
that is broken, it is the worker's fault, not the job's; `worker.health` counts those in a row.

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
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator import artifacts
from orchestrator.config import Settings, get_settings
from orchestrator.registry.db import session_scope
from orchestrator.retries import Outcome, backoff, classify, describe, is_transient
from orchestrator.services.leases import UsageRecord
from worker import health
from worker.executor import JobContext, JobHooks, JobResult
from worker.logs import bind_job

log = logging.getLogger(__name__)

# Heartbeats are one registry transaction each: at most one per this many seconds (and on the
# last step), so fast tiny-model steps do not turn the registry into the bottleneck. A cancel is
# therefore noticed within this interval plus one training step. Between steps (loading,
# evaluating) the keep-alive beats every `settings.heartbeat_seconds`.
HEARTBEAT_MIN_INTERVAL_S = 0.5
# After a failed heartbeat (registry unreachable, connection cut) the next one waits
# backoff(n, base=HEARTBEAT_RETRY_BASE_S) capped at heartbeat_seconds; training goes on meanwhile.
HEARTBEAT_RETRY_BASE_S = 0.5
# Writing a job's outcome survives a registry blip: this many tries, backing off in between.
RECORD_TRIES = 5

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
    last_sent: float = 0.0  # monotonic time of the last heartbeat tried
    last_ok: float = field(default_factory=time.monotonic)  # ... and of the last that got through
    failures: int = 0  # heartbeats failed in a row
    retry_at: float = 0.0  # no heartbeat before this (backing off after a failure)
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
        from orchestrator.services.leases import record_checkpoint

        try:
            with session_scope(self.settings) as session:
                record_checkpoint(session, self.job_id, self.worker_id, int(step), str(path))
        except Exception as exc:  # the checkpoint is on disk either way; only its event is missing
            if not is_transient(exc):
                raise
            log.warning("job %s: checkpoint event for step %d not recorded: %s", self.job_id, step, exc)

    def on_resume(self, step: int, path: Path) -> None:
        """The executor resumed from a checkpoint: a `resumed` event says from which step."""
        from orchestrator.services.leases import record_resume

        self.step = int(step)
        with session_scope(self.settings) as session:
            record_resume(session, self.job_id, self.worker_id, int(step), str(path))

    def on_metrics(self, step: int, epoch: float, values: dict[str, float]) -> None:
        """Buffer curve points; the next heartbeat writes them (one transaction per beat)."""
        from orchestrator.services.metrics import Point

        with self.lock:
            self.points += [Point(name, int(step), float(epoch), float(v)) for name, v in values.items()
                            if v is not None]

    def on_phase(self, phase: str) -> None:
        """The executor began evaluating or saving: a `phase` event, so a follower shows it."""
        from orchestrator.services.leases import record_phase

        try:
            with session_scope(self.settings) as session:
                record_phase(session, self.job_id, self.worker_id, phase, self.step)
        except Exception as exc:  # only what a follower shows is missing; the work goes on
            if not is_transient(exc):
                raise
            log.warning("job %s: phase %s not recorded: %s", self.job_id, phase, exc)

    def hooks(self) -> JobHooks:
        return JobHooks(on_progress=self.on_progress, should_stop=self.should_stop,
                        on_checkpoint=self.on_checkpoint, on_resume=self.on_resume,
                        on_metrics=self.on_metrics, on_phase=self.on_phase)

    def send(self) -> None:
        """One heartbeat with the latest progress: extends the lease, reads the cancel flag.

        A transient registry error is logged and retried later with back-off while the lease
        may still hold; once the last successful beat is older than the lease, the job is
        someone else's by now and the error propagates. LeaseLost always propagates.
        """
        from orchestrator.services.leases import heartbeat

        with self.lock:
            now = time.monotonic()
            if now < self.retry_at:
                return
            self.last_sent = now
            try:
                with session_scope(self.settings) as session:
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
            except Exception as exc:
                if not is_transient(exc) or now - self.last_ok > self.settings.lease_seconds:
                    raise
                self.failures += 1
                wait = min(backoff(self.failures, base=HEARTBEAT_RETRY_BASE_S),
                           self.settings.heartbeat_seconds)
                self.retry_at = now + wait
                log.warning("job %s: heartbeat %d failed (%s); next try in %.1fs", self.job_id,
                            self.failures, describe(exc).splitlines()[0], wait)
                return
            self.failures, self.retry_at, self.last_ok = 0, 0.0, time.monotonic()

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
        from orchestrator.errors import LeaseLost

        while not self._stop_event.wait(self.interval_s):
            if time.monotonic() - self.beat.last_ok < self.interval_s:
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
    from orchestrator.services.leases import claim_next, unclaimable_reason
    from worker.inputs import JobInputs, resolve_inputs
    from worker.kinds import executor_for

    settings = settings or get_settings()
    worker_id = worker_id or default_worker_id()
    with session_scope(settings) as session:
        job = claim_next(session, worker_id, settings.lease_seconds)
        if job is None:
            reason = unclaimable_reason(session, job_id)
            log.info("nothing to claim for message %s: %s", job_id, reason)
            return RunResult("skipped", None, reason)
        kind, inputs = job.kind, JobInputs.of(job)
        job_id, tenant_id, spec_json, attempt = job.id, job.tenant_id, dict(job.spec), job.attempts
    bind_job(job_id, tenant_id)  # every log line from here on names the job and its tenant
    log.info("claimed %s job %s (attempt %d) as %s", kind, job_id, attempt, worker_id)

    beat = _Heartbeat(settings, job_id, worker_id)
    staging = artifacts.staging_path(settings, tenant_id, job_id, attempt)
    for earlier in range(1, attempt):  # left by a killed worker; a lost one can no longer publish
        shutil.rmtree(artifacts.staging_path(settings, tenant_id, job_id, earlier), ignore_errors=True)
    ctx = JobContext(
        job_id=job_id, tenant_id=tenant_id, kind=kind, attempt=attempt, spec=spec_json, settings=settings,
        hooks=beat.hooks(), staging_dir=staging,
        checkpoint_dir=artifacts.checkpoint_path(settings, tenant_id, job_id),
        cache=model_cache() if cache is _DEFAULT_CACHE else cache,
    )
    started = time.monotonic()
    keepalive = KeepAlive(beat, interval_s=settings.heartbeat_seconds)
    keepalive.start()
    try:
        try:
            # Stored objects by id (sha256 checked), a base folder confined again: worker/inputs.py.
            ctx = dataclasses.replace(ctx, spec=resolve_inputs(settings, inputs, spec_json))
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
            spec=spec_json,
        )
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        with contextlib.suppress(OSError):  # only if no other attempt is staging there
            staging.parent.rmdir()


def _publish(ctx: JobContext, result: JobResult) -> Any:
    """Rename the staged adapter to its final folder (atomic) and hash it there, once."""
    from lora_engine.adapters.digest import adapter_files_digest
    from lora_engine.atomic import move_into_place, private_dir
    from orchestrator.services.leases import AdapterRecord

    staged = result.adapter
    adapter_id = str(uuid.uuid4())
    final = artifacts.adapter_path(ctx.settings, ctx.tenant_id, adapter_id)
    private_dir(final.parent)
    move_into_place(staged.folder, final)
    sha256, size = adapter_files_digest(final)
    return AdapterRecord(id=adapter_id, path=str(final), sha256=sha256, bytes=size,
                         trainable_params=staged.trainable_params, total_params=staged.total_params)


def _succeed(ctx: JobContext, worker_id: str, result: JobResult) -> RunResult:
    from orchestrator.services.leases import finish_job_success
    from orchestrator.services.metrics import record_points

    record = _publish(ctx, result) if result.adapter is not None else None
    try:
        def record_all(session) -> None:
            if result.points:  # curves measured during the run (the evaluations during training)
                record_points(session, ctx.job_id, worker_id, result.points)
            finish_job_success(session, ctx.job_id, worker_id, record, result.metrics, usage=result.usage,
                               reevaluated=result.reevaluated)

        _record(ctx.settings, record_all)
    except BaseException:
        # Not registered (the job was taken back while we worked, or the registry refused):
        # the registry does not know this folder, so it must not stay behind as an orphan.
        if record is not None and not _registered(ctx.settings, record.id):
            shutil.rmtree(record.path, ignore_errors=True)
        raise
    shutil.rmtree(ctx.checkpoint_dir, ignore_errors=True)
    health.record_ok()
    if record is None:
        log.info("job %s succeeded", ctx.job_id)
        return RunResult("succeeded", ctx.job_id)
    log.info("job %s succeeded: adapter %s (%d bytes)", ctx.job_id, record.id, record.bytes)
    return RunResult("succeeded", ctx.job_id, adapter_id=record.id)


def _record(settings: Settings, write: Any) -> Any:
    """Run one registry write (`write(session)`), retrying transient errors with back-off."""
    for attempt in range(1, RECORD_TRIES + 1):
        try:
            with session_scope(settings) as session:
                return write(session)
        except Exception as exc:
            if attempt == RECORD_TRIES or not is_transient(exc):
                raise
            wait = backoff(attempt, base=0.5, cap=settings.heartbeat_seconds)
            log.warning("registry write failed (%s); try %d in %.1fs", describe(exc).splitlines()[0],
                        attempt + 1, wait)
            time.sleep(wait)
    raise AssertionError("unreachable")


def _registered(settings: Settings, adapter_id: str) -> bool:
    """Whether the registry holds this adapter (a commit whose answer was lost may have landed).
    When the registry cannot tell, the folder is kept: an orphan beats a registered adapter
    without its files."""
    from orchestrator.registry import repositories as repo

    try:
        with session_scope(settings) as session:
            return repo.adapter(session, adapter_id) is not None
    except Exception:
        log.warning("cannot tell whether adapter %s was registered; keeping its folder", adapter_id)
        return True


def _settle(
    settings: Settings,
    job_id: str,
    worker_id: str,
    attempt: int,
    exc: Exception,
    usage: UsageRecord,
    *,
    cancel_requested: bool = True,
    spec: Mapping[str, Any] | None = None,
) -> RunResult:
    """Record a job that did not succeed, as the retry policy says.

    `cancel_requested`: the job's cancel flag as last seen; a stop without it during a
    shutdown is a release (back to the queue at once, no attempt used). `spec`: the job's stored
    spec, to tell which parts of the worker's own environment the job needed.
    """
    from orchestrator.announce import announce_jobs
    from orchestrator.errors import LeaseLost
    from orchestrator.services.leases import fail_job, mark_cancelled, requeue_job

    outcome = classify(exc, cancel_requested=cancel_requested, shutting_down=_shutting_down)
    if outcome in (Outcome.FAILED, Outcome.REQUEUED):
        exc, outcome = _held_against_worker(settings, spec, exc, outcome)
    reason = "worker shutting down" if outcome is Outcome.RELEASED else describe(exc)
    try:
        if outcome is Outcome.WORKER_FAULT:
            return _hand_back(settings, job_id, worker_id, exc, reason)
        if outcome is Outcome.LOST:
            log.warning("job %s: %s; stopping without writing", job_id, reason)
            return RunResult("lost", job_id, reason)
        if outcome is Outcome.CANCELLED:
            step = getattr(exc, "step", None)
            _record(settings, lambda s: mark_cancelled(s, job_id, worker_id, step=step, usage=usage))
            return RunResult("cancelled", job_id, reason)
        if outcome is Outcome.FAILED:
            log.info("job %s failed (not retried): %s", job_id, reason)
            _record(settings, lambda s: fail_job(s, job_id, worker_id, reason, usage=usage))
            return RunResult("failed", job_id, reason)
        if outcome is Outcome.REQUEUED:
            log.error("job %s: transient failure on attempt %d", job_id, attempt, exc_info=exc)
        release = outcome is Outcome.RELEASED
        state = _record(settings, lambda s: requeue_job(s, job_id, worker_id, reason, usage=usage,
                                                        release=release))
        if state != "queued":
            return RunResult(state, job_id, reason)
        # A released job is resumable at once, by another worker; a failed attempt backs off.
        delay = 0.0 if release else backoff(attempt)
        announce_jobs([job_id], settings=settings, countdown=delay)
        return RunResult("requeued", job_id, reason, retry_in_s=delay)
    except LeaseLost as lost:
        log.warning("job %s: %s; not recording %s", job_id, lost, outcome.value)
        return RunResult("lost", job_id, str(lost))


def _held_against_worker(
    settings: Settings, spec: Mapping[str, Any] | None, exc: Exception, outcome: Outcome
) -> tuple[Exception, Outcome]:
    """A failed attempt, checked against this worker's own environment: broken, it is a
    WorkerEnvironmentError (caused by `exc`) and classified as such; sound, `exc` stands."""
    from orchestrator.errors import WorkerEnvironmentError
    from worker.preflight import environment_faults

    faults = environment_faults(settings, spec)
    if not faults:
        health.record_ok()
        return exc, outcome
    fault = WorkerEnvironmentError(faults)
    fault.__cause__ = exc
    return fault, classify(fault)


def _hand_back(settings: Settings, job_id: str, worker_id: str, exc: Exception, reason: str) -> RunResult:
    """A worker fault: the job back to the queue at once, its attempt given back, for another
    worker; this worker counts the fault (and may take itself out of service)."""
    from orchestrator.announce import announce_jobs
    from orchestrator.services.leases import return_job

    log.error("job %s: handed back, this worker's own environment is broken: %s (the job's error: %s)",
              job_id, reason, describe(exc.__cause__ or exc))
    state = _record(settings, lambda s: return_job(s, job_id, worker_id, reason))
    health.record_fault(reason, settings.unhealthy_after)
    if state != "queued":
        return RunResult(state, job_id, reason)
    announce_jobs([job_id], settings=settings)
    return RunResult("requeued", job_id, reason, retry_in_s=0.0)
