"""Shared CLI helpers: the `--json` option, tables, and the mapping of typed errors to exit codes.

Every list/show command prints either a table (for people) or JSON with stable keys (for
scripts). Errors go to stderr with a non-zero exit code; a spec with several problems prints
every one of them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import click

json_option = click.option(
    "--json", "as_json", is_flag=True, help="Print JSON (stable keys) instead of a table."
)


class CliError(click.ClickException):
    """A user-facing failure: message on stderr, exit code 1 (bad input) or 2 (not found/conflict)."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


# Exit codes by kind of failure, so scripts can tell "you asked wrongly" from "that does not exist".
EXIT_INPUT = 1
EXIT_NOT_FOUND = 3
EXIT_CONFLICT = 4


def to_cli_error(exc: BaseException) -> CliError | None:
    """The CliError for a typed error of ours (None: not ours, let it propagate as a bug).

    Imported here, on the error path only, so that `lorafleet --help` loads no SQLAlchemy.
    """
    from lora_engine.errors import LoraFleetInputError
    from orchestrator.config import ConfigError
    from orchestrator.services.errors import Conflict, InvalidState, NotFound, ServiceError

    if isinstance(exc, ConfigError):
        return CliError(str(exc), EXIT_INPUT)
    if isinstance(exc, NotFound):
        return CliError(str(exc), EXIT_NOT_FOUND)
    if isinstance(exc, Conflict | InvalidState):
        return CliError(str(exc), EXIT_CONFLICT)
    if isinstance(exc, LoraFleetInputError | ServiceError):
        return CliError(str(exc), EXIT_INPUT)
    return None


def jsonable(value: Any) -> Any:
    """Plain JSON types for datetimes, UUIDs, paths and dataclasses; non-finite floats -> null."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN/Infinity: a diverged loss prints as null, never as `NaN`
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if hasattr(value, "__dataclass_fields__"):
        from dataclasses import asdict

        return jsonable(asdict(value))
    if hasattr(value, "model_dump"):
        return jsonable(value.model_dump())
    return str(value)


def print_json(value: Any) -> None:
    click.echo(json.dumps(jsonable(value), indent=2, allow_nan=False))


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    if hasattr(value, "isoformat"):
        return value.isoformat(timespec="seconds")
    return str(value)


def print_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str], *, empty: str = "(none)") -> None:
    """A plain aligned table of `columns` from each row."""
    if not rows:
        click.echo(empty)
        return
    cells = [[_cell(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    click.echo("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
    for r in cells:
        click.echo("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())


def print_record(record: Mapping[str, Any], *, skip: Iterable[str] = ()) -> None:
    """`key: value` lines; nested dicts are printed inline as JSON."""
    skip = set(skip)
    width = max((len(k) for k in record if k not in skip), default=0)
    for key, value in record.items():
        if key in skip:
            continue
        text = json.dumps(jsonable(value)) if isinstance(value, Mapping | list) else _cell(value)
        click.echo(f"{key.ljust(width)}  {text}")


def emit(value: Any, as_json: bool, human: Callable[[Any], None]) -> None:
    """Print `value` as JSON or through `human`."""
    if as_json:
        print_json(value)
    else:
        human(value)


def status(message: str) -> None:
    """Progress chatter for people: stderr, so stdout stays machine-readable."""
    click.echo(message, err=True)


def open_session() -> Any:
    """A registry session for one command (the embedded registry is created on first use)."""
    from orchestrator.registry.db import session_scope

    return session_scope()
