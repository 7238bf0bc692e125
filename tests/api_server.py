"""The tenants' API as a real process for tests: `start_api(env)` and the `api_server` fixture.

`start_api` runs `python -m orchestrator.cli.entry api serve` (uvicorn, the app factory) on a
free port of 127.0.0.1 with the given environment and waits for /healthz. The module-scoped
`api_server` fixture runs one per registry: `embedded` (a SQLite registry in a temporary home)
and `cluster` (a fresh PostgreSQL database, migrated, and Redis as the broker: the database
LORAFLEET_TEST_REDIS_URL names, flushed before and after). A test module adds settings by
overriding the `api_settings_env` fixture (the rate limits are set out of the way unless it sets
them). Keys come from the real service:

    with api_server.session() as s:
        row, key = create_key(s, "acme")
    client = api_server.client(key)        # openai.OpenAI(base_url=<api>/v1, max_retries=0)
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from orchestrator.config import Settings, load_settings

ROOT = Path(__file__).resolve().parents[1]
REDIS_URL = os.environ.get("LORAFLEET_TEST_REDIS_URL", "redis://127.0.0.1:6379/11")
DATA_DIR = os.environ.get("LORAFLEET_DATA_DIR", str(ROOT.parent / "shared" / "data"))
API_MODES = ["embedded", "cluster"]
START_TIMEOUT_S = 60
ENGINE_VARIABLES = ("LORAFLEET_DATA_CACHE", "LORAFLEET_MODEL_CACHE", "LORAFLEET_DEVICE")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class ApiProcess:
    """A running `lorafleet api serve` and the environment it was started with."""

    proc: subprocess.Popen
    base_url: str
    env: dict[str, str]
    log_path: Path
    mode: str = "embedded"

    @property
    def settings(self) -> Settings:
        """The server's settings, as the test process reads them (same registry, broker, home)."""
        return load_settings(self.env)

    @contextmanager
    def session(self) -> Iterator[Any]:
        """A registry session on the server's registry (for the services: create_key, ...)."""
        from orchestrator.registry.db import session_scope

        with session_scope(self.settings) as session:
            yield session

    def client(self, api_key: str, **kwargs: Any) -> Any:
        """The official openai client pointed at this server (no retries: a test sees each answer)."""
        import openai

        return openai.OpenAI(base_url=self.base_url + "/v1", api_key=api_key, max_retries=0, **kwargs)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def start_api(env: dict[str, str], *, port: int | None = None, log_path: Path | None = None,
              mode: str = "embedded", command: tuple[str, ...] = ("api", "serve"),
              timeout_s: float = START_TIMEOUT_S) -> ApiProcess:
    """Start the API with `env` (the whole environment of the process) and wait for /healthz;
    `command` ("serve",) starts the inference server the same way."""
    port = port or free_port()
    home = Path(env.get("LORAFLEET_HOME") or ROOT)
    log_path = log_path or home / f"api-{port}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "orchestrator.cli.entry", *command, "--host", "127.0.0.1",
            "--port", str(port)]
    with open(log_path, "w") as log:
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    api = ApiProcess(proc, f"http://127.0.0.1:{port}", env, log_path, mode)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not api.alive():
            pytest.fail(f"`lorafleet {' '.join(command)}` exited ({proc.returncode}) before it answered:\n"
                        f"{api.log()[-4000:]}")
        try:
            if httpx.get(api.base_url + "/healthz", timeout=2).status_code == 200:
                return api
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    api.stop()
    pytest.fail(f"`lorafleet {' '.join(command)}` did not answer /healthz within {timeout_s} s:\n"
                f"{api.log()[-4000:]}")


def api_env(home: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of an embedded-mode API (and of the test talking to its registry)."""
    # Hermetic: none of the caller's LORAFLEET_* settings, but the engine's own caches and device.
    env = {k: v for k, v in os.environ.items() if not k.startswith("LORAFLEET_") or k in ENGINE_VARIABLES}
    env.update({
        "HF_HUB_OFFLINE": "1",
        "LORAFLEET_HOME": str(home),
        "LORAFLEET_ARTIFACTS": str(home / "artifacts"),
        "LORAFLEET_DATA_DIR": DATA_DIR,
        "LORAFLEET_DATA_ROOTS": f"{home.parent}:{ROOT}",
        "PYTHONPATH": str(ROOT),
        # One address (127.0.0.1) and a few keys make every request of a test module: the limits
        # are out of the way unless a module sets them (tests/api/test_api_core.py does).
        "LORAFLEET_API_RATE_LIMIT_PER_MINUTE": "1000000",
        "LORAFLEET_API_AUTH_FAILURE_LIMIT": "1000000",
        **(extra or {}),
    })
    return env


def flush_redis() -> None:
    import redis

    redis.Redis.from_url(REDIS_URL).flushdb()


@pytest.fixture(scope="module")
def api_settings_env() -> dict[str, str]:
    """Extra `LORAFLEET_*` variables of the module's API server (a module overrides this fixture)."""
    return {}


@pytest.fixture(scope="module", params=API_MODES)
def api_server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
               api_settings_env: dict[str, str]) -> Iterator[ApiProcess]:
    """A real API process per module and registry (embedded: SQLite; cluster: PostgreSQL + Redis)."""
    from orchestrator.registry import db
    from tests.registry_fixtures import create_pg_database, drop_pg_database, pg_database_url

    home = tmp_path_factory.mktemp(f"api-{request.param}") / "home"
    home.mkdir()
    if request.param == "embedded":
        api = start_api(api_env(home, api_settings_env), mode="embedded")
        try:
            yield api
        finally:
            api.stop()
            db.forget_engine(api.settings.database_url)
        return
    name = create_pg_database()
    url = pg_database_url(name)
    try:
        db.upgrade(url)
        flush_redis()
        env = api_env(home, {"LORAFLEET_DATABASE_URL": url, "LORAFLEET_BROKER_URL": REDIS_URL,
                             **api_settings_env})
        api = start_api(env, mode="cluster")
        try:
            yield api
        finally:
            api.stop()
    finally:
        drop_pg_database(name)
        flush_redis()
