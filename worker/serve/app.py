"""The inference server's FastAPI application: `create_app(settings)` (uvicorn's app factory).

The API's parts, reused: its key check (kept a few seconds here: worker/serve/auth.py) and rate
limits (counted in this process without Redis: limits.py's ProcessLimiter), its error shape and
handlers (errors.py), its body cap (body_limit.py), its request metrics and its 404/405 for
unknown routes after the key is checked. The engine is made when the app starts (lifespan): the
first request does not pay for it, and a failure to load stops the server. The usage writer
(usage.py) starts with it and writes its last rows when the server stops.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI

from orchestrator.api.app import ALL_METHODS, catch_all_last, healthz, unknown_route
from orchestrator.api.body_limit import BodyLimit
from orchestrator.api.errors import install_handlers
from orchestrator.api.limits import ProcessLimiter
from orchestrator.config import Settings, get_settings
from worker.serve import routes
from worker.serve.auth import serve_caller
from worker.serve.lookup import AdapterLookup
from worker.serve.ttl import TtlCache

BODY_LIMIT = 4 << 20  # a chat request of 1024 long messages fits; a data set does not belong here


def make_engine():
    """The engine this server runs (worker/serve/engine.py's `Engine`): replace here, nowhere else."""
    from worker.serve.batched import BatchedEngine

    return BatchedEngine()


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    app = FastAPI(title="lorafleet serve", version="1",
                  description="Inference with the tenants' adapters (OpenAI-compatible).",
                  docs_url="/docs", redoc_url=None, openapi_url="/openapi.json", lifespan=lifespan)
    app.state.settings = settings
    app.state.limiter = ProcessLimiter(settings)
    app.state.keys = TtlCache(settings.serve_registry_cache_s)
    app.state.adapters = AdapterLookup(settings.serve_registry_cache_s)
    install_handlers(app)
    app.add_middleware(BodyLimit, limit=min(settings.api_body_limit, BODY_LIMIT))
    if settings.serve_metrics_port is not None:
        from orchestrator.api.metrics import RequestMetrics

        app.add_middleware(RequestMetrics)
    app.add_api_route("/healthz", healthz, methods=["GET"], include_in_schema=False)
    app.include_router(routes.router)
    app.add_api_route("/v1/{path:path}", unknown_route, methods=list(ALL_METHODS), include_in_schema=False,
                      dependencies=[Depends(serve_caller)])
    catch_all_last(app)
    return app


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    from worker.serve.server import Serving
    from worker.serve.usage import UsageWriter

    app.state.serving = Serving(make_engine(), app.state.settings)
    app.state.usage = UsageWriter(app.state.settings)
    app.state.background = set()  # tasks that outlive their request (a gone stream's usage record)
    try:
        yield
    finally:
        try:
            app.state.serving.close()
        finally:
            app.state.usage.close()
