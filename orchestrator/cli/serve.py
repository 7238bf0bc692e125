"""`lorafleet serve`: the inference server (worker/serve: FastAPI under uvicorn, torch in-process)."""

from __future__ import annotations

import click

from orchestrator.cli.api import metrics_exporter
from orchestrator.cli.helpers import status


@click.command("serve")
@click.option("--host", help="Address to listen on (default: LORAFLEET_SERVE_HOST, 127.0.0.1: this "
                             "machine only).")
@click.option("--port", type=click.IntRange(1, 65535),
              help="Port to listen on (default: LORAFLEET_SERVE_PORT, 8001).")
def serve(host: str | None, port: int | None) -> None:
    """Serve the tenants' adapters (OpenAI-compatible, the tenants' API keys) until interrupted."""
    from orchestrator.config import get_settings
    from orchestrator.registry.db import ensure_schema

    settings = get_settings()
    ensure_schema(settings)
    host, port = host or settings.serve_host, port or settings.serve_port
    import uvicorn

    with metrics_exporter(settings.metrics_host, settings.serve_metrics_port, "LORAFLEET_SERVE_METRICS_PORT"):
        status(f"lorafleet inference server on http://{host}:{port}")
        # One process: the models and the adapter cache live in it (one engine thread).
        uvicorn.run("worker.serve.app:create_app", factory=True, host=host, port=port, workers=1,
                    server_header=False, log_level="info", timeout_graceful_shutdown=10)
