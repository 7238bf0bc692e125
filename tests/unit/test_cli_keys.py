"""`lorafleet tenant key …` and `lorafleet key …` through Click's CliRunner on an embedded home:
the key printed once works, listings never show it, a revoked key no longer authenticates."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from orchestrator.cli.main import cli
from orchestrator.config import get_settings
from orchestrator.errors import Unauthenticated
from orchestrator.registry.db import forget_engine, session_scope
from orchestrator.services.keys import authenticate


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("LORAFLEET_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("LORAFLEET_DATA_DIR", os.environ["LORAFLEET_DATA_DIR"])
    for var in ("LORAFLEET_DATABASE_URL", "LORAFLEET_BROKER_URL", "LORAFLEET_ARTIFACTS"):
        monkeypatch.delenv(var, raising=False)
    get_settings.cache_clear()
    yield tmp_path / "home"
    forget_engine(get_settings().database_url)
    get_settings.cache_clear()


def run(*args: str, code: int = 0):
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == code, result.output + result.stderr
    return result


def who(raw: str):
    with session_scope() as session:
        return authenticate(session, raw)


def test_a_tenant_key_is_printed_once_listed_without_its_secret_and_revoked(home):
    run("tenant", "create", "acme")
    created = json.loads(run("tenant", "key", "create", "acme", "--name", "ci", "--expires", "30",
                             "--json").stdout)
    assert set(created) == {"id", "key", "name", "prefix", "expires_at"} and created["name"] == "ci"
    assert created["key"].startswith(created["prefix"]) and created["expires_at"]
    assert who(created["key"]).tenant_slug == "acme"
    listed = run("tenant", "key", "list", "acme", "--json").stdout
    assert created["key"] not in listed and created["key"] not in run("tenant", "key", "list", "acme").stdout
    [row] = json.loads(listed)
    assert (row["id"], row["prefix"], row["revoked_at"]) == (created["id"], created["prefix"], None)
    run("tenant", "key", "revoke", created["id"])
    assert json.loads(run("tenant", "key", "list", "acme", "--json").stdout)[0]["revoked_at"]
    with pytest.raises(Unauthenticated, match="revoked"):
        who(created["key"])


def test_an_operator_key_has_no_tenant(home):
    created = json.loads(run("key", "create", "--operator", "--json").stdout)
    assert who(created["key"]).operator
    assert [k["id"] for k in json.loads(run("key", "list", "--operator", "--json").stdout)] == [created["id"]]
    run("key", "revoke", created["id"])
    with pytest.raises(Unauthenticated):
        who(created["key"])


def test_refusals_are_one_line_errors(home):
    assert "no tenant" in run("tenant", "key", "create", "nobody", code=3).stderr
    assert "no API key" in run("tenant", "key", "revoke", "nope", code=3).stderr
    assert "--operator" in run("key", "create", code=2).stderr  # a tenant's key is `tenant key create`
    assert "0" in run("tenant", "key", "create", "acme", "--expires", "0", code=2).stderr
