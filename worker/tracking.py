"""The MLflow sink of a worker process: each job one run on the operator's tracking server
(LORAFLEET_MLFLOW_TRACKING_URI), written by this module's own thread, never by the training one.

    attempt starts  → watch(job)    the thread creates (or, for a retried job, finds) the run in
                                    the experiment named after the tenant: params = the job's
                                    stored (resolved) spec, tags lorafleet.tenant / lorafleet.job_id
    every flush_s   → new points    the job's metric history, read from the registry by id, sent
                                    with their steps (log-batch)
    attempt ends    → ended(job)    once the job is terminal: its final metrics, the adapter
                                    folder as the artifact `adapter/`, the run's end status
                                    (FINISHED / FAILED / KILLED); a requeued job's run stays open
                                    for its next attempt (on any worker: found by its job id tag;
                                    the steps MLflow already holds are not sent again)

The registry is the buffer: the thread holds a cursor per job, not its points, so MLflow being
down costs no memory but `mlflow_max_jobs` small records; past that the oldest job is dropped.
Each job backs off on its own (mlflow_retry_first_s, doubling to mlflow_retry_cap_s) and is
given up mlflow_give_up_s after its first failure, at once on a refusal (4xx). Dropping or
giving up a job, or a server that cannot take the adapter, leaves a `tracking` warning event on
it; the job itself never waits for MLflow and never fails because of it.

What the tenant wrote (its slug, the job's suffix and metadata) is sent as values only: names of
params, tags and metrics are lorafleet's own, and the server is the operator's.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from orchestrator import artifacts
from orchestrator.config import Settings
from orchestrator.registry.db import session_scope
from orchestrator.retries import backoff
from worker.mlflow_rest import MetricValue, MlflowClient, MlflowError, Run

log = logging.getLogger(__name__)

TAG_TENANT, TAG_JOB = "lorafleet.tenant", "lorafleet.job_id"
END_STATUS = {"succeeded": "FINISHED", "failed": "FAILED", "cancelled": "KILLED"}
POINTS_PER_READ = 1000
PARAM_VALUE_MAX = 6000  # MLflow's limit on a param's value
TAG_VALUE_MAX = 8000
# What MLflow accepts in a param, tag or metric name; anything else becomes '_'.
NAME_UNSAFE = re.compile(r"[^A-Za-z0-9_\-. :/]")


@dataclass
class _Job:
    """The sink's record of one job: where its run is, how far its points went, its retries."""

    job_id: str
    run: Run | None = None
    cursor: int = 0  # id of the last metric-history point sent
    last_step: int = 0
    attempt_over: bool = False  # this worker's attempt ended (the job may be terminal now)
    failures: int = 0
    first_failure: float | None = None
    retry_at: float = 0.0
    last_error: str = ""


