"""`lorafleet tenant …`: create, list and show tenants."""

from __future__ import annotations

import click

from orchestrator.cli.helpers import emit, json_option, open_session, print_record, print_table

TENANT_COLUMNS = ("slug", "name", "max_running", "id", "created_at")


@click.group()
def tenant() -> None:
    """Tenants: the owners of jobs and adapters."""


@tenant.command("create")
@click.argument("slug")
@click.option("--name", help="Display name (default: the slug).")
@click.option("--max-running", type=int, help="Jobs of this tenant that may run at once.")
@json_option
def create(slug: str, name: str | None, max_running: int | None, as_json: bool) -> None:
    """Create tenant SLUG (lowercase letters, digits and dashes, 1-40 characters)."""
    from orchestrator.services.tenants import create_tenant
    from orchestrator.services.views import tenant_dict

    with open_session() as session:
        view = tenant_dict(create_tenant(session, slug, name=name, max_running=max_running))
    emit(view, as_json, lambda v: click.echo(f"created tenant {v['slug']} ({v['id']})"))


@tenant.command("list")
@json_option
def list_(as_json: bool) -> None:
    """List tenants."""
    from orchestrator.services.tenants import list_tenants
    from orchestrator.services.views import tenant_dict

    with open_session() as session:
        views = [tenant_dict(t) for t in list_tenants(session)]
    emit(views, as_json, lambda v: print_table(v, TENANT_COLUMNS))


@tenant.command("show")
@click.argument("slug")
@json_option
def show(slug: str, as_json: bool) -> None:
    """Show one tenant with its jobs by state, adapters and usage so far."""
    from orchestrator.services import get_tenant, tenant_summary
    from orchestrator.services.views import tenant_dict

    with open_session() as session:
        view = tenant_dict(get_tenant(session, slug))
        summary = tenant_summary(session, slug)[0].to_dict()
    view.update({k: v for k, v in summary.items() if k not in view})
    emit(view, as_json, print_record)
