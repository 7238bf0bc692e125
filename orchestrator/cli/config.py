"""`lorafleet config …`: the settings this command would use, and where each came from."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from orchestrator.cli.helpers import Column, emit, json_option, print_table, status
from orchestrator.text import redact_url


@click.group()
def config() -> None:
    """Settings (LORAFLEET_* variables) and the lorafleet home."""


@config.command("show")
@json_option
def show(as_json: bool) -> None:
    """Every LORAFLEET_* variable with its value and its source (env, discovered, default).
    Passwords in URLs (the database, the broker) show as `***`, here and with --json.

    \b
    Example:
      LORAFLEET_HOME=/srv/lorafleet lorafleet config show
    """
    from orchestrator.config import get_settings

    rows = [{"variable": row["variable"], "value": _shown(row["value"]), "source": row["source"]}
            for row in get_settings().described()]
    if as_json:
        emit(rows, True, print_table)
        return
    for row in rows:  # dicts print the way the variable is written (LORAFLEET_PRICES=cpu=0.05,cuda=2.5)
        if isinstance(row["value"], dict):
            row["value"] = ",".join(f"{k}={v}" for k, v in row["value"].items())
    print_table(rows, ["variable", Column("value", flexible=True), "source"])


def _shown(value: Any) -> Any:
    """A setting's value with the password of every URL in it masked (any string setting, and
    the items of a list or mapping: a URL-valued setting added later is covered too)."""
    if isinstance(value, str):
        return redact_url(value)
    if isinstance(value, dict):
        return {k: _shown(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_shown(v) for v in value]
    return value


@config.command("init")
@click.argument("folder", type=click.Path(file_okay=False, path_type=Path), default=".")
def init(folder: Path) -> None:
    """Make FOLDER (default: here) a lorafleet home: commands run in it or below use FOLDER/.lorafleet.

    \b
    Example:
      cd ~/experiments && lorafleet config init
    """
    home = (folder / ".lorafleet").resolve()
    existed = home.is_dir()
    from lora_engine.atomic import private_dir

    private_dir(home)
    status(f"{'existing' if existed else 'new'} lorafleet home {home}")
