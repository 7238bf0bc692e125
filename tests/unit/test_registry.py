"""Registry basics on SQLite and PostgreSQL: timestamps, constraints, engines, tenant isolation."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import IntegrityError, StatementError

from orchestrator.registry import db
from orchestrator.registry import repositories as repo
from orchestrator.registry.models import Job, Tenant

pytest_plugins = ["registry_fixtures"]


def _tenant(session, slug: str, max_running: int = 2) -> Tenant:
    t = Tenant(slug=slug, name=slug, max_running=max_running)
    session.add(t)
    session.commit()
    return t


def _job(session, tenant: Tenant, **kw) -> Job:
    job = Job(tenant_id=tenant.id, spec={"task": "sst2"}, task="sst2", method="lora", rank=4,
              base_model="tiny-bert", max_attempts=3, **kw)
    session.add(job)
    session.commit()
    return job


def test_timestamps_are_tz_aware_utc_after_a_round_trip(session_maker) -> None:
    with session_maker() as s:
        t = _tenant(s, "acme")
    with session_maker() as s:
        loaded = s.get(Tenant, t.id)
        assert loaded.created_at.tzinfo is not None
        assert loaded.created_at.utcoffset().total_seconds() == 0
        assert abs((datetime.now(UTC) - loaded.created_at).total_seconds()) < 60


def test_naive_datetimes_are_refused(session_maker) -> None:
    with session_maker() as s:
        s.add(Tenant(slug="naive", name="n", max_running=1, created_at=datetime(2026, 1, 1)))
        with pytest.raises(StatementError, match="tz-aware"):
            s.commit()


def test_constraints_hold(session_maker) -> None:
    with session_maker() as s:
        t = _tenant(s, "acme")
        s.add(Tenant(slug="acme", name="again", max_running=1))
        with pytest.raises(IntegrityError):
            s.commit()
        s.rollback()
        with pytest.raises(IntegrityError):  # check constraint on state
            _job(s, t, state="exploded")
        s.rollback()
        with pytest.raises(IntegrityError):  # foreign key to tenants (SQLite: foreign_keys=ON)
            s.add(Job(tenant_id="00000000-0000-0000-0000-000000000000", spec={}, task="sst2",
                      method="lora", rank=4, base_model="tiny-bert", max_attempts=3))
            s.commit()


def test_relationships_never_lazy_load(session_maker) -> None:
    with session_maker() as s:
        t = _tenant(s, "acme")
        job = _job(s, t)
    with session_maker() as s:
        loaded = s.get(Job, job.id)
        with pytest.raises(Exception, match="lazy='raise'"):
            _ = loaded.tenant


def test_repositories_filter_by_tenant(session_maker) -> None:
    with session_maker() as s:
        a, b = _tenant(s, "tenant-a"), _tenant(s, "tenant-b")
        ja, jb = _job(s, a), _job(s, b)
        assert repo.job(s, ja.id, tenant_id=a.id) is not None
        assert repo.job(s, ja.id, tenant_id=b.id) is None  # another tenant's job is not found
        assert repo.job(s, ja.id) is not None  # operator view: all tenants
        assert [j.id for j in repo.jobs(s, tenant_id=b.id)] == [jb.id]
        assert {j.id for j in repo.jobs(s)} == {ja.id, jb.id}
        assert repo.job_state_counts(s, tenant_id=a.id) == {(a.id, "queued"): 1}


def test_sqlite_connections_use_wal_busy_timeout_and_foreign_keys(tmp_path) -> None:
    engine = db.make_engine(f"sqlite:///{tmp_path / 'x.db'}")
    try:
        with engine.connect() as conn:
            assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
            assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
            assert conn.execute(text("PRAGMA busy_timeout")).scalar() == db.SQLITE_BUSY_TIMEOUT_MS
    finally:
        engine.dispose()


def test_postgres_urls_use_psycopg3() -> None:
    assert db.normalize_url("postgresql://u@h/d") == "postgresql+psycopg://u@h/d"
    assert db.normalize_url("postgres://u@h/d") == "postgresql+psycopg://u@h/d"
    assert db.normalize_url("sqlite:///x.db") == "sqlite:///x.db"


def test_embedded_registry_is_created_and_migrated_on_first_use(tmp_path) -> None:
    from orchestrator.config import load_settings

    settings = load_settings({"LORAFLEET_HOME": str(tmp_path / "fresh")})
    assert not (tmp_path / "fresh").exists()
    try:
        with db.session_scope(settings) as s:
            assert s.scalars(select(Tenant)).all() == []
        assert db.current_revision(settings.database_url) == db.head_revision()
    finally:
        db.forget_engine(settings.database_url)


@pytest.mark.parametrize("empty_registry_url", ["postgresql"], indirect=True)
def test_postgres_registry_behind_head_is_refused(empty_registry_url) -> None:
    from orchestrator.config import load_settings

    settings = load_settings({"LORAFLEET_DATABASE_URL": empty_registry_url})
    with pytest.raises(db.SchemaOutOfDate, match="lorafleet db upgrade"):
        db.ensure_schema(settings)



def test_concurrent_first_use_migrates_once(tmp_path) -> None:
    """Several processes opening a fresh embedded registry together: one migrates, none fails."""
    import subprocess
    import sys

    code = (
        "from orchestrator.config import load_settings\n"
        "from orchestrator.registry import db\n"
        f"db.ensure_schema(load_settings({{'LORAFLEET_HOME': {str(tmp_path / 'shared')!r}}}))\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", code], cwd=db.MIGRATIONS_DIR.parent,
                              stderr=subprocess.PIPE, text=True) for _ in range(3)]
    errors = [p.communicate(timeout=60)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], errors
    assert db.current_revision(f"sqlite:///{tmp_path / 'shared' / 'registry.db'}") == db.head_revision()


def test_dispose_engines_after_fork_gives_fresh_engines(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'x.db'}"
    first = db.get_engine(url)
    assert db.get_engine(url) is first
    db.dispose_engines()
    second = db.get_engine(url)
    assert second is not first
    db.forget_engine(url)


def test_sqlite_readers_do_not_wait_for_a_writer(tmp_path) -> None:
    """Writes take the lock up front (BEGIN IMMEDIATE); read-only services begin DEFERRED and
    read the last committed state while another process holds the write lock."""
    import threading

    from orchestrator.services.tenants import create_tenant, list_tenants

    url = f"sqlite:///{tmp_path / 'r.db'}"
    db.upgrade(url)
    writer_engine = db.make_engine(url)
    try:
        with db.session_factory(url)() as s:
            create_tenant(s, "committed")
        with writer_engine.connect() as writer:
            writer.begin()  # BEGIN IMMEDIATE: holds the write lock
            writer.execute(text("INSERT INTO tenants (id, slug, name, max_running, created_at) "
                                "VALUES ('x', 'uncommitted', 'u', 1, '2026-01-01 00:00:00')"))
            seen: list[list[str]] = []
            reader = threading.Thread(
                target=lambda: seen.append([t.slug for t in list_tenants(db.session_factory(url)())])
            )
            reader.start()
            reader.join(5)
            assert seen == [["committed"]]  # answered at once, without the uncommitted row
    finally:
        writer_engine.dispose()
        db.forget_engine(url)
