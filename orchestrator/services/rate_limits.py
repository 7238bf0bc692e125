"""Counts per (bucket, fixed window) in the registry: the API's rate limits where there is no Redis.

Every API process of one registry sees the same counts (the embedded mode may run several
uvicorn workers). One upsert per count: `INSERT … ON CONFLICT DO UPDATE … RETURNING`, which both
SQLite and PostgreSQL run atomically, so two processes never lose an increment. Windows past
their expiry are deleted when a bucket opens a new window.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import and_, delete, or_, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from orchestrator.registry.models import RateCounter
from orchestrator.services._tx import readonly, transactional


@transactional
def hit(session: Session, bucket: str, window_start: datetime, expires_at: datetime) -> int:
    """Count one more in (bucket, window_start); the count after this one."""
    insert = pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
    statement = (insert(RateCounter)
                 .values(bucket=bucket, window_start=window_start, count=1, expires_at=expires_at)
                 .on_conflict_do_update(index_elements=["bucket", "window_start"],
                                        set_={"count": RateCounter.count + 1})
                 .returning(RateCounter.count))
    count = session.execute(statement).scalar_one()
    if count == 1:
        session.execute(delete(RateCounter).where(RateCounter.expires_at < window_start))
    return count


@readonly
def counts(session: Session, windows: Sequence[tuple[str, datetime]]) -> list[int]:
    """The counts of these (bucket, window_start) pairs, 0 where nothing was counted."""
    if not windows:
        return []
    rows = session.execute(select(RateCounter.bucket, RateCounter.window_start, RateCounter.count)
                           .where(or_(*(and_(RateCounter.bucket == bucket, RateCounter.window_start == start)
                                       for bucket, start in windows))))
    found = {(bucket, start.timestamp()): count for bucket, start, count in rows}
    return [found.get((bucket, start.timestamp()), 0) for bucket, start in windows]
