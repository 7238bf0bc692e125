"""Every failure of the API in OpenAI's error shape: `{"error": {"message", "type", "param", "code"}}`.

Routes raise `ApiError`, or let the services' typed errors through: they are mapped here, once
(NotFound 404, input errors 400, QuotaExceeded 429 `insufficient_quota`, Conflict 409). FastAPI's
validation errors become 400s naming the field; Starlette's 404/405/413 keep their status; any
other exception is logged and answered 500 "internal error", never with its traceback.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from lora_engine.errors import LoraFleetInputError
from orchestrator.errors import Conflict, InvalidState, NotFound, QuotaExceeded, ServiceError, Unauthenticated

log = logging.getLogger("lorafleet.api")
MAX_MESSAGE_CHARS = 4000


class ApiError(Exception):
    """A request the API refuses: its status and OpenAI's error fields (`headers`: e.g. retry-after)."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None,
                 headers: Mapping[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = dict(headers or {})


def error_body(message: str, type: str, param: str | None = None, code: str | None = None) -> dict:
    if len(message) > MAX_MESSAGE_CHARS:
        message = message[:MAX_MESSAGE_CHARS] + "…"
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def error_response(error: ApiError) -> JSONResponse:
    return JSONResponse(error_body(error.message, error.type, error.param, error.code),
                        status_code=error.status, headers=error.headers)


def from_service_error(exc: Exception) -> ApiError | None:
    """The ApiError of a services' typed error (None: not one of ours)."""
    message = str(exc)
    if isinstance(exc, QuotaExceeded):
        return ApiError(429, message, type="insufficient_quota", code="insufficient_quota")
    if isinstance(exc, NotFound):
        return ApiError(404, message, code="not_found")
    if isinstance(exc, Conflict):
        return ApiError(409, message, code="conflict")
    if isinstance(exc, Unauthenticated):
        return ApiError(401, message, type="authentication_error", code="invalid_api_key")
    if isinstance(exc, InvalidState):
        return ApiError(400, message, code="invalid_state")
    if isinstance(exc, LoraFleetInputError | ServiceError):
        return ApiError(400, message)
    return None


def _location(loc: Sequence[Any]) -> str | None:
    """`("body", "hyperparameters", "n_epochs")` -> "hyperparameters.n_epochs"; list items as [i]."""
    parts = list(loc)
    if parts and parts[0] in ("body", "query", "path", "header", "cookie"):
        parts = parts[1:]
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or None


def validation_error(exc: RequestValidationError) -> ApiError:
    """One 400 for FastAPI's validation errors: each problem with where it is, the first as `param`."""
    problems, first = [], None
    for error in exc.errors()[:20]:
        where = _location(error.get("loc", ()))
        kind = error.get("type", "")
        if kind == "json_invalid":
            context = error.get("ctx", {}).get("error", "")
            problems.append(f"the body is not valid JSON ({context})" if context
                            else "the body is not valid JSON")
            continue
        if kind == "extra_forbidden":
            message = f"unknown field {where!r}" if where else "unknown field"
        elif kind == "missing":
            message = f"{where}: required" if where else "a required value is missing"
        else:
            message = f"{where}: {error.get('msg', 'invalid')}" if where else str(error.get("msg", "invalid"))
        problems.append(message)
        first = first or where
    if not problems:
        problems = ["the request is not valid"]
    return ApiError(400, "; ".join(problems), param=first,
                    code="invalid_json" if first is None and "JSON" in problems[0] else None)


HTTP_STATUS_TYPES = {401: "authentication_error", 403: "permission_error", 429: "requests"}
HTTP_STATUS_CODES = {405: "method_not_allowed", 413: "request_too_large"}


def install_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(validation_error(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            message = f"Invalid URL ({request.method} {request.url.path})"
        elif exc.status_code == 405:
            message = f"Method {request.method} is not allowed on {request.url.path}"
        else:
            message = str(exc.detail)
        error = ApiError(exc.status_code, message, type=HTTP_STATUS_TYPES.get(exc.status_code,
                                                                              "invalid_request_error"),
                         code=HTTP_STATUS_CODES.get(exc.status_code), headers=getattr(exc, "headers", None))
        return error_response(error)

    @app.exception_handler(ServiceError)
    async def _service(request: Request, exc: ServiceError) -> JSONResponse:
        return _mapped(request, exc)

    @app.exception_handler(LoraFleetInputError)
    async def _input(request: Request, exc: LoraFleetInputError) -> JSONResponse:
        return _mapped(request, exc)

    @app.exception_handler(Exception)
    async def _anything(request: Request, exc: Exception) -> JSONResponse:
        return _mapped(request, exc)


def _mapped(request: Request, exc: Exception) -> JSONResponse:
    error = from_service_error(exc)
    if error is None:
        # The traceback goes to the server's log, never to the client.
        log.error("internal error on %s %s", request.method, request.url.path, exc_info=exc)
        error = ApiError(500, "internal error", type="server_error", code="internal_error")
    return error_response(error)
