"""`lorafleet tenant …`: create, list, show and rename tenants, change their quotas, and their
webhook endpoints (`tenant webhook add/list/remove`)."""

from __future__ import annotations

import click

from orchestrator.cli.helpers import emit, json_option, open_session, print_record, print_table, status
from orchestrator.cli.keys import tenant_key
from orchestrator.cli.output import echo

TENANT_COLUMNS = ("slug", "name", "max_running", "max_queued", "device_hours_per_month", "id", "created_at")


@click.group()
def tenant() -> None:
    """Tenants: the owners of jobs and adapters."""


tenant.add_command(tenant_key, "key")


@tenant.command("create")
@click.argument("slug")
@click.option("--name", help="Display name: one line of at most 200 printable characters (default: the "
                              "slug).")
@click.option("--max-running", type=int, help="Jobs of this tenant that may run at once.")
@json_option
def create(slug: str, name: str | None, max_running: int | None, as_json: bool) -> None:
    """Create tenant SLUG (lowercase letters, digits and dashes, 1-40 characters)."""
    from orchestrator.services.tenants import create_tenant
    from orchestrator.services.views import tenant_dict

    with open_session() as session:
        view = tenant_dict(create_tenant(session, slug, name=name, max_running=max_running))
    emit(view, as_json, lambda v: echo(f"created tenant {v['slug']} ({v['id']})"))


@tenant.command("rename")
@click.argument("slug")
@click.argument("name")
@json_option
def rename(slug: str, name: str, as_json: bool) -> None:
    """Give tenant SLUG the display name NAME (one line of at most 200 printable characters);
    the slug stays."""
    from orchestrator.services.tenants import rename_tenant
    from orchestrator.services.views import tenant_dict

    with open_session() as session:
        view = tenant_dict(rename_tenant(session, slug, name))
    emit(view, as_json, print_record)


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
    from orchestrator.services.overview import tenant_overview

    with open_session() as session:
        overview = tenant_overview(session, slug)
    emit(overview.to_dict(), as_json, print_record)
    if overview.storage_warning:
        status(f"warning: {overview.storage_warning}")


def _limit(kind: type):
    """A Click converter: a number, or 'unlimited'/'none' (None)."""

    def convert(ctx: click.Context, param: click.Parameter, value: str | None):
        if value is None:
            return KEEP_OPTION
        if value.strip().lower() in ("unlimited", "none"):
            return None
        try:
            return kind(value)
        except ValueError:
            from lora_engine.errors import shown

            what = "an integer" if kind is int else "a number"
            raise click.BadParameter(f"{shown(value)} is not {what} or 'unlimited'") from None

    return convert


KEEP_OPTION = object()


@tenant.command("set-quota")
@click.argument("slug")
@click.option("--max-running", type=click.IntRange(min=0), help="Jobs that may run at once (0 pauses).")
@click.option("--max-queued", type=click.IntRange(min=0), help="Jobs that may wait in the queue.")
@click.option("--device-hours-per-month", callback=_limit(float),
              help="Device-hour budget per calendar month (UTC), or 'unlimited'.")
@click.option("--max-storage-bytes", callback=_limit(int),
              help="Bytes of adapters + data sets, or 'unlimited'.")
@json_option
def set_quota(slug: str, max_running: int | None, max_queued: int | None, device_hours_per_month,
              max_storage_bytes, as_json: bool) -> None:
    """Change a tenant's quotas (only those given). Running jobs are never stopped."""
    from orchestrator.services.tenants import KEEP, set_tenant_quota
    from orchestrator.services.views import tenant_dict

    keep = {"device_hours_per_month": device_hours_per_month, "max_storage_bytes": max_storage_bytes}
    limits = {k: (KEEP if v is KEEP_OPTION else v) for k, v in keep.items()}
    with open_session() as session:
        view = tenant_dict(set_tenant_quota(session, slug, max_running, max_queued=max_queued, **limits))
    emit(view, as_json, print_record)


WEBHOOK_COLUMNS = ("id", "name", "url", "event_types", "created_at")


@tenant.group("webhook")
def webhook() -> None:
    """A tenant's webhook endpoints: its jobs' ends (succeeded, failed, cancelled) are POSTed
    there as OpenAI event objects, signed per the Standard Webhooks spec."""


@webhook.command("add")
@click.argument("slug")
@click.argument("url")
@click.option("--name", help="A display name (one line, at most 200 printable characters).")
@click.option("--event", "events", multiple=True,
              type=click.Choice(["fine_tuning.job.succeeded", "fine_tuning.job.failed",
                                 "fine_tuning.job.cancelled"]),
              help="Send only this event type (repeatable; default: all three).")
@json_option
def webhook_add(slug: str, url: str, name: str | None, events: tuple[str, ...], as_json: bool) -> None:
    """Send tenant SLUG's job events to URL (http or https, no credentials in it). Prints the
    endpoint's id and its signing secret: the secret is shown this once, keep it."""
    from orchestrator.services.webhooks import create_webhook

    with open_session() as session:
        created = create_webhook(session, slug, url, name=name, event_types=list(events) or None)
    view = {"id": created.endpoint.id, "url": created.endpoint.url, "secret": created.secret}

    def human(v: dict) -> None:
        echo(f"created webhook {v['id']} -> {v['url']}")
        echo(f"secret (shown once): {v['secret']}")

    emit(view, as_json, human)


@webhook.command("list")
@click.argument("slug")
@json_option
def webhook_list(slug: str, as_json: bool) -> None:
    """List tenant SLUG's webhook endpoints (never their secrets)."""
    from orchestrator.services.webhooks import list_webhooks, webhook_dict

    with open_session() as session:
        views = [webhook_dict(e, slug) for e in list_webhooks(session, slug)]
    emit(views, as_json, lambda v: print_table(v, WEBHOOK_COLUMNS))


@webhook.command("remove")
@click.argument("webhook_id")
@json_option
def webhook_remove(webhook_id: str, as_json: bool) -> None:
    """Stop sending to webhook WEBHOOK_ID (deliveries not yet made are dropped)."""
    from orchestrator.services.webhooks import remove_webhook, webhook_dict

    with open_session() as session:
        view = webhook_dict(remove_webhook(session, webhook_id))
    emit(view, as_json, lambda v: echo(f"removed webhook {v['id']}"))


@webhook.command("deliveries")
@click.argument("webhook_id")
@click.option("--limit", type=click.IntRange(1, 1000), default=20, show_default=True)
@json_option
def webhook_deliveries(webhook_id: str, limit: int, as_json: bool) -> None:
    """Show webhook WEBHOOK_ID's latest deliveries and every attempt of each (status or error)."""
    from orchestrator.services.webhooks import webhook_deliveries as deliveries

    with open_session() as session:
        views = [d.to_dict() for d in deliveries(session, webhook_id, limit=limit)]

    def human(rows: list[dict]) -> None:
        for row in rows:
            last = row["tries"][-1] if row["tries"] else None
            answer = "" if last is None else f", last: {last['status_code'] or last['error']}"
            echo(f"{row['id']}  {row['event_type']}  job {row['job_id']}  {row['state']}  "
                 f"{row['attempts']} attempt(s){answer}")

    emit(views, as_json, human)
