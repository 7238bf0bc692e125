"""Prometheus metrics of a worker (prometheus-client), on LORAFLEET_METRICS_PORT when it is set.

Per worker process: the running job's steps/s and examples/s, the device memory in use and its
peak, jobs run by outcome. Fleet-wide, read from the registry at scrape time (one GROUP BY,
cached a few seconds): jobs by state and tenant, and the queue depth — every worker exports the
same values, so aggregate them with max(), not sum(). `lorafleet worker --gpus N` gives process i
the port LORAFLEET_METRICS_PORT + i.

The endpoint has no login, so it listens on LORAFLEET_METRICS_HOST, the loopback unless the
operator opens it. Tenants appear by id (`tenant_id`), never by slug or name: a customer's name is
not for whoever reads the scrapes (Prometheus, dashboards, alerts often reach a wider audience
than the registry), while an id still gives per-tenant series (a tenant whose queue backs up) and
maps back to the tenant with `lorafleet tenant list --json`.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

from celery.signals import worker_ready

log = logging.getLogger(__name__)
REGISTRY_CACHE_S = 5.0

_started = False
_lock = threading.Lock()
_metrics: dict[str, Any] = {}


def _build() -> dict[str, Any]:
    from prometheus_client import Counter, Gauge

    return {
        "steps": Gauge("lorafleet_worker_steps_per_second", "Optimizer steps/s of the running job"),
        "examples": Gauge("lorafleet_worker_examples_per_second", "Training examples/s of the running job"),
        "busy": Gauge("lorafleet_worker_busy", "1 while this worker runs a job"),
        "outcomes": Counter("lorafleet_worker_jobs", "Jobs this worker ran, by outcome", ["outcome"]),
    }


def observe_progress(step: int, examples_per_s: float, *, now: float | None = None) -> None:
    """The train executor's progress hook: steps/s from consecutive steps, examples/s as measured."""
    if not _started:
        return
    now = time.monotonic() if now is None else now
    last = _metrics.get("_last")
    if last is not None and step > last[1] and now > last[0]:
        _metrics["steps"].set((step - last[1]) / (now - last[0]))
    _metrics["_last"] = (now, step)
    _metrics["examples"].set(float(examples_per_s))
    _metrics["busy"].set(1)


def observe_outcome(outcome: str) -> None:
    if not _started:
        return
    _metrics["outcomes"].labels(outcome=outcome).inc()
    _metrics["busy"].set(0)
    _metrics["steps"].set(0)
    _metrics["examples"].set(0)
    _metrics.pop("_last", None)


def _memory() -> dict[str, float]:
    import sys

    torch = sys.modules.get("torch")  # never import torch for a scrape: it is loaded by the first job
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        return {"allocated": float(torch.cuda.memory_allocated()),
                "peak": float(torch.cuda.max_memory_allocated())}
    with open("/proc/self/statm") as f:
        rss_pages = int(f.read().split()[1])
    return {"rss": float(rss_pages * os.sysconf("SC_PAGE_SIZE"))}


class RegistryCollector:
    """Fleet-wide gauges from the registry, computed when Prometheus scrapes (cached)."""

    def __init__(self, settings: Any):
        self.settings = settings
        self._cached: tuple[float, dict] | None = None

    def _counts(self) -> dict:
        if self._cached and time.monotonic() - self._cached[0] < REGISTRY_CACHE_S:
            return self._cached[1]
        from sqlalchemy import func, select

        from orchestrator.registry.db import session_scope
        from orchestrator.registry.models import Job

        with session_scope(self.settings) as session:
            rows = session.execute(select(Job.tenant_id, Job.state, func.count())
                                   .group_by(Job.tenant_id, Job.state))
            counts = {(tenant_id, state): int(n) for tenant_id, state, n in rows}
        self._cached = (time.monotonic(), counts)
        return counts

    @staticmethod
    def _families() -> tuple[Any, Any, Any]:
        from prometheus_client.core import GaugeMetricFamily

        return (GaugeMetricFamily("lorafleet_jobs", "Jobs in the registry by state and tenant id",
                                  labels=["state", "tenant_id"]),
                GaugeMetricFamily("lorafleet_queue_depth", "Queued jobs in the registry"),
                GaugeMetricFamily("lorafleet_worker_device_memory_bytes",
                                  "Device memory of this worker: CUDA allocated/peak, or process RSS",
                                  labels=["kind"]))

    def describe(self) -> Any:
        """The metric names, for registration: without it prometheus-client calls `collect`,
        which would query the registry while the worker starts."""
        return self._families()

    def collect(self) -> Any:
        jobs, depth, memory = self._families()
        try:
            counts = self._counts()
        except Exception as exc:  # a scrape must not fail because the registry is briefly away
            log.warning("metrics: registry unavailable: %s", exc)
            counts = {}
        for (tenant_id, state), n in sorted(counts.items()):
            jobs.add_metric([state, tenant_id], n)
        depth.add_metric([], sum(n for (_, state), n in counts.items() if state == "queued"))
        for kind, value in _memory().items():
            memory.add_metric([kind], value)
        yield from (jobs, depth, memory)


def start(settings: Any, port: int | None = None) -> int | None:
    """Serve /metrics on settings.metrics_host, port `port` (default: settings.metrics_port); None
    when no port is configured."""
    global _started
    port = port if port is not None else settings.metrics_port
    if not port:
        return None
    from prometheus_client import REGISTRY, start_http_server

    with _lock:
        if not _started:
            _metrics.update(_build())
            REGISTRY.register(RegistryCollector(settings))
            start_http_server(port, addr=settings.metrics_host)
            _started = True
    host = f"[{settings.metrics_host}]" if ":" in settings.metrics_host else settings.metrics_host  # IPv6
    log.info("metrics: Prometheus exporter on http://%s:%d/metrics", host, port)
    return port


def _on_ready(**_: Any) -> None:
    from orchestrator.config import get_settings

    start(get_settings())


worker_ready.connect(_on_ready, weak=False)
