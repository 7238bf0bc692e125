"""OpenAI's error shape for what the real-process tests cannot reach without a route of their own:
FastAPI's validation errors (malformed JSON, wrong types, unknown fields), a body without a
Content-Length over the cap, an exception a route raises, the services' typed errors. The app is
`create_app` itself with a few routes added, run in-process (Starlette's TestClient)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi import Request
from fastapi.testclient import TestClient
from pydantic import BaseModel, ConfigDict

from orchestrator.api.app import create_app
from orchestrator.api.errors import ApiError
from orchestrator.config import load_settings
from orchestrator.errors import Conflict, InvalidInput, NotFound, QuotaExceeded
from orchestrator.registry.db import forget_engine, session_scope
from orchestrator.services.keys import create_key
from orchestrator.services.tenants import create_tenant

CAP = 1024


class Hyperparameters(BaseModel):
    model_config = ConfigDict(extra="forbid")
    n_epochs: int


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str
    hyperparameters: Hyperparameters | None = None


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    home = tmp_path_factory.mktemp("api-errors")
    app = create_app(load_settings({"LORAFLEET_HOME": str(home), "LORAFLEET_API_MAX_BODY_BYTES": str(CAP)}))

    @app.post("/t/echo")
    def echo(body: Body) -> dict:
        return body.model_dump()

    @app.post("/t/read")
    async def read(request: Request) -> dict:
        return {"bytes": len(await request.body())}

    raised = {"boom": RuntimeError("secret detail /srv/registry.db"),
              "quota": QuotaExceeded("queued jobs: 1000 of 1000 (max_queued)"),
              "missing": NotFound("no job 'x'"), "clash": Conflict("exists"), "bad": InvalidInput("bad rank"),
              "api": ApiError(402, "pay", type="billing", param="p", code="c")}

    @app.get("/t/raise/{what}")
    def raise_(what: str) -> None:
        raise raised[what]

    @app.get("/v1/t/only-get")  # included after create_app: the catch-all must not shadow it
    def only_get() -> dict:
        return {"got": True}

    with TestClient(app, raise_server_exceptions=False) as client:
        yield client
    forget_engine(app.state.settings.database_url)


def error(response) -> dict:
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


def test_malformed_json_is_a_400(api):
    answer = api.post("/t/echo", content=b'{"model": ', headers={"content-type": "application/json"})
    assert answer.status_code == 400 and "not valid JSON" in error(answer)["message"]


def test_wrong_types_and_unknown_fields_are_400s_naming_the_field(api):
    answer = api.post("/t/echo", json={"model": "m", "hyperparameters": {"n_epochs": "many"}})
    assert answer.status_code == 400 and error(answer)["param"] == "hyperparameters.n_epochs"
    answer = api.post("/t/echo", json={"model": "m", "integrations": []})
    assert answer.status_code == 400
    assert error(answer)["param"] == "integrations"
    assert "unknown field 'integrations'" in error(answer)["message"]
    answer = api.post("/t/echo", json={})
    assert answer.status_code == 400 and error(answer)["param"] == "model"
    assert api.post("/t/echo", json={"model": "m"}).json() == {"model": "m", "hyperparameters": None}


def test_a_streamed_body_over_the_cap_is_413_while_it_is_read(api):
    def chunks():
        for _ in range(64):  # 64 KiB offered, no Content-Length
            yield b"x" * 1024

    answer = api.post("/t/read", content=chunks())
    assert answer.status_code == 413 and error(answer)["code"] == "request_too_large"
    assert api.post("/t/read", content=iter([b"x" * CAP])).json() == {"bytes": CAP}


def test_unknown_methods_are_405_and_unknown_paths_404(api, tmp_path_factory):
    assert api.delete("/healthz").status_code == 405 and error(api.delete("/healthz"))["message"]
    assert api.get("/nowhere").status_code == 404
    assert api.get("/v1/t/only-get").json() == {"got": True}
    # Under /v1 the key is checked first: without one, nothing tells which routes exist.
    assert api.post("/v1/t/only-get").status_code == 401 and api.get("/v1/nowhere").status_code == 401
    with session_scope(api.app.state.settings) as s:
        create_tenant(s, "acme")
        key = create_key(s, "acme")[1]
    auth = {"authorization": f"Bearer {key}"}
    answer = api.post("/v1/t/only-get", headers=auth)
    assert answer.status_code == 405 and answer.headers["allow"] == "GET"
    assert error(answer)["code"] == "method_not_allowed"
    assert error(api.get("/v1/nowhere", headers=auth))["message"] == "Invalid URL (GET /v1/nowhere)"


@pytest.mark.parametrize(("what", "status", "kind", "code"), [
    ("boom", 500, "server_error", "internal_error"),
    ("quota", 429, "insufficient_quota", "insufficient_quota"),
    ("missing", 404, "invalid_request_error", "not_found"),
    ("clash", 409, "invalid_request_error", "conflict"),
    ("bad", 400, "invalid_request_error", None),
    ("api", 402, "billing", "c"),
])
def test_errors_map_to_their_status_and_openais_shape(api, what, status, kind, code):
    answer = api.get(f"/t/raise/{what}")
    assert answer.status_code == status
    assert (error(answer)["type"], error(answer)["code"]) == (kind, code)
    if what == "boom":
        assert error(answer)["message"] == "internal error" and "secret" not in answer.text
    if what == "quota":
        assert "1000 of 1000" in error(answer)["message"]



def test_health_is_503_when_the_registry_does_not_answer(tmp_path):
    nowhere = "postgresql+psycopg://lorafleet@127.0.0.1:1/lorafleet?connect_timeout=2"  # nothing listens
    app = create_app(load_settings({"LORAFLEET_HOME": str(tmp_path), "LORAFLEET_DATABASE_URL": nowhere}))
    with TestClient(app) as client:
        answer = client.get("/healthz")
    assert answer.status_code == 503 and error(answer)["code"] == "unavailable"
    assert "127.0.0.1:1" not in answer.text  # where the registry lives is not for callers
