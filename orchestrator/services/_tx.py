"""One service call = one transaction: commit on success, roll back on any error.

Read-only services end their transaction too (a session left inside a transaction holds
SQLite's lock or a PostgreSQL snapshot), and on SQLite they begin it DEFERRED instead of
IMMEDIATE, so readers never wait for the single writer (WAL). Objects a service returns are
snapshots detached at the start of the next service call on the same session.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from sqlalchemy.orm import Session

from orchestrator.registry.db import READONLY_OPTION

P = ParamSpec("P")
R = TypeVar("R")


def _wrap(fn: Callable[P, R], readonly: bool) -> Callable[P, R]:
    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        session = args[0]
        if not isinstance(session, Session):
            raise TypeError(f"{fn.__name__}: first argument must be a Session, got {type(session).__name__}")
        if not session.in_transaction():
            # Rows returned by earlier calls become detached snapshots (still readable, never
            # refreshed behind the caller's back), and this call loads fresh rows, not the
            # identity map's stale copies.
            session.expunge_all()
            if readonly:
                session.connection(execution_options={READONLY_OPTION: True})
        try:
            result = fn(*args, **kwargs)
            session.commit()
            return result
        except BaseException:
            session.rollback()
            raise

    return wrapper


def transactional(fn: Callable[P, R]) -> Callable[P, R]:
    """A writing service whose first argument is the Session."""
    return _wrap(fn, readonly=False)


def readonly(fn: Callable[P, R]) -> Callable[P, R]:
    """A reading service whose first argument is the Session."""
    return _wrap(fn, readonly=True)
