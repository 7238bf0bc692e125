"""Alembic environment: the URL comes from the caller or from orchestrator config, never the ini.

`orchestrator.registry.db.upgrade(url)` passes the URL in `config.attributes["url"]`; the
`alembic` command line falls back to `LORAFLEET_DATABASE_URL` / the embedded default. SQLite
needs `render_as_batch` (it cannot ALTER most things in place: Alembic copies the table).
"""

from __future__ import annotations

from logging.config import fileConfig

from alembic import context

from orchestrator.config import load_settings
from orchestrator.registry.db import make_engine, normalize_url
from orchestrator.registry.models import Base

config = context.config
if config.config_file_name is not None and not config.attributes.get("url"):
    # Only the command line configures logging; programmatic callers keep their own.
    fileConfig(config.config_file_name, disable_existing_loggers=False)

target_metadata = Base.metadata


def _url() -> str:
    return normalize_url(config.attributes.get("url") or load_settings().database_url)


def run_migrations_offline() -> None:
    url = _url()
    context.configure(
        url=url,
        target_metadata=target_metadata,
        literal_binds=True,
        render_as_batch=url.startswith("sqlite"),
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def _pragma(connection, setting: str) -> None:
    cursor = connection.connection.driver_connection.cursor()
    try:
        cursor.execute(f"PRAGMA {setting}")
    finally:
        cursor.close()


def run_migrations_online() -> None:
    url = _url()
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            sqlite = connection.dialect.name == "sqlite"
            if sqlite:
                # Batch mode rebuilds a table (copy, DROP, rename); with foreign keys enforced the
                # DROP of a table other rows reference (a job's events) fails. SQLite ignores this
                # pragma inside a transaction: set it on the driver's connection before the
                # migration's transaction begins (a statement through SQLAlchemy would begin one).
                _pragma(connection, "foreign_keys = OFF")
            context.configure(
                connection=connection,
                target_metadata=target_metadata,
                render_as_batch=sqlite,
                compare_type=True,
            )
            with context.begin_transaction():
                context.run_migrations()
                if sqlite:
                    dangling = connection.exec_driver_sql("PRAGMA foreign_key_check").all()
                    if dangling:
                        raise RuntimeError(f"the migration left rows whose references dangle: {dangling[:5]}")
            if sqlite:
                _pragma(connection, "foreign_keys = ON")
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
