"""`lorafleet api serve`: the tenants' OpenAI-compatible API (FastAPI under uvicorn)."""

from __future__ import annotations

import click

from orchestrator.cli.helpers import status


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
    import uvicorn

    from orchestrator.config import get_settings
    from orchestrator.registry.db import ensure_schema

    settings = get_settings()
    ensure_schema(settings)  # the embedded registry is made now, not by the first request
    host, port = host or settings.api_host, port or settings.api_port
    proxies = settings.api_forwarded_allow_ips.strip()
    status(f"lorafleet API on http://{host}:{port} (docs: /docs)")
    uvicorn.run("orchestrator.api.app:create_app", factory=True, host=host, port=port, workers=workers,
                proxy_headers=bool(proxies), forwarded_allow_ips=proxies or None, server_header=False,
                log_level="info", timeout_graceful_shutdown=10)
