"""What an operator types about a tenant, on SQLite and PostgreSQL: quotas up to what their
columns hold (PostgreSQL's `integer` is 32-bit, SQLite's is not: a bound checked on SQLite alone
would pass values PostgreSQL refuses), display names one printable line of at most 200
characters; a refusal names the rule and leaves the row as it was."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from orchestrator import errors
from orchestrator.registry.limits import BIG_INTEGER_MAX, INTEGER_MAX, TENANT_NAME_CHARS
from orchestrator.registry.models import Tenant
from orchestrator.services.tenants import NAME_RULE, create_tenant, rename_tenant, set_tenant_quota

pytest_plugins = ["registry_fixtures"]


def _row(session) -> tuple:
    t = session.scalars(select(Tenant).where(Tenant.slug == "acme")).one()
    row = (t.name, t.max_running, t.max_queued, t.max_storage_bytes, t.device_hours_per_month)
    session.rollback()
    return row


def test_quotas_up_to_their_columns_are_stored_and_one_more_is_refused(session) -> None:
    create_tenant(session, "acme", max_running=INTEGER_MAX)
    set_tenant_quota(session, "acme", max_queued=INTEGER_MAX, max_storage_bytes=BIG_INTEGER_MAX)
    stored = _row(session)
    assert stored[1:4] == (INTEGER_MAX, INTEGER_MAX, BIG_INTEGER_MAX)
    for quota, value, says in [
        ("max_running", INTEGER_MAX + 1, f"max_running must be a whole number between 0 and {INTEGER_MAX}"),
        ("max_queued", 10**400, "max_queued must be a whole number between 0 and 2147483647 "
                                "(got an integer of 401 digits)"),
        ("max_storage_bytes", BIG_INTEGER_MAX + 1, f"between 0 and {BIG_INTEGER_MAX}, or unlimited"),
        ("max_queued", True, "(got True)"),
        ("max_running", -1, "(got -1)"),
        ("device_hours_per_month", float("nan"), "must be a finite number >= 0, or unlimited"),
    ]:
        with pytest.raises(errors.InvalidInput) as refused:
            set_tenant_quota(session, "acme", **{quota: value})
        assert says in str(refused.value)
        assert _row(session) == stored
    with pytest.raises(errors.InvalidInput, match="max_running must be a whole number"):
        create_tenant(session, "bob", max_running=INTEGER_MAX + 1)
    assert session.scalars(select(Tenant.slug)).all() == ["acme"]


def test_a_display_name_is_one_printable_line_of_at_most_200_characters(session) -> None:
    longest = "é" * TENANT_NAME_CHARS  # characters, not bytes: PostgreSQL's varchar(200) counts the same
    create_tenant(session, "acme", name=f"  {longest}  ")
    assert _row(session)[0] == longest
    rename_tenant(session, "acme", "Acme\u3000Research")  # a space of another script is a space
    assert _row(session)[0] == "Acme\u3000Research"
    for name, says in [
        ("x" * (TENANT_NAME_CHARS + 1), f"display name is {TENANT_NAME_CHARS + 1} characters long"),
        ("Acme\nEvil", "holds a line break at character 5"),
        ("Acme\u2028Evil", "holds a line break at character 5"),
        ("\x1b[2J", "holds the non-printable character U+001B at character 1"),
        ("Acme\u202e", "holds the non-printable character U+202E at character 5"),
        ("a\udcff", "holds the non-printable character U+DCFF"),  # undecodable argv bytes
        (7, "display name must be text (got 7)"),
    ]:
        with pytest.raises(errors.InvalidInput) as refused:
            rename_tenant(session, "acme", name)
        assert says in str(refused.value) and NAME_RULE in str(refused.value)
        assert _row(session)[0] == "Acme\u3000Research"
        with pytest.raises(errors.InvalidInput):
            create_tenant(session, "bob", name=name)
    assert session.scalars(select(Tenant.slug)).all() == ["acme"]
    rename_tenant(session, "acme", "  ")
    assert _row(session)[0] == "acme"  # no name: the slug, as at creation
