"""`lorafleet`: the admin CLI (console script). Thin adapters: parse, call one service, print.

Start-up imports only Click; the command that runs imports its own module (`COMMANDS`), and the
command modules import nothing heavy at module level: SQLAlchemy, Celery, torch and transformers
load inside the commands that need them, so `lorafleet --help` (which loads every command module
for the summaries) answers in well under 0.3 s (see bench/bench_cli_help.py).
"""

from __future__ import annotations

import gc
from typing import Any

import click

from orchestrator.cli.helpers import to_cli_error
from orchestrator.cli.lazy import LazyGroup
from orchestrator.text import printable

# Net allocations of tracked objects before the cyclic garbage collector first runs in a CLI
# process (`defer_gc`); a `job submit` makes ~140,000, a long-running command passes it soon.
STARTUP_GC_ALLOCATIONS = 500_000

# Each command's module is imported when the command is used (cli/lazy.py): a command line runs
# one command, and `job submit` should not pay for importing the others.
COMMANDS = {
    "tenant": "orchestrator.cli.tenant:tenant",
    "dataset": "orchestrator.cli.dataset:dataset",
    "job": "orchestrator.cli.job:job",
    "adapter": "orchestrator.cli.adapter:adapter",
    "report": "orchestrator.cli.report:report",
    "worker": "orchestrator.cli.worker:worker",
    "reconcile": "orchestrator.cli.worker:reconcile",
    "quickstart": "orchestrator.cli.quickstart:quickstart",
    "db": "orchestrator.cli.db:db",
    "config": "orchestrator.cli.config:config",
    "cli-server": "orchestrator.cli.forkserver:cli_server",
    "status": "orchestrator.cli.status:status",
    "key": "orchestrator.cli.keys:key",
    "api": "orchestrator.cli.api:api",
    "serve": "orchestrator.cli.serve:serve",
}


def defer_gc() -> None:
    """Let the cyclic garbage collector first run after STARTUP_GC_ALLOCATIONS allocations, then
    go back to its usual thresholds (`_restore_gc`, at the end of that first collection).

    Start-up creates long-lived objects only (modules, classes, SQLAlchemy's and pydantic's
    structures): with the default threshold (a collection every 700 allocations) `job submit`
    ran ~200 collections that rescanned them and freed almost nothing, ~12% of its CPU time
    (bench/RESULTS.md, "The submit path"). A short command now exits before the first one; a long
    one (`--wait`, `worker`, `report` over many rows) gets one early collection and then the usual.
    """
    global _usual_gc_thresholds
    if _usual_gc_thresholds is not None:
        return  # deferred already (the CLI invoked again in this process, as tests do)
    _usual_gc_thresholds = gc.get_threshold()
    if _restore_gc not in gc.callbacks:
        gc.callbacks.append(_restore_gc)
    gc.set_threshold(STARTUP_GC_ALLOCATIONS, *_usual_gc_thresholds[1:])


_usual_gc_thresholds: tuple[int, int, int] | None = None


def _restore_gc(phase: str, _info: dict[str, Any]) -> None:
    global _usual_gc_thresholds
    if phase == "stop" and _usual_gc_thresholds is not None:
        gc.set_threshold(*_usual_gc_thresholds)
        _usual_gc_thresholds = None


class LoraFleetGroup(LazyGroup):
    """The root group: maps our typed errors, raised by any subcommand, to a clean CLI error."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        defer_gc()
        return super().main(*args, **kwargs)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.ClickException as exc:
            exc.message = printable(exc.message, multiline=True)  # it may quote a name or a path
            raise
        except (click.exceptions.Exit, click.exceptions.Abort):
            raise  # Click's own: `job --help` exits through here, and must not load the error types
        except Exception as exc:
            error = to_cli_error(exc)
            if error is None:
                raise
            error.message = printable(error.message, multiline=True)
            raise error from exc


@click.group(cls=LoraFleetGroup, lazy=COMMANDS, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="lorafleet")
def cli() -> None:
    """lorafleet: multi-tenant LoRA fine-tuning jobs, workers and adapters.

    Embedded by default: SQLite registry and broker under the lorafleet home, found like git finds
    a repository: $LORAFLEET_HOME, else the nearest .lorafleet folder here or above (make one with
    `lorafleet config init`), else a per-user data folder. Set LORAFLEET_DATABASE_URL /
    LORAFLEET_BROKER_URL for PostgreSQL + Redis; `lorafleet config show` lists every setting.
    """


if __name__ == "__main__":
    cli()