class Sink(threading.Thread):
    """One per worker process (`sink_for`); `watch` and `ended` only touch a dict under a lock."""

    def __init__(self, settings: Settings):
        super().__init__(name="mlflow-sink", daemon=True)
        self.settings = settings
        self.client = MlflowClient(settings.mlflow_tracking_uri, settings.mlflow_timeout_s)
        self.jobs: OrderedDict[str, _Job] = OrderedDict()
        self.lock = threading.Lock()
        self.wake = threading.Event()
        self.stopping = False
        self.warnings: list[tuple[_Job, str, dict[str, Any]]] = []  # from watch(): the thread records them

    # -- the training side: cheap, never blocks on MLflow ------------------------------------
    def watch(self, job_id: str) -> None:
        dropped = []
        with self.lock:
            entry = self.jobs.get(job_id)
            if entry is None:
                self.jobs[job_id] = _Job(job_id)
            else:
                entry.attempt_over = False
            while len(self.jobs) > self.settings.mlflow_max_jobs:
                dropped.append(self.jobs.popitem(last=False)[1])
        message = (f"MLflow fell behind: more than {self.settings.mlflow_max_jobs} jobs waited for it on "
                   f"this worker; this job's run was dropped incomplete")
        if dropped:  # recorded by the sink's thread: the caller is a training one
            with self.lock:
                self.warnings += [(old, message, {"reason": "fell behind"}) for old in dropped]
            self.wake.set()

    def ended(self, job_id: str) -> None:
        with self.lock:
            entry = self.jobs.get(job_id)
            if entry is not None:
                entry.attempt_over = True
        self.wake.set()

    # -- the sink's thread ----------------------------------------------------------------------
    def run(self) -> None:
        while True:
            self.wake.wait(self._next_wait())
            self.wake.clear()
            stopping = self.stopping
            self.pass_once()
            if stopping:  # a last pass after close(): the jobs that just ended
                return

    def _next_wait(self) -> float:
        now = time.monotonic()
        with self.lock:
            due = [max(0.0, j.retry_at - now) for j in self.jobs.values() if j.failures]
        return min([self.settings.mlflow_flush_s, *due])

    def pass_once(self) -> None:
        """One look at every job that is due (in the order they came)."""
        now = time.monotonic()
        with self.lock:
            due = [j for j in self.jobs.values() if j.retry_at <= now]
        for entry in due:
            self._step(entry)
        with self.lock:
            warnings, self.warnings = self.warnings, []
        for entry, message, data in warnings:
            self._warn(entry, message, data)

    def _step(self, entry: _Job) -> None:
        try:
            done = self._sync(entry)
        except MlflowError as exc:
            if not exc.transient:
                entry.last_error = str(exc)
                self._forget(entry)
                self._warn(entry, f"MLflow refused this job's run ({exc}); it was given up",
                           {"error": str(exc)})
                return
            self._failed(entry, str(exc))
            return
        except Exception as exc:  # the registry, most likely: the same back-off, no event (it may be down)
            log.warning("job %s: MLflow sink: %s", entry.job_id, exc)
            self._failed(entry, f"{type(exc).__name__}: {exc}", event=False)
            return
        entry.failures, entry.first_failure, entry.retry_at = 0, None, 0.0
        if done:
            self._forget(entry)

    def _failed(self, entry: _Job, error: str, event: bool = True) -> None:
        now = time.monotonic()
        entry.failures += 1
        entry.last_error = error
        entry.first_failure = entry.first_failure or now
        if now - entry.first_failure >= self.settings.mlflow_give_up_s:
            self._forget(entry)
            if event:
                self._warn(entry, f"MLflow unreachable for {now - entry.first_failure:.0f}s "
                                  f"({entry.failures} tries); this job's run was given up incomplete",
                           {"error": error})
            return
        wait = backoff(entry.failures, base=self.settings.mlflow_retry_first_s,
                       cap=self.settings.mlflow_retry_cap_s)
        entry.retry_at = now + wait
        log.info("job %s: MLflow try %d failed (%s); next in %.1fs", entry.job_id, entry.failures, error,
                 wait)

    def _sync(self, entry: _Job) -> bool:
        """Bring the job's run up to date; True once there is nothing more to send for it."""
        from orchestrator.services.tracking import points_after, tracked_job

        over = entry.attempt_over  # read before the snapshot: an attempt's outcome is recorded by then
        with session_scope(self.settings) as session:
            job = tracked_job(session, entry.job_id)
        if job is None or not job.tracking:
            return True
        if entry.run is None:
            entry.run = self._open_run(job)
            entry.last_step = max(entry.run.latest_steps.values(), default=0)
        sent = entry.run.latest_steps  # a found run: the steps an earlier attempt sent are not sent again
        while True:
            with session_scope(self.settings) as session:
                points = points_after(session, job.id, entry.cursor, POINTS_PER_READ)
            if not points:
                break
            now_ms = _ms(time.time())
            self.client.log_batch(entry.run.run_id, [
                MetricValue(_name(p.name), p.value, p.step, now_ms) for p in points
                if _finite(p.value) and p.step > sent.get(_name(p.name), -1)])
            entry.cursor = points[-1].id
            entry.last_step = max(entry.last_step, *(p.step for p in points))
        if not job.ended:
            return over  # requeued or paused: the next attempt picks the run up again
        self._close_run(entry, job)
        return True

    def _open_run(self, job: Any) -> Run:
        """The job's run: found by its job id tag (an earlier attempt's), else created; its params
        and tags written either way (MLflow takes the same values again)."""
        experiment = self.client.experiment_id(job.tenant_slug)
        run = self.client.find_run(experiment, TAG_JOB, job.id)
        tags = {TAG_TENANT: job.tenant_slug, TAG_JOB: job.id, "lorafleet.kind": job.kind}
        if job.suffix:
            tags["lorafleet.suffix"] = job.suffix
        if job.metadata:  # the tenant's keys are data: one JSON value, never tag names
            tags["lorafleet.metadata"] = json.dumps(job.metadata, sort_keys=True)[:TAG_VALUE_MAX]
        if run is None:
            started = job.started_at or job.created_at
            run = self.client.create_run(experiment, job.id, _ms(started.timestamp()), {TAG_JOB: job.id})
        self.client.log_batch(run.run_id, params=spec_params(job.spec), tags=tags)
        return run

    def _close_run(self, entry: _Job, job: Any) -> None:
        run = entry.run
        assert run is not None
        finals = [MetricValue(_name(k), v, entry.last_step, _ms(time.time()))
                  for k, v in sorted(job.final_metrics.items())
                  if _finite(v) and run.latest_steps.get(_name(k), -1) < entry.last_step]
        self.client.log_batch(run.run_id, finals)
        if job.adapter_id is not None:
            folder = artifacts.adapter_path(self.settings, job.tenant_id, job.adapter_id)
            try:
                self.client.upload_folder(run, folder, "adapter")
            except MlflowError as exc:
                if exc.transient:
                    raise
                self._warn(entry, f"the adapter was not logged to MLflow: {exc}", {"error": str(exc)})
        end = job.finished_at.timestamp() if job.finished_at else time.time()
        self.client.finish_run(run.run_id, END_STATUS.get(job.state, "FINISHED"), _ms(end))

    # -- bookkeeping ------------------------------------------------------------------------------
    def _forget(self, entry: _Job) -> None:
        with self.lock:
            if self.jobs.get(entry.job_id) is entry:
                del self.jobs[entry.job_id]

    def _warn(self, entry: _Job, message: str, data: dict[str, Any] | None = None) -> None:
        """A `tracking` event on the job (the registry down too: only the log says it)."""
        from orchestrator.services.tracking import record_tracking_warning

        data = {**(data or {}), **({"run_id": entry.run.run_id} if entry.run else {})}
        log.warning("job %s: %s", entry.job_id, message)
        try:
            with session_scope(self.settings) as session:
                record_tracking_warning(session, entry.job_id, message, data)
        except Exception as exc:
            log.warning("job %s: tracking event not recorded: %s", entry.job_id, exc)

    def close(self, timeout_s: float) -> None:
        """One last pass (the jobs that just ended), then stop; waits at most `timeout_s`."""
        self.stopping = True
        self.wake.set()
        if self.is_alive():
            self.join(timeout=timeout_s)
        self.client.close()


