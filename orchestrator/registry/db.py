"""Engines, sessions and schema migration for the registry.

SQLite (the embedded default) is shared by many processes (CLI, worker, reconciler), so every
connection gets WAL (readers never block the writer), a busy timeout (writers wait instead of
failing), and foreign keys on. Every writing transaction starts with `BEGIN IMMEDIATE`: a deferred
SQLite transaction that reads and then writes fails with "database is locked" (no wait) when
another process wrote in between, and almost every service call reads then writes. Taking the
write lock up front makes such transactions wait their turn, which also serialises the claim.
Read-only services ask for `BEGIN DEFERRED` (the `READONLY_OPTION` execution option).

PostgreSQL uses psycopg 3 (`postgresql+psycopg://`; a bare `postgresql://` is mapped to it).

Engines are cached per URL in this process; after a fork call `dispose_engines()` so the child
never shares the parent's sockets or file handles.
"""

from __future__ import annotations

import ast
import fcntl
import logging
import re
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from lora_engine.atomic import private_file
from orchestrator.config import Settings, get_settings

MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "migrations"
# Alembic announces "Context impl SQLiteImpl. Will assume non-transactional DDL." and one "setup
# plugin …" line per autogenerate plugin at INFO every time a process checks or migrates the
# schema; a worker's INFO log would carry them at every start. `db upgrade` says the revision itself.
for _chatty in ("alembic.runtime.migration", "alembic.runtime.plugins"):
    logging.getLogger(_chatty).setLevel(logging.WARNING)
SQLITE_BUSY_TIMEOUT_MS = 30_000

# Connection execution option set by read-only services: SQLite begins DEFERRED for them.
READONLY_OPTION = "lorafleet_readonly"

_engines: dict[str, Engine] = {}
_factories: dict[str, sessionmaker[Session]] = {}
_schema_ready: set[str] = set()
_lock = threading.Lock()


def normalize_url(url: str) -> str:
    """Map `postgresql://` / `postgres://` to the psycopg 3 driver; leave others unchanged."""
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://"):]
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://"):]
    return url


