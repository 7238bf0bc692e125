"""`lorafleet api serve`: the tenants' OpenAI-compatible API (FastAPI under uvicorn)."""

from __future__ import annotations

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
    metrics_folder = None
    if settings.api_metrics_port is not None:
        from orchestrator.api.metrics import serve_metrics

        try:
            metrics_folder = serve_metrics(settings.metrics_host, settings.api_metrics_port)
        except OSError as exc:
            where = f"{settings.metrics_host}:{settings.api_metrics_port}"
            raise CliError(f"cannot serve metrics on {where} ({exc.strerror or exc}); set "
                           "LORAFLEET_API_METRICS_PORT to a free port") from None
        status(f"metrics on http://{settings.metrics_host}:{settings.api_metrics_port}/metrics")
    status(f"lorafleet API on http://{host}:{port} (docs: /docs)")
    try:
        _run(host, port, workers, proxies)
    finally:
        if metrics_folder is not None:
            import shutil

            shutil.rmtree(metrics_folder, ignore_errors=True)


def _run(host: str, port: int, workers: int, proxies: str) -> None:
    import uvicorn

    uvicorn.run("orchestrator.api.app:create_app", factory=True, host=host, port=port, workers=workers,
                proxy_headers=bool(proxies), forwarded_allow_ips=proxies or None, server_header=False,
                log_level="info", timeout_graceful_shutdown=10)
