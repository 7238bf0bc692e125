"""API keys and the registry's rate counters, on SQLite and PostgreSQL: a key is shown once and
stored as its hash only; unknown, revoked and expired keys are refused; counts add up per window."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from orchestrator import errors
from orchestrator.registry.models import ApiKey, RateCounter
from orchestrator.services.keys import (
    TOUCH_EVERY,
    authenticate,
    create_key,
    create_operator_key,
    key_dict,
    list_keys,
    needs_touch,
    revoke_key,
    touch_key,
)
from orchestrator.services.rate_limits import counts, hit
from orchestrator.services.tenants import create_tenant

pytest_plugins = ["registry_fixtures"]


@pytest.fixture
def acme(session) -> str:
    create_tenant(session, "acme")
    create_tenant(session, "globex")
    return "acme"


def test_a_key_is_stored_as_its_hash_and_authenticates_as_its_tenant(session, acme):
    row, raw = create_key(session, acme, name="ci")
    assert raw.startswith("lf-") and len(raw) >= 3 + 43 and raw.startswith(row.prefix)
    stored = session.scalars(select(ApiKey)).one()
    assert stored.hash == hashlib.sha256(raw.encode()).hexdigest()
    assert raw not in {str(v) for v in vars(stored).values()} and raw not in str(key_dict(stored))
    who = authenticate(session, raw)
    assert (who.key_id, who.tenant_slug, who.operator) == (row.id, "acme", False)
    assert create_key(session, acme)[1] != raw  # every key fresh


def test_unknown_revoked_and_expired_keys_are_refused(session, acme):
    with pytest.raises(errors.Unauthenticated, match="unknown"):
        authenticate(session, "lf-" + "a" * 43)
    row, raw = create_key(session, acme, expires_days=30)
    assert row.expires_at - row.created_at == timedelta(days=30)
    with pytest.raises(errors.Unauthenticated, match="expired"):
        authenticate(session, raw, now=row.created_at + timedelta(days=30))
    authenticate(session, raw, now=row.created_at + timedelta(days=29))
    revoke_key(session, row.id[:8])  # a unique prefix names it, as job and adapter ids
    revoked_at = session.get(ApiKey, row.id).revoked_at
    session.rollback()
    revoke_key(session, row.id)  # again: nothing changes
    assert session.get(ApiKey, row.id).revoked_at == revoked_at
    session.rollback()
    with pytest.raises(errors.Unauthenticated, match="revoked"):
        authenticate(session, raw)
    with pytest.raises(errors.NotFound):
        revoke_key(session, "no-such-key")


def test_listing_shows_a_tenants_keys_only_and_never_a_secret(session, acme):
    mine, _ = create_key(session, acme, name="one")
    create_key(session, "globex")
    operator, raw = create_operator_key(session, name="ops")
    assert [k.id for k in list_keys(session, acme)] == [mine.id]
    assert [k.id for k in list_keys(session, None)] == [operator.id]
    assert set(key_dict(operator)) == {"id", "name", "prefix", "tenant_id", "created_at", "expires_at",
                                       "revoked_at", "last_used_at"}
    assert authenticate(session, raw).operator
    with pytest.raises(errors.NotFound):
        list_keys(session, "nobody")


@pytest.mark.parametrize("days", [0, -1, 3651, True, 1.5])
def test_expiry_must_be_a_whole_number_of_days(session, acme, days):
    with pytest.raises(errors.InvalidInput, match="expires"):
        create_key(session, acme, expires_days=days)
    assert session.scalars(select(ApiKey)).all() == []


def test_names_follow_the_display_name_rule(session, acme):
    with pytest.raises(errors.InvalidInput, match="line break"):
        create_key(session, acme, name="a\nb")


def test_last_use_is_recorded_at_most_once_a_minute(session, acme):
    row, raw = create_key(session, acme)
    who = authenticate(session, raw)
    now = datetime.now(UTC)
    assert needs_touch(who, now)
    touch_key(session, row.id, now)
    who = authenticate(session, raw)
    assert not needs_touch(who, now + TOUCH_EVERY / 2) and needs_touch(who, now + TOUCH_EVERY)


def test_rate_counters_add_up_per_bucket_and_window_and_old_windows_go(session):
    start = datetime(2026, 12, 7, 10, 0, tzinfo=UTC)
    later = start + timedelta(minutes=1)
    assert [hit(session, "key:a", start, later) for _ in range(3)] == [1, 2, 3]
    assert hit(session, "key:b", start, later) == 1
    assert counts(session, [("key:a", start), ("key:b", start), ("key:a", later)]) == [3, 1, 0]
    # A bucket's next window deletes the windows past their expiry.
    assert hit(session, "key:a", later + timedelta(minutes=5), later + timedelta(minutes=6)) == 1
    assert session.scalars(select(RateCounter.bucket)).all() == ["key:a"]
