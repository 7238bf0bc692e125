"""Registry fixtures: a fresh, migrated database per test, on SQLite and on PostgreSQL.

`registry_url` is parametrised over both backends. PostgreSQL is the real server at
127.0.0.1:5432 (LORAFLEET_TEST_POSTGRES_URL overrides the admin URL): each test gets its own
uniquely named database, dropped at the end. Migrating is the slow part (~0.5 s), so the
schema is migrated once per session into a template (a PostgreSQL template database, a SQLite
file) and each test starts from a copy of it.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest
from sqlalchemy.engine import make_url

from orchestrator.config import Settings, load_settings
from orchestrator.registry import db

PG_ADMIN_URL = os.environ.get("LORAFLEET_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
BACKENDS = ["sqlite", "postgresql"]


def _pg_admin() -> psycopg.Connection:
    return psycopg.connect(PG_ADMIN_URL, autocommit=True)


def pg_database_url(name: str) -> str:
    return make_url(db.normalize_url(PG_ADMIN_URL)).set(database=name).render_as_string(hide_password=False)


def create_pg_database(template: str | None = None) -> str:
    name = f"lorafleet_test_{uuid.uuid4().hex[:12]}"
    with _pg_admin() as conn:
        conn.execute(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))
    return name


def drop_pg_database(name: str) -> None:
    db.forget_engine(pg_database_url(name))
    with _pg_admin() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def _registry_templates(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A migrated SQLite file and PostgreSQL template database, made once per test session."""
    sqlite_path = tmp_path_factory.mktemp("registry-template") / "template.db"
    db.upgrade(f"sqlite:///{sqlite_path}")
    pg_name = create_pg_database()
    try:
        db.upgrade(pg_database_url(pg_name))
        yield {"sqlite": str(sqlite_path), "postgresql": pg_name}
    finally:
        drop_pg_database(pg_name)


@pytest.fixture
def empty_registry_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A URL to a brand-new, empty database of the backend named by the test's param."""
    backend = getattr(request, "param", "sqlite")
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'registry.db'}"
        yield url
        db.forget_engine(url)
        return
    name = create_pg_database()
    try:
        yield pg_database_url(name)
    finally:
        drop_pg_database(name)


@pytest.fixture(params=BACKENDS)
def registry_url(
    request: pytest.FixtureRequest, tmp_path: Path, _registry_templates: dict[str, str]
) -> Iterator[str]:
    """A URL to a fresh database migrated to head, on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        path = tmp_path / "registry.db"
        shutil.copyfile(_registry_templates["sqlite"], path)
        url = f"sqlite:///{path}"
        yield url
        db.forget_engine(url)
        return
    name = create_pg_database(template=_registry_templates["postgresql"])
    try:
        yield pg_database_url(name)
    finally:
        drop_pg_database(name)


@pytest.fixture
def registry_settings(registry_url: str, tmp_path: Path) -> Settings:
    """Settings pointing at the test's registry and a private artifacts folder."""
    return load_settings({
        "LORAFLEET_HOME": str(tmp_path / "home"),
        "LORAFLEET_DATABASE_URL": registry_url,
        "LORAFLEET_ARTIFACTS": str(tmp_path / "artifacts"),
        "LORAFLEET_DATA_DIR": os.environ["LORAFLEET_DATA_DIR"],
        "LORAFLEET_TENANT_MAX_RUNNING": "2",
        "LORAFLEET_MAX_ATTEMPTS": "3",
    })


@pytest.fixture
def session_maker(registry_url: str):
    """A sessionmaker on the test's registry (the process-wide cached engine)."""
    return db.session_factory(registry_url)


@pytest.fixture
def session(session_maker) -> Iterator:
    s = session_maker()
    try:
        yield s
    finally:
        s.close()


# ---- helpers for registry tests --------------------------------------------------------------

@contextmanager
def statements(url: str) -> Iterator[list[str]]:
    """The SQL statements the process's engine of `url` runs inside the block (not BEGIN)."""
    from sqlalchemy import event

    seen: list[str] = []

    def record(conn, cursor, statement, parameters, context, executemany):
        if not statement.lstrip().upper().startswith("BEGIN"):
            seen.append(statement)

    engine = db.get_engine(url)
    event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", record)


SPEC = {"task": "sst2", "method": "lora", "rank": 4, "base_model": "tiny-bert", "max_steps": 5}


def fake_adapter_files(folder: Path) -> Path:
    """An adapter folder as far as the registry is concerned (the engine's files are tested there)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 4}')
    (folder / "adapter_model.safetensors").write_bytes(b"\0" * 64)
    return folder


@pytest.fixture
def job_spec() -> dict:
    """A small valid training spec (sst2, LoRA r=4 on tiny-bert, 5 steps)."""
    return dict(SPEC)


@pytest.fixture
def adapter_files():
    """Factory: adapter_files(folder) writes a minimal adapter folder and returns it."""
    return fake_adapter_files
