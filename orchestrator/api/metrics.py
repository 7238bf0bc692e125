"""Prometheus metrics of the API: requests by method, route template and status, and their
latency, served on LORAFLEET_API_METRICS_PORT (LORAFLEET_METRICS_HOST, the loopback unless the
operator opens it; the endpoint has no login).

`lorafleet api serve --workers N` runs N processes behind one port: prometheus-client's
multiprocess mode adds their counts up. `serve_metrics` (in the serving parent, before uvicorn
starts its workers) points PROMETHEUS_MULTIPROC_DIR at a fresh folder, which every worker inherits,
and serves the sum; each worker's `RequestMetrics` middleware writes its own counts there. Routes
appear by template (`/v1/fine_tuning/jobs/{job_id}`), never by the ids a request carries: one
series per route, not per object, and no tenant's ids in a scraper's hands.
"""

from __future__ import annotations

import os
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
UNMATCHED = "unmatched"
_metrics: dict[str, Any] = {}


def _instruments() -> dict[str, Any]:
    if not _metrics:
        from prometheus_client import Counter, Histogram

        _metrics["requests"] = Counter("lorafleet_api_requests", "API requests by route template and status",
                                       ["method", "route", "status"])
        _metrics["latency"] = Histogram("lorafleet_api_request_seconds",
                                        "API request latency by route template",
                                        ["method", "route"],
                                        buckets=(0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
    return _metrics


class RequestMetrics:
    """ASGI middleware: count and time each HTTP request (status 500 when the app raised)."""

    def __init__(self, app: ASGIApp):
        self.app = app
        _instruments()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def tracking_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        finally:
            route = getattr(scope.get("route"), "path", UNMATCHED)
            metrics = _instruments()
            metrics["requests"].labels(scope["method"], route, str(status)).inc()
            metrics["latency"].labels(scope["method"], route).observe(time.perf_counter() - start)


def serve_metrics(host: str, port: int) -> str:
    """Start the exporter (a daemon thread) over a fresh multiprocess folder; returns the folder.
    Must run before prometheus_client is imported by anything else in this process."""
    import tempfile

    folder = tempfile.mkdtemp(prefix="lorafleet-api-metrics-")
    os.environ[MULTIPROC_ENV] = folder
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry)
    start_http_server(port, addr=host, registry=registry)
    return folder
