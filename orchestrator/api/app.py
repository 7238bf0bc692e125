"""The FastAPI application of the tenants' API: `create_app(settings)` (uvicorn's app factory).

One router per resource module (files, fine_tuning, models, webhooks: paths under /v1), `/healthz`
without a key, the OpenAPI docs at /docs. Every error leaves in OpenAI's shape (errors.py); bodies
over the cap are refused while they stream in (body_limit.py).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from orchestrator.api import files, fine_tuning, merges, models, webhooks
from orchestrator.api.auth import tenant_caller
from orchestrator.api.body_limit import BodyLimit
from orchestrator.api.errors import error_body, install_handlers, log
from orchestrator.api.limits import Limiter
from orchestrator.api.storable import storable_text
from orchestrator.config import Settings, get_settings


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    app = FastAPI(title="lorafleet", version="1",
                  description="The tenants' OpenAI-compatible fine-tuning API of lorafleet.",
                  docs_url="/docs", redoc_url=None, openapi_url="/openapi.json", lifespan=lifespan,
                  # No 307 to the path with(out) a trailing slash: an unknown path is a 404 in
                  # OpenAI's shape, answered after the key is checked (the catch-all below).
                  redirect_slashes=False,
                  # before any route: a NUL or lone surrogate in a path, query or JSON body is a 400
                  dependencies=[Depends(storable_text)])
    app.state.settings = settings
    app.state.limiter = Limiter(settings)
    install_handlers(app)
    app.add_middleware(BodyLimit, limit=settings.api_body_limit)
    if settings.api_metrics_port is not None:  # outermost: it also sees the 413s BodyLimit answers
        from orchestrator.api.metrics import RequestMetrics

        app.add_middleware(RequestMetrics)
    app.add_api_route("/healthz", healthz, methods=["GET"], include_in_schema=False)
    # One line per resource module: app.include_router(<module>.router)
    app.include_router(fine_tuning.router)
    app.include_router(merges.router)
    app.include_router(files.router)
    app.include_router(models.router)
    app.include_router(webhooks.router)

    # Anything else under /v1 is refused after the key is checked, so an unauthenticated caller
    # learns nothing of which routes exist (401), an authenticated one gets 404 or 405. Routes
    # match in order: it goes last, wherever a router is included.
    app.add_api_route("/v1/{path:path}", unknown_route, methods=list(ALL_METHODS), include_in_schema=False,
                      dependencies=[Depends(tenant_caller)])
    catch_all_last(app)
    return app


def catch_all_last(app: FastAPI) -> None:
    app.router.routes.sort(key=lambda route: getattr(route, "endpoint", None) is unknown_route)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    catch_all_last(app)  # again: a router included after create_app returned must not be shadowed
    yield


ALL_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")


def unknown_route(request: Request) -> None:
    """404 for a path no route has; 405 for a path a route has under another method."""
    from starlette.routing import Match

    allowed: set[str] = set()
    for route in request.app.routes:
        if getattr(route, "endpoint", None) is unknown_route:
            continue
        match, _ = route.matches(request.scope)
        if match == Match.PARTIAL:
            allowed.update(getattr(route, "methods", None) or ())
    if allowed:
        raise StarletteHTTPException(405, headers={"allow": ", ".join(sorted(allowed))})
    raise StarletteHTTPException(404)


def healthz(request: Request) -> JSONResponse:
    """200 when the registry answers a query; 503 (OpenAI's error shape) when it does not."""
    from sqlalchemy import text

    from orchestrator.registry.db import session_scope

    try:  # the schema check and one round trip: what every request will need
        with session_scope(request.app.state.settings) as session:
            session.execute(text("SELECT 1"))
    except Exception as exc:
        log.warning("health check: registry unavailable (%s: %s)", type(exc).__name__, str(exc)[:200])
        return JSONResponse(error_body("the registry does not answer", "server_error", code="unavailable"),
                            status_code=503)
    return JSONResponse({"status": "ok"})
