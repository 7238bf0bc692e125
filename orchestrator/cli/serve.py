"""`lorafleet serve`: the inference server (worker/serve: FastAPI under uvicorn, torch in-process)."""

from __future__ import annotations

import click

from orchestrator.cli.helpers import CliError, status


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
    metrics_folder = None
    if settings.serve_metrics_port is not None:
        from orchestrator.api.metrics import serve_metrics

        try:
            metrics_folder = serve_metrics(settings.metrics_host, settings.serve_metrics_port)
        except OSError as exc:
            where = f"{settings.metrics_host}:{settings.serve_metrics_port}"
            raise CliError(f"cannot serve metrics on {where} ({exc.strerror or exc}); set "
                           "LORAFLEET_SERVE_METRICS_PORT to a free port") from None
        status(f"metrics on http://{settings.metrics_host}:{settings.serve_metrics_port}/metrics")
    status(f"lorafleet inference server on http://{host}:{port}")
    import uvicorn

    try:
        # One process: the models and the adapter cache live in it (one engine thread).
        uvicorn.run("worker.serve.app:create_app", factory=True, host=host, port=port, workers=1,
                    server_header=False, log_level="info", timeout_graceful_shutdown=10)
    finally:
        if metrics_folder is not None:
            import shutil

            shutil.rmtree(metrics_folder, ignore_errors=True)