def spec_params(spec: dict[str, Any]) -> dict[str, str]:
    """The spec as MLflow params: nested objects flattened with '.', values as JSON text (a
    string as itself), cut to MLflow's length limit."""
    params: dict[str, str] = {}

    def add(prefix: str, value: Any) -> None:
        if isinstance(value, dict) and value:
            for key, item in value.items():
                add(f"{prefix}.{key}" if prefix else str(key), item)
            return
        text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
        params[_name(prefix)[:250]] = text[:PARAM_VALUE_MAX]

    add("", spec)
    return params


def _name(name: str) -> str:
    return NAME_UNSAFE.sub("_", name) or "_"


def _finite(value: float) -> bool:
    return value == value and value not in (float("inf"), float("-inf"))


def _ms(seconds: float) -> int:
    return int(seconds * 1000)


_sink: Sink | None = None
_sink_pid: int | None = None
_sink_lock = threading.Lock()


def sink_for(settings: Settings) -> Sink | None:
    """This process's sink (started on first use), or None when no tracking server is set."""
    global _sink, _sink_pid
    if not settings.mlflow_tracking_uri:
        return None
    with _sink_lock:
        if _sink is None or _sink_pid != os.getpid():  # a forked child starts its own thread
            _sink, _sink_pid = Sink(settings), os.getpid()
            _sink.start()
        return _sink


def watch(settings: Settings, job_id: str) -> None:
    """An attempt of `job_id` started on this worker (no-op without a tracking server)."""
    sink = sink_for(settings)
    if sink is not None:
        sink.watch(job_id)


def ended(settings: Settings, job_id: str) -> None:
    """An attempt of `job_id` ended on this worker, its outcome recorded."""
    sink = sink_for(settings)
    if sink is not None:
        sink.ended(job_id)


def close(timeout_s: float) -> None:
    """The worker is stopping: the sink's thread ends after its current pass."""
    global _sink
    with _sink_lock:
        sink, _sink = _sink, None
    if sink is not None and _sink_pid == os.getpid():
        sink.close(timeout_s)
