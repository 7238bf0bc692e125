"""The inference server's key check (worker/serve/auth.py), on SQLite and PostgreSQL, in a real
FastAPI app: a verified key is trusted for the cache time without a registry statement, a revoked
key is refused once that time has passed since it was verified, and the rate limits are counted in
the process (no `rate_counters` row per request) and still refuse."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from fastapi import Depends, FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from orchestrator.api.auth import Caller
from orchestrator.api.errors import install_handlers
from orchestrator.api.limits import ProcessLimiter
from orchestrator.config import load_settings
from orchestrator.registry.models import RateCounter
from orchestrator.services.keys import create_key, revoke_key
from orchestrator.services.tenants import create_tenant
from tests.registry_fixtures import statements
from worker.serve.auth import serve_caller
from worker.serve.ttl import TtlCache

pytest_plugins = ["registry_fixtures"]

TTL_S = 5.0


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def app_for(settings, clock: Clock) -> FastAPI:
    """The server's key check as app.py wires it, behind one route."""
    app = FastAPI()
    app.state.settings = settings
    app.state.limiter = ProcessLimiter(settings)
    app.state.keys = TtlCache(settings.serve_registry_cache_s, clock=clock)
    install_handlers(app)

    @app.get("/who")
    def who(caller: Caller = Depends(serve_caller)) -> dict:
        return {"tenant": caller.tenant_slug}

    return app


@pytest.fixture
def settings(registry_url: str, tmp_path: Path):
    return load_settings({
        "LORAFLEET_HOME": str(tmp_path / "home"), "LORAFLEET_DATABASE_URL": registry_url,
        "LORAFLEET_ARTIFACTS": str(tmp_path / "artifacts"),
        "LORAFLEET_DATA_DIR": os.environ["LORAFLEET_DATA_DIR"],
        "LORAFLEET_SERVE_REGISTRY_CACHE_S": str(TTL_S), "LORAFLEET_API_RATE_LIMIT_PER_MINUTE": "4",
        "LORAFLEET_API_AUTH_FAILURE_LIMIT": "2",
    })


def test_a_verified_key_is_trusted_for_the_cache_time_then_checked_again(session, settings):
    create_tenant(session, "acme")
    row, key = create_key(session, "acme")
    clock = Clock()
    client = TestClient(app_for(settings, clock))
    auth = {"Authorization": f"Bearer {key}"}
    assert client.get("/who", headers=auth).json() == {"tenant": "acme"}
    with statements(settings.database_url) as seen:
        assert client.get("/who", headers=auth).json() == {"tenant": "acme"}
    assert seen == []  # neither the key's row nor a rate counter
    revoke_key(session, row.id)
    clock.now += TTL_S - 0.1
    assert client.get("/who", headers=auth).status_code == 200  # the documented latency
    clock.now += 0.1
    refused = client.get("/who", headers=auth)
    assert refused.status_code == 401 and "revoked" in refused.json()["error"]["message"]
    clock.now += 2 * TTL_S
    assert client.get("/who", headers=auth).status_code == 401  # a refused key is never kept


def test_limits_are_counted_in_the_process_and_still_refuse(session, settings):
    create_tenant(session, "acme")
    _, key = create_key(session, "acme")
    client = TestClient(app_for(settings, Clock()))
    answers = [client.get("/who", headers={"Authorization": f"Bearer {key}"}).status_code for _ in range(5)]
    assert answers == [200] * 4 + [429]  # LORAFLEET_API_RATE_LIMIT_PER_MINUTE 4, cached or not
    bad = [client.get("/who", headers={"Authorization": "Bearer sk-wrong"}).status_code for _ in range(4)]
    assert bad == [401, 401, 401, 429]  # the address is blocked after its failures
    assert session.scalar(select(func.count()).select_from(RateCounter)) == 0
