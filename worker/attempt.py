"""One attempt at a job, the same alone (`worker.runner`) or in a pack (`worker.packed`):

    claim (atomic, fair share) → Attempt: its Heartbeat (progress → lease + cancel flag, curve
      points, phase / checkpoint / resume events) and KeepAlive (beats while no step reports),
      its staging folder, its inputs (read from the registry's columns, `worker.inputs`) → the work →
      succeed(result): the staged adapter renamed to its final folder and hashed (once), then
        adapter + metrics + usage in one transaction (finish_job_success)
      settle(error): `orchestrator.retries.decide`, once, and the outcome recorded

A failed attempt is first held against the worker's own environment
(`worker.preflight.environment_faults`): if that is broken, it is the worker's fault, not the
job's; `worker.health` counts those in a row. Paths come from `orchestrator.artifacts`; a job's
checkpoints are removed once it succeeded. A requeued job's message is sent after the requeue
committed (`record`, `orchestrator.services.enqueue`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import shutil
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator import artifacts
from orchestrator.config import Settings
from orchestrator.registry.db import session_scope
from orchestrator.retries import Abort, Outcome, backoff, decide, describe, is_transient
from orchestrator.services.leases import UsageRecord
from worker import health, tracking
from worker.executor import JobContext, JobHooks, JobResult
from worker.inputs import JobInputs, resolve_inputs

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
# The reason a released job's events give, per abort reason.
RELEASE_REASONS = {Abort.SHUTDOWN: "worker shutting down", Abort.PAUSE: "paused"}

# Set by the worker's shutdown signal: the running job checkpoints, stops and goes back to the
# queue instead of holding the shutdown for the rest of its training.
_shutting_down = False


def shutting_down() -> bool:
    return _shutting_down


def request_shutdown() -> None:
    """Ask the running job(s) to checkpoint and hand themselves back to the queue."""
    global _shutting_down
    _shutting_down = True


@dataclass
class RunResult:
    """What happened to a message: `job_id` is None when there was nothing to claim."""

    outcome: str  # "succeeded" | "failed" | "cancelled" | "requeued" | "paused" | "lost" | "skipped"
    job_id: str | None
    detail: str = ""
    adapter_id: str | None = None
    retry_in_s: float | None = None


@dataclass
class Heartbeat:
    """The progress hook's state: heartbeats throttled, the last cancel flag remembered."""

    settings: Settings
    job_id: str
    worker_id: str
    last_sent: float = 0.0  # monotonic time of the last heartbeat tried
    last_ok: float = field(default_factory=time.monotonic)  # ... and of the last that got through
    failures: int = 0  # heartbeats failed in a row
    retry_at: float = 0.0  # no heartbeat before this (backing off after a failure)
    stop: Abort | None = None  # why the registry asks the job to stop (cancel, pause), as last seen
    step: int = 0
    total: int | None = None
    loss: float | None = None
    grad_norm: float | None = None
    points: list = field(default_factory=list)  # metric-history points not yet written
    lock: threading.Lock = field(default_factory=threading.Lock)

    def on_progress(self, step: int, total: int | None, loss: float | None,
                    grad_norm: float | None = None) -> None:
        self.step, self.total = int(step), total
        self.loss = None if loss is None else float(loss)
        self.grad_norm = None if grad_norm is None else float(grad_norm)
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
                    self.stop = heartbeat(session, self.job_id, self.worker_id, self.step, self.total,
                                            self.loss, self.settings.lease_seconds, grad_norm=self.grad_norm)
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

    def abort(self) -> Abort | None:
        """Why the job is asked to stop, if it is: its cancel or pause flag (as last seen) wins
        over this worker's shutdown (a paused job must not go back to the queue)."""
        if self.stop is not None:
            return self.stop
        return Abort.SHUTDOWN if _shutting_down else None

    def should_stop(self) -> bool:
        return self.abort() is not None


class KeepAlive(threading.Thread):
    """Heartbeats while no training step reports: loading the base, tokenising, evaluating.

    The progress hook only beats between optimiser steps, and a long evaluation (E2E decoding
    on a CPU takes minutes) would otherwise outlive the lease and have the reconciler hand the
    job to another worker. A worker process that dies takes this thread with it, so a crashed
    job's lease still expires.
    """

    def __init__(self, beat: Heartbeat, interval_s: float):
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
        if self.is_alive():
            self.join(timeout=30)


def record(settings: Settings, write: Any) -> Any:
    """Run one registry write (`write(session)`), retrying transient errors with back-off; the
    messages of the jobs it queued are sent once it committed."""
    from orchestrator.announce import send_ready
    from orchestrator.services.enqueue import take_ready

    for attempt in range(1, RECORD_TRIES + 1):
        try:
            with session_scope(settings) as session:
                try:
                    result = write(session)
                finally:
                    ready = take_ready(session)
            break
        except Exception as exc:
            if attempt == RECORD_TRIES or not is_transient(exc):
                raise
            wait = backoff(attempt, base=0.5, cap=settings.heartbeat_seconds)
            log.warning("registry write failed (%s); try %d in %.1fs", describe(exc).splitlines()[0],
                        attempt + 1, wait)
            time.sleep(wait)
    send_ready(ready, settings)  # after the loop: a broker error must not write twice
    return result


