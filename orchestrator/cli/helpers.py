"""Shared CLI helpers: the `--json` option, tables, and the mapping of typed errors to exit codes.

Every list/show command prints either a table (for people) or JSON with stable keys (for
scripts). Errors go to stderr with a non-zero exit code; a spec with several problems prints
every one of them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from typing import Any

import click

from orchestrator.cli.output import Column, print_record, print_table  # noqa: F401 (re-exported)

json_option = click.option(
    "--json", "as_json", is_flag=True, help="Print JSON (stable keys) instead of a table."
)
wide_option = click.option(
    "--wide", "-w", is_flag=True, help="Full ids, ISO times and every column (no 80-column fit)."
)


class CliError(click.ClickException):
    """A user-facing failure: message on stderr and an exit code: 1 bad input, a bad setting or a job
    that did not succeed (`--wait`, `job wait`), 3 not found, 4 conflict or wrong state. Click itself
    exits 2 for a usage error; a detached `--wait`/`--follow` (Ctrl-C) exits 130."""

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
    from orchestrator.errors import Conflict, InvalidState, NotFound, ServiceError

    if isinstance(exc, ConfigError):
        return CliError(str(exc), EXIT_INPUT)
    if isinstance(exc, NotFound):
        return CliError(str(exc), EXIT_NOT_FOUND)
    if isinstance(exc, Conflict | InvalidState):
        return CliError(str(exc), EXIT_CONFLICT)
    if isinstance(exc, LoraFleetInputError | ServiceError):
        return CliError(str(exc), EXIT_INPUT)
    from sqlalchemy.exc import InterfaceError, OperationalError

    if isinstance(exc, OperationalError | InterfaceError):
        # The registry cannot be reached (server down, wrong host): one line, not a traceback.
        from sqlalchemy.engine import make_url

        from orchestrator.config import get_settings
        from orchestrator.registry.db import normalize_url

        url = make_url(normalize_url(get_settings().database_url)).render_as_string(hide_password=True)
        reason = (str(exc.orig or exc).strip().splitlines() or [""])[0][:200]
        return CliError(f"cannot reach the registry at {url}: {reason} "
                        "(check LORAFLEET_DATABASE_URL and that the database is running)", EXIT_INPUT)
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


def emit(value: Any, as_json: bool, human: Callable[[Any], None]) -> None:
    """Print `value` as JSON or through `human`."""
    if as_json:
        print_json(value)
    else:
        human(value)


def status(message: str) -> None:
    """Progress chatter for people: stderr, so stdout stays machine-readable; escaped like every
    line people read (it may quote a name or a base model)."""
    from orchestrator.text import printable

    click.echo(printable(message, multiline=True), err=True)


def open_session() -> Any:
    """A registry session for one command (the embedded registry is created on first use); the
    jobs its services queued are sent to the workers once it is closed (`announce.sending_session`)."""
    from orchestrator.announce import sending_session

    return sending_session(on_send_error=_broker_unreachable)


def _broker_unreachable(job_ids: list[str], exc: Exception) -> None:
    """The jobs are committed already, so a broker that cannot be reached is not a failure of the
    command: the reconciler re-sends messages for queued jobs whose dispatch is old. Say so (one
    line, no traceback) and carry on, so that a script never submits the job twice."""
    reason = (str(exc).strip().splitlines() or [""])[0][:200]
    status(f"warning: {len(job_ids)} job(s) queued and committed, but the broker could not be reached "
           f"({type(exc).__name__}: {reason}); the reconciler (`lorafleet reconcile`, or a worker "
           "with beat) will dispatch them. Do not resubmit: with the same --idempotency-key a "
           "resubmission returns the same job.")
