"""`lorafleet`: the admin CLI (console script). Thin adapters: parse, call one service, print.

Start-up imports only Click and the command modules, which import nothing heavy at module level:
SQLAlchemy, Celery, torch and transformers load inside the commands that need them, so
`lorafleet --help` answers in well under 0.3 s (see bench/bench_cli_help.py).
"""

from __future__ import annotations

from typing import Any

import click

from orchestrator.cli import (
    adapter,
    config,
    dataset,
    db,
    examples,
    job,
    job_results,
    quickstart,
    report,
    status,
    tenant,
    worker,
)
from orchestrator.cli.helpers import to_cli_error


class LoraFleetGroup(click.Group):
    """The root group: maps our typed errors, raised by any subcommand, to a clean CLI error."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise  # Click's own: `job --help` exits through here, and must not load the error types
        except Exception as exc:
            error = to_cli_error(exc)
            if error is None:
                raise
            raise error from exc


@click.group(cls=LoraFleetGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="lorafleet")
def cli() -> None:
    """lorafleet: multi-tenant LoRA fine-tuning jobs, workers and adapters.

    Embedded by default: SQLite registry and broker under the lorafleet home, found like git finds
    a repository: $LORAFLEET_HOME, else the nearest .lorafleet folder here or above (make one with
    `lorafleet config init`), else a per-user data folder. Set LORAFLEET_DATABASE_URL /
    LORAFLEET_BROKER_URL for PostgreSQL + Redis; `lorafleet config show` lists every setting.
    """


cli.add_command(tenant.tenant)
cli.add_command(dataset.dataset)
cli.add_command(job.job)
job.job.add_command(job_results.metrics)
job.job.add_command(job_results.checkpoints)
cli.add_command(adapter.adapter)
cli.add_command(report.report)
cli.add_command(worker.worker)
cli.add_command(worker.reconcile)
cli.add_command(quickstart.quickstart)
cli.add_command(db.db)
cli.add_command(config.config)
cli.add_command(status.status)
examples.attach(cli)


if __name__ == "__main__":
    cli()