def device_name() -> str:
    """The device this worker computes on ("unknown" when even that fails)."""
    try:
        from lora_engine.device import pick_device

        return pick_device().name
    except Exception:  # the device itself may be what failed
        return "unknown"


def failed_usage(wall_s: float, devices: int = 1) -> UsageRecord:
    """An attempt that raised still cost its wall time on each of its devices."""
    return UsageRecord(device=device_name(), device_seconds=devices * wall_s, wall_seconds=wall_s)


@dataclass
class Attempt:
    """A claimed job on this worker, from its claim to its recorded outcome.

    Build it inside the claim's session (`Attempt.of`): it snapshots what it needs from the
    job's row. `start()` begins the keep-alive; the work runs with `context()` (the job's spec,
    its inputs resolved) or, in a pack, `resolved_spec()` and `ctx.hooks`; then exactly one of
    `succeed`, `settle` or `release`, and `close()`.
    """

    ctx: JobContext  # the job as stored (its spec's inputs not yet resolved)
    worker_id: str
    inputs: JobInputs  # its references, as the registry's columns hold them at the claim
    beat: Heartbeat
    keepalive: KeepAlive
    started: float = field(default_factory=time.monotonic)

    @classmethod
    def of(cls, settings: Settings, worker_id: str, job: Any, cache: Any) -> Attempt:
        """The attempt of a job row this worker just claimed (its staging left by killed earlier
        attempts removed: a lost attempt can no longer publish)."""
        job_id, tenant_id, attempt = job.id, job.tenant_id, job.attempts
        for earlier in range(1, attempt):
            shutil.rmtree(artifacts.staging_path(settings, tenant_id, job_id, earlier), ignore_errors=True)
            shutil.rmtree(artifacts.inputs_path(settings, tenant_id, job_id, earlier), ignore_errors=True)
        beat = Heartbeat(settings, job_id, worker_id)
        ctx = JobContext(job_id=job_id, tenant_id=tenant_id, kind=job.kind, attempt=attempt,
                         spec=dict(job.spec), settings=settings, hooks=beat.hooks(),
                         staging_dir=artifacts.staging_path(settings, tenant_id, job_id, attempt),
                         checkpoint_dir=artifacts.checkpoint_path(settings, tenant_id, job_id), cache=cache)
        return cls(ctx, worker_id, JobInputs.of(job), beat,
                   KeepAlive(beat, interval_s=settings.heartbeat_seconds))

    @property
    def job_id(self) -> str:
        return self.ctx.job_id

    @property
    def settings(self) -> Settings:
        return self.ctx.settings

    def start(self) -> Attempt:
        self.started = time.monotonic()
        self.keepalive.start()
        tracking.watch(self.settings, self.job_id)
        return self

    def stop(self) -> None:
        """Stop the keep-alive (the work is over; what follows is recording)."""
        self.keepalive.stop()

    def resolved_spec(self) -> dict[str, Any]:
        """The spec the work runs: its inputs read from the registry's columns (`worker.inputs`:
        stored objects by id, sha256 checked; a base folder confined again). The work itself
        never reads the registry."""
        scratch = artifacts.inputs_path(self.settings, self.ctx.tenant_id, self.job_id, self.ctx.attempt)
        return resolve_inputs(self.settings, self.inputs, self.ctx.spec, scratch)

    def context(self) -> JobContext:
        """What an executor gets: the job's context with its inputs resolved."""
        return dataclasses.replace(self.ctx, spec=self.resolved_spec())

    def succeed(self, result: JobResult) -> RunResult:
        """Publish the staged adapter (if any) and record the job's success."""
        self.stop()
        return succeed(self.ctx, self.worker_id, result)

    def settle(self, exc: BaseException, usage: UsageRecord | None = None) -> RunResult:
        """Record an attempt that did not succeed, as `orchestrator.retries.decide` says.
        `usage`: what it cost (default: its wall time so far on this worker's device)."""
        from orchestrator.errors import LeaseLost
        from orchestrator.services.leases import fail_job, mark_cancelled, requeue_job

        self.stop()
        settings, job_id, worker_id = self.settings, self.job_id, self.worker_id
        usage = usage if usage is not None else failed_usage(time.monotonic() - self.started,
                                                             devices=int(self.ctx.spec.get("devices", 1)))
        abort = self.beat.abort()
        decision = decide(exc, self.ctx.attempt, abort=abort, worker_faults=self._worker_faults)
        outcome, exc = decision.outcome, decision.error
        reason = RELEASE_REASONS[abort] if outcome is Outcome.RELEASED else describe(exc)
        try:
            if outcome is Outcome.WORKER_FAULT:
                return self._hand_back(exc, reason)
            if outcome is Outcome.LOST:
                log.warning("job %s: %s; stopping without writing", job_id, reason)
                return RunResult("lost", job_id, reason)
            if outcome is Outcome.CANCELLED:
                step = getattr(exc, "step", None)
                record(settings, lambda s: mark_cancelled(s, job_id, worker_id, step=step, usage=usage))
                return RunResult("cancelled", job_id, reason)
            if outcome is Outcome.FAILED:
                log.info("job %s failed (not retried): %s", job_id, reason)
                record(settings, lambda s: fail_job(s, job_id, worker_id, reason, usage=usage))
                return RunResult("failed", job_id, reason)
            if outcome is Outcome.REQUEUED:
                log.error("job %s: transient failure on attempt %d", job_id, self.ctx.attempt, exc_info=exc)
            release, retry_in = not decision.costs_attempt, decision.retry_in
            state = record(settings, lambda s: requeue_job(s, job_id, worker_id, reason, usage=usage,
                                                           release=release, retry_in=retry_in))
            if state != "queued":
                return RunResult(state, job_id, reason)
            return RunResult("requeued", job_id, reason, retry_in_s=retry_in)
        except LeaseLost as lost:
            log.warning("job %s: %s; not recording %s", job_id, lost, outcome.value)
            return RunResult("lost", job_id, str(lost))

    def release(self, reason: str) -> RunResult:
        """Back to the queue at once, no attempt used, for another try elsewhere (a pack that
        cannot take the job: alone it may train)."""
        from orchestrator.errors import LeaseLost
        from orchestrator.services.leases import requeue_job

        self.stop()
        try:
            record(self.settings, lambda s: requeue_job(s, self.job_id, self.worker_id, reason, release=True))
        except LeaseLost as lost:
            return RunResult("lost", self.job_id, str(lost))
        return RunResult("requeued", self.job_id, reason)

    def close(self) -> None:
        """The keep-alive stopped and this attempt's staging folder removed (its outcome is
        recorded by now: the MLflow sink may end the job's run)."""
        self.stop()
        tracking.ended(self.settings, self.job_id)
        staging = self.ctx.staging_dir
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(staging.with_name(staging.name + ".inputs"), ignore_errors=True)
        with contextlib.suppress(OSError):  # only if no other attempt is staging there
            staging.parent.rmdir()

    def _worker_faults(self) -> list[str]:
        """What of this worker's own environment is broken, of what the job needed (none: the
        failure is the job's, and the worker's run of faults ends)."""
        from worker.preflight import environment_faults

        faults = environment_faults(self.settings, self.ctx.spec)
        if not faults:
            health.record_ok()
        return faults

    def _hand_back(self, exc: BaseException, reason: str) -> RunResult:
        """A worker fault: the job back to the queue at once, its attempt given back, for another
        worker; this worker counts the fault (and may take itself out of service)."""
        from orchestrator.services.leases import return_job

        settings, job_id = self.settings, self.job_id
        log.error("job %s: handed back, this worker's own environment is broken: %s (the job's error: %s)",
                  job_id, reason, describe(exc.__cause__ or exc))
        state = record(settings, lambda s: return_job(s, job_id, self.worker_id, reason))
        health.record_fault(reason, settings.unhealthy_after)
        if state != "queued":
            return RunResult(state, job_id, reason)
        return RunResult("requeued", job_id, reason, retry_in_s=0.0)


