"""`lorafleet tenant key …` and `lorafleet key …`: the keys of the tenants' API.

A new key is printed once (`--json`: {"id", "key", "name", "prefix", "expires_at"}); the registry
keeps its hash only, so listings show its prefix and dates, never the secret.
"""

from __future__ import annotations

import click

from orchestrator.cli.helpers import emit, json_option, open_session, print_record, print_table, status

KEY_COLUMNS = ("id", "name", "prefix", "created_at", "expires_at", "revoked_at", "last_used_at")
name_option = click.option("--name", help="A label for the key (one line, at most 200 printable characters).")
expires_option = click.option("--expires", "expires_days", type=click.IntRange(1, 3650),
                              help="Days until the key expires (default: never).")


def _created(row, raw: str, as_json: bool) -> None:
    view = {"id": row.id, "key": raw, "name": row.name, "prefix": row.prefix,
            "expires_at": row.expires_at.isoformat() if row.expires_at else None}
    emit(view, as_json, lambda v: click.echo(v["key"]))
    if not as_json:
        status(f"key {row.id} created; it is shown this once, keep it secret")


@click.group("key")
def tenant_key() -> None:
    """API keys of a tenant (the tenants' API, `lorafleet api serve`)."""


@tenant_key.command("create")
@click.argument("tenant")
@name_option
@expires_option
@json_option
def tenant_key_create(tenant: str, name: str | None, expires_days: int | None, as_json: bool) -> None:
    """Create an API key of TENANT and print it (once)."""
    from orchestrator.services.keys import create_key

    with open_session() as session:
        row, raw = create_key(session, tenant, name=name, expires_days=expires_days)
    _created(row, raw, as_json)


@tenant_key.command("list")
@click.argument("tenant")
@json_option
def tenant_key_list(tenant: str, as_json: bool) -> None:
    """List the API keys of TENANT (revoked ones too; never a secret)."""
    from orchestrator.services.keys import key_dict, list_keys

    with open_session() as session:
        views = [key_dict(row) for row in list_keys(session, tenant)]
    emit(views, as_json, lambda v: print_table(v, KEY_COLUMNS))


@tenant_key.command("revoke")
@click.argument("key_id")
@json_option
def tenant_key_revoke(key_id: str, as_json: bool) -> None:
    """Revoke API key KEY_ID: refused from the next request on."""
    _revoke(key_id, as_json)


def _revoke(key_id: str, as_json: bool) -> None:
    from orchestrator.services.keys import key_dict, revoke_key

    with open_session() as session:
        view = key_dict(revoke_key(session, key_id))
    emit(view, as_json, print_record)


@click.group("key")
def key() -> None:
    """Operator API keys: they act for the tenant a request names (OpenAI-Organization)."""


@key.command("create")
@click.option("--operator", is_flag=True, required=True,
              help="Make an operator key (required: tenants' keys are `tenant key create`).")
@name_option
@expires_option
@json_option
def key_create(operator: bool, name: str | None, expires_days: int | None, as_json: bool) -> None:
    """Create an operator API key and print it (once)."""
    from orchestrator.services.keys import create_operator_key

    with open_session() as session:
        row, raw = create_operator_key(session, name=name, expires_days=expires_days)
    _created(row, raw, as_json)


@key.command("list")
@click.option("--operator", is_flag=True, required=True, help="List the operator keys.")
@json_option
def key_list(operator: bool, as_json: bool) -> None:
    """List the operator API keys (revoked ones too; never a secret)."""
    from orchestrator.services.keys import key_dict, list_keys

    with open_session() as session:
        views = [key_dict(row) for row in list_keys(session, None)]
    emit(views, as_json, lambda v: print_table(v, KEY_COLUMNS))


@key.command("revoke")
@click.argument("key_id")
@json_option
def key_revoke(key_id: str, as_json: bool) -> None:
    """Revoke API key KEY_ID (an operator's or a tenant's)."""
    _revoke(key_id, as_json)
