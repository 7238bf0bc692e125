"""`lorafleet db …`: registry migrations (the compose `migrate` service runs `db upgrade`)."""

from __future__ import annotations

import click

from orchestrator.cli.helpers import emit, json_option, print_record


@click.group()
def db() -> None:
    """The registry database: migrations."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True, help="Alembic revision to upgrade to.")
def upgrade(revision: str) -> None:
    """Apply migrations to the configured registry (LORAFLEET_DATABASE_URL)."""
    from orchestrator.config import get_settings
    from orchestrator.registry import db as registry_db

    url = get_settings().database_url
    registry_db.upgrade(url, revision)
    click.echo(f"registry at revision {registry_db.current_revision(url)}", err=True)


@db.command("current")
@json_option
def current(as_json: bool) -> None:
    """Show the registry's revision and the code's head revision."""
    from orchestrator.config import get_settings
    from orchestrator.registry import db as registry_db

    url = get_settings().database_url
    view = {"current": registry_db.current_revision(url), "head": registry_db.head_revision()}
    emit(view, as_json, print_record)