def succeed(ctx: JobContext, worker_id: str, result: JobResult) -> RunResult:
    """Publish a job's staged adapter (if any) and record its success: adapter, metrics, usage
    and curve points in one transaction. A folder the registry did not take is removed."""
    from orchestrator.services.leases import finish_job_success
    from orchestrator.services.metrics import record_points

    adapter = _publish(ctx, result) if result.adapter is not None else None
    try:
        def record_all(session) -> None:
            if result.points:  # curves measured during the run (the evaluations during training)
                record_points(session, ctx.job_id, worker_id, result.points)
            finish_job_success(session, ctx.job_id, worker_id, adapter, result.metrics, usage=result.usage,
                               reevaluated=result.reevaluated)

        record(ctx.settings, record_all)
    except BaseException:
        # Not registered (the job was taken back while we worked, or the registry refused):
        # the registry does not know this folder, so it must not stay behind as an orphan.
        if adapter is not None and not _registered(ctx.settings, adapter.id):
            shutil.rmtree(adapter.path, ignore_errors=True)
        raise
    shutil.rmtree(ctx.checkpoint_dir, ignore_errors=True)
    health.record_ok()
    if adapter is None:
        log.info("job %s succeeded", ctx.job_id)
        return RunResult("succeeded", ctx.job_id)
    log.info("job %s succeeded: adapter %s (%d bytes)", ctx.job_id, adapter.id, adapter.bytes)
    return RunResult("succeeded", ctx.job_id, adapter_id=adapter.id)


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
