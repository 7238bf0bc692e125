"""`lorafleet api serve`: the tenants' OpenAI-compatible API (FastAPI under uvicorn)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import click

from orchestrator.cli.helpers import CliError, status


@click.group()
def api() -> None:
    """The tenants' OpenAI-compatible API."""


@api.command("serve")
@click.option("--host", help="Address to listen on (default: LORAFLEET_API_HOST, 127.0.0.1: this "
                             "machine only).")
@click.option("--port", type=click.IntRange(1, 65535),
              help="Port to listen on (default: LORAFLEET_API_PORT, 8000).")
@click.option("--workers", type=click.IntRange(1, 64), default=1, show_default=True,
              help="uvicorn worker processes (they share the registry, and Redis in cluster mode).")
def serve(host: str | None, port: int | None, workers: int) -> None:
    """Serve the API until interrupted (docs at /docs, health at /healthz)."""
    from orchestrator.config import get_settings
    from orchestrator.registry.db import ensure_schema

    settings = get_settings()
    ensure_schema(settings)  # the embedded registry is made now, not by the first request
    host, port = host or settings.api_host, port or settings.api_port
    proxies = settings.api_forwarded_allow_ips.strip()
    with metrics_exporter(settings.metrics_host, settings.api_metrics_port, "LORAFLEET_API_METRICS_PORT"):
        status(f"lorafleet API on http://{host}:{port} (docs: /docs)")
        _run(host, port, workers, proxies)


@contextmanager
def metrics_exporter(host: str, port: int | None, setting: str) -> Iterator[None]:
    """Prometheus metrics of a uvicorn server (the API's, the inference server's) on `host:port`
    while the block runs (nothing when `port` is None); its multiprocess folder removed after."""
    if port is None:
        yield
        return
    from orchestrator.api.metrics import serve_metrics

    try:
        folder = serve_metrics(host, port)
    except OSError as exc:
        raise CliError(f"cannot serve metrics on {host}:{port} ({exc.strerror or exc}); set {setting} "
                       "to a free port") from None
    status(f"metrics on http://{host}:{port}/metrics")
    try:
        yield
    finally:
        import shutil

        shutil.rmtree(folder, ignore_errors=True)


def _run(host: str, port: int, workers: int, proxies: str) -> None:
    import uvicorn

    uvicorn.run("orchestrator.api.app:create_app", factory=True, host=host, port=port, workers=workers,
                proxy_headers=bool(proxies), forwarded_allow_ips=proxies or None, server_header=False,
                log_level="info", timeout_graceful_shutdown=10)