def _sqlite_setup(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event (below) open transactions, not pysqlite's implicit BEGIN.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA journal_mode = WAL")
        cur.execute("PRAGMA synchronous = NORMAL")
        cur.execute("PRAGMA foreign_keys = ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        readonly = conn.get_execution_options().get(READONLY_OPTION, False)
        conn.exec_driver_sql("BEGIN DEFERRED" if readonly else "BEGIN IMMEDIATE")


def make_engine(url: str, **kwargs: Any) -> Engine:
    """A new engine for `url` (SQLite pragmas and IMMEDIATE transactions set up); not cached."""
    url = normalize_url(url)
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            private_file(parsed.database)  # owner-only, and so are the -wal/-shm files SQLite adds
        kwargs.setdefault("connect_args", {"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})
        engine = create_engine(url, **kwargs)
        _sqlite_setup(engine)
        return engine
    kwargs.setdefault("pool_pre_ping", True)
    return create_engine(url, **kwargs)


def get_engine(url: str) -> Engine:
    """The process-wide engine for `url` (created on first use)."""
    url = normalize_url(url)
    with _lock:
        if url not in _engines:
            _engines[url] = make_engine(url)
        return _engines[url]


def session_factory(url: str) -> sessionmaker[Session]:
    """A sessionmaker bound to the cached engine; objects stay readable after commit."""
    url = normalize_url(url)
    engine = get_engine(url)
    with _lock:
        if url not in _factories:
            _factories[url] = sessionmaker(engine, expire_on_commit=False)
        return _factories[url]


@contextmanager
def session_scope(settings: Settings | None = None, *, url: str | None = None) -> Iterator[Session]:
    """A session for one unit of work: schema ensured, rolled back on error, always closed.

    Services commit their own transactions; this only guarantees nothing half-done survives
    an exception and that the connection goes back to the pool.
    """
    settings = settings or get_settings()
    url = url or settings.database_url
    ensure_schema(settings, url=url)
    session = session_factory(url)()
    try:
        yield session
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def forget_engine(url: str) -> None:
    """Close and forget the cached engine of `url` (e.g. before dropping its database)."""
    url = normalize_url(url)
    with _lock:
        engine = _engines.pop(url, None)
        _factories.pop(url, None)
        _schema_ready.discard(url)
    if engine is not None:
        engine.dispose()


def dispose_engines() -> None:
    """Forget every engine without closing the parent's connections (call after fork)."""
    with _lock:
        for engine in _engines.values():
            engine.dispose(close=False)
        _engines.clear()
        _factories.clear()


# ---- migrations ------------------------------------------------------------------------------


def alembic_config(url: str) -> Any:
    """An Alembic Config for `url`; env.py reads the URL from `attributes["url"]`."""
    from alembic.config import Config

    cfg = Config(str(MIGRATIONS_DIR / "alembic.ini"))
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["url"] = normalize_url(url)
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    """Apply migrations up to `revision` (`lorafleet db upgrade`)."""
    from alembic import command

    command.upgrade(alembic_config(url), revision)


def downgrade(url: str, revision: str = "base") -> None:
    """Revert migrations down to `revision` (`base`: an empty database)."""
    from alembic import command

    command.downgrade(alembic_config(url), revision)


def check(url: str) -> None:
    """Raise if the models and the migrated database differ (`alembic check`)."""
    from alembic import command

    command.check(alembic_config(url))


def current_revision(url: str) -> str | None:
    """The revision the database is at (None: never migrated)."""
    from alembic.runtime.migration import MigrationContext

    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
    assert head is not None, "migrations/versions holds no revision"
    return head


class SchemaOutOfDate(RuntimeError):
    """The (non-embedded) registry is not at the code's migration head."""


_REVISION = re.compile(r"^revision(?:\s*:\s*[^=]+)?\s*=\s*(.+)$", re.M)
_DOWN_REVISION = re.compile(r"^down_revision(?:\s*:\s*[^=]+)?\s*=\s*(.+)$", re.M)


def script_heads() -> set[str] | None:
    """The head revision(s) of migrations/versions, read from the files' `revision` and
    `down_revision` lines without importing Alembic (None: a file could not be read that way)."""
    revisions: set[str] = set()
    downs: set[str] = set()
    for path in (MIGRATIONS_DIR / "versions").glob("*.py"):
        text = path.read_text()
        rev, down = _REVISION.search(text), _DOWN_REVISION.search(text)
        if rev is None or down is None:
            return None
        try:
            revision, down_revision = ast.literal_eval(rev.group(1)), ast.literal_eval(down.group(1))
        except (ValueError, SyntaxError):
            return None
        revisions.add(revision)
        downs.update([down_revision] if isinstance(down_revision, str) else (down_revision or ()))
    return revisions - downs


def _at_head_fast(url: str, parsed: Any) -> bool:
    """Whether the registry is already at the code's head, checked with one SELECT: the common
    case of every CLI command, which then loads no Alembic (start-up time of `job submit`)."""
    if parsed.get_backend_name() == "sqlite" and not (parsed.database and Path(parsed.database).exists()):
        return False
    heads = script_heads()
    if not heads:
        return False
    try:
        with get_engine(url).connect().execution_options(**{READONLY_OPTION: True}) as conn:
            stamped = {row[0] for row in conn.exec_driver_sql("SELECT version_num FROM alembic_version")}
    except Exception:  # no table yet, unreachable: the full check below reports it properly
        return False
    return stamped == heads


def ensure_schema(settings: Settings | None = None, *, url: str | None = None) -> None:
    """Make sure the registry is usable, once per process and URL.

    Embedded SQLite: created and migrated to head on first use, under a file lock so several
    processes starting together do not migrate concurrently. PostgreSQL: migrations are an
    operator step (`lorafleet db upgrade`, the compose `migrate` service); a database behind
    the code's head raises SchemaOutOfDate rather than being altered behind the operator's back.
    """
    settings = settings or get_settings()
    url = normalize_url(url or settings.database_url)
    if url in _schema_ready:
        return
    parsed = make_url(url)
    if _at_head_fast(url, parsed):
        _schema_ready.add(url)
        return
    if parsed.get_backend_name() == "sqlite" and parsed.database and parsed.database != ":memory:":
        lock_path = Path(parsed.database).with_name(Path(parsed.database).name + ".migrate.lock")
        with open(private_file(lock_path), "w") as lock_file:
            fcntl.flock(lock_file, fcntl.LOCK_EX)
            try:
                database = Path(parsed.database)
                is_new = not database.exists() or database.stat().st_size == 0
                if current_revision(url) != head_revision():
                    upgrade(url)
                if is_new:
                    # "My jobs are gone": say which registry a command started, so a wrong home shows.
                    print(f"lorafleet: new registry {parsed.database} (home from "
                          f"{settings.source_of('home')}; `lorafleet config show` lists the settings)",
                          file=sys.stderr)
            finally:
                fcntl.flock(lock_file, fcntl.LOCK_UN)
    elif parsed.get_backend_name() == "sqlite":
        raise ValueError("an in-memory SQLite registry cannot be shared; use a file URL")
    else:
        current, head = current_revision(url), head_revision()
        if current != head:
            raise SchemaOutOfDate(
                f"registry at {parsed.render_as_string(hide_password=True)} is at revision "
                f"{current or '(none)'}, the code needs {head}: run `lorafleet db upgrade`"
            )
    _schema_ready.add(url)
