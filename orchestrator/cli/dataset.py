"""`lorafleet dataset …`: upload, list, show and delete a tenant's JSONL data sets."""

from __future__ import annotations

from pathlib import Path

import click

from orchestrator.cli.helpers import emit, json_option, open_session, print_record, print_table

DATASET_COLUMNS = ("id", "tenant", "kind", "format", "name", "rows", "bytes", "token_estimate", "created_at")


@click.group()
def dataset() -> None:
    """Data sets: a tenant's own JSONL files, validated whole and stored by id."""


@dataset.command("upload")
@click.option("--tenant", required=True, help="Tenant slug.")
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--kind", type=click.Choice(["classification", "generation"]), default="classification",
              show_default=True, help="classification rows {text, text_pair?, label}; generation {prompt, "
              "completion} or OpenAI's chat rows {messages: [...]} (rendered with the base model's chat "
              "template when a job starts).")
@click.option("--validation", type=click.Path(path_type=Path),
              help="A validation split (else 10% of the rows are held out).")
@json_option
def upload(tenant: str, file: Path, kind: str, validation: Path | None, as_json: bool) -> None:
    """Validate FILE whole (every bad row with its line number) and store a copy by id.

    FILE must lie inside a data root (LORAFLEET_DATA_ROOTS). Uploading the same bytes again
    returns the same data set.
    """
    from orchestrator.services.datasets import upload_dataset
    from orchestrator.services.views import dataset_dict

    with open_session() as session:
        view = dataset_dict(upload_dataset(session, tenant, file, kind, validation), tenant)
    emit(view, as_json, lambda v: click.echo(v["id"]))


@dataset.command("list")
@click.option("--tenant", help="Only this tenant's data sets.")
@json_option
def list_(tenant: str | None, as_json: bool) -> None:
    """List data sets, oldest first."""
    from orchestrator.services.datasets import list_datasets
    from orchestrator.services.tenants import list_tenants
    from orchestrator.services.views import dataset_dict

    with open_session() as session:
        slugs = {t.id: t.slug for t in list_tenants(session)}
        views = [dataset_dict(d, slugs.get(d.tenant_id)) for d in list_datasets(session, tenant=tenant)]
    emit(views, as_json, lambda v: print_table(v, DATASET_COLUMNS))


@dataset.command("show")
@click.argument("dataset_id")
@click.option("--tenant", help="Only if it is this tenant's.")
@json_option
def show(dataset_id: str, tenant: str | None, as_json: bool) -> None:
    """Show a data set: rows, labels, duplicates, token estimate, sha256."""
    from orchestrator.services.datasets import get_dataset
    from orchestrator.services.views import dataset_dict

    with open_session() as session:
        row = get_dataset(session, dataset_id, tenant=tenant)
        view = dataset_dict(row, tenant or _slug_of(session, row.tenant_id))
    emit(view, as_json, print_record)


def _slug_of(session, tenant_id: str) -> str | None:
    from orchestrator.services.tenants import list_tenants

    return next((t.slug for t in list_tenants(session) if t.id == tenant_id), None)


@dataset.command("delete")
@click.argument("dataset_id")
@click.option("--tenant", help="Only if it is this tenant's.")
@json_option
def delete(dataset_id: str, tenant: str | None, as_json: bool) -> None:
    """Delete a data set's files (refused while a queued or running job uses it)."""
    from orchestrator.services.datasets import delete_dataset
    from orchestrator.services.views import dataset_dict

    with open_session() as session:
        row = delete_dataset(session, dataset_id, tenant=tenant)
        view = dataset_dict(row, tenant or _slug_of(session, row.tenant_id))
    emit(view, as_json, lambda v: click.echo(f"deleted data set {v['id']}"))
