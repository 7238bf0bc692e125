"""Fixtures: a real Celery worker process per test module and mode (`embedded` or `cluster`),
with its own registry and broker; `workers.py` describes the modes and starts the processes."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from orchestrator.config import load_settings
from orchestrator.registry import db
from tests.integration.workers import (
    MODES,
    REDIS_URL,
    WORKER_START_TIMEOUT_S,
    LiveWorker,
    flush_redis,
    start_worker,
    stop_worker,
    wait_for,
    worker_env,
)
from tests.registry_fixtures import create_pg_database, drop_pg_database, pg_database_url


@pytest.fixture(scope="module")
def worker_settings_env() -> dict[str, str]:
    """Extra `LORAFLEET_*` variables for the module's worker (a module overrides this fixture)."""
    return {}


@pytest.fixture(scope="module", params=MODES)
def live_worker(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    worker_settings_env: dict[str, str],
) -> Iterator[LiveWorker]:
    mode = request.param
    home = tmp_path_factory.mktemp(f"lorafleet-{mode}")
    env = {**worker_env(home), **worker_settings_env}
    pg_name = None
    if mode == "cluster":
        pg_name = create_pg_database()
        env["LORAFLEET_DATABASE_URL"] = pg_database_url(pg_name)
        env["LORAFLEET_BROKER_URL"] = REDIS_URL
        db.upgrade(env["LORAFLEET_DATABASE_URL"])
        flush_redis()
    settings = load_settings(env)
    log_path = home / "worker.log"
    proc = start_worker(env, log_path)
    worker = LiveWorker(settings, env, proc, log_path, mode)
    try:
        wait_for(lambda: " ready." in worker.log(), WORKER_START_TIMEOUT_S, "the worker to start", worker)
        yield worker
    finally:
        stop_worker(proc)
        from orchestrator.dispatch import close_clients

        close_clients()
        db.forget_engine(settings.database_url)
        if pg_name is not None:
            drop_pg_database(pg_name)
            flush_redis()
