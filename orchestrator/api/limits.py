"""The API's rate limits: requests per key per minute, and failed authentications per address.

Counted in fixed windows where every API process sees them: Redis when the broker is Redis (the
cluster mode: one INCR per request), else the registry (orchestrator/services/rate_limits.py).
An address whose failed authentications pass the limit within a window gets 429 for every
request until the window after it ends (one to two windows); a key over its per-minute limit
gets 429 until its minute ends. Both answers carry `retry-after` (seconds).
If the counter store fails, the request is let through (and logged): a limit must not take the
API down with it.

`ProcessLimiter` is for a server that runs as one process (`lorafleet serve`): without Redis it
counts in its memory rather than the registry (no row written per request), so its limits are
its own: a key may make its per-minute requests to the API and as many again to this server.
With Redis it shares the API's counters.
"""

from __future__ import annotations

import math
import threading
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from orchestrator.api.errors import ApiError, log
from orchestrator.config import Settings

if TYPE_CHECKING:
    from fastapi import FastAPI
    from sqlalchemy.orm import Session

KEY_WINDOW_S = 60
REDIS_SCHEMES = ("redis://", "rediss://")
REDIS_PREFIX = "lorafleet:api:rate:"


class Limiter:
    """The counters of one API process (see the module docstring)."""

    def __init__(self, settings: Settings):
        self.per_minute = settings.api_rate_limit_per_minute
        self.fail_limit = settings.api_auth_failure_limit
        self.fail_window = settings.api_auth_failure_window_s
        self.redis: Any = None
        if settings.broker_url.startswith(REDIS_SCHEMES):
            import redis

            self.redis = redis.Redis.from_url(settings.broker_url, socket_timeout=2, socket_connect_timeout=2)

    # ---- the two limits ------------------------------------------------------------------

    def check_address(self, session: Session, address: str, now: float | None = None) -> None:
        """429 while `address` is blocked for its failed authentications."""
        now = time.time() if now is None else now
        start = _window_start(now, self.fail_window)
        bucket = f"authfail:{address}"
        current, previous = self._peek(session, [(bucket, start), (bucket, start - self.fail_window)])
        if current > self.fail_limit:
            until = start + 2 * self.fail_window
        elif previous > self.fail_limit:
            until = start + self.fail_window
        else:
            return
        raise ApiError(429, f"too many failed authentications from this address (more than {self.fail_limit} "
                            f"in {self.fail_window} s); try again in {_seconds(until - now)} s",
                       type="requests", code="rate_limit_exceeded",
                       headers={"retry-after": str(_seconds(until - now))})

    def failed(self, session: Session, address: str, now: float | None = None) -> None:
        """Count a failed authentication of `address`."""
        now = time.time() if now is None else now
        self._hit(session, f"authfail:{address}", _window_start(now, self.fail_window), self.fail_window)

    def count_request(self, session: Session, key_id: str, now: float | None = None) -> None:
        """Count a request of key `key_id`; 429 once it is over its limit this minute."""
        now = time.time() if now is None else now
        start = _window_start(now, KEY_WINDOW_S)
        count = self._hit(session, f"key:{key_id}", start, KEY_WINDOW_S)
        if count > self.per_minute:
            wait = _seconds(start + KEY_WINDOW_S - now)
            raise ApiError(429, f"rate limit reached: {self.per_minute} requests per minute per API key; "
                                f"try again in {wait} s", type="requests", code="rate_limit_exceeded",
                           headers={"retry-after": str(wait)})

    # ---- the stores ----------------------------------------------------------------------

    def _hit(self, session: Session, bucket: str, start: int, window: int) -> int:
        try:
            if self.redis is not None:
                name = f"{REDIS_PREFIX}{bucket}:{start}"
                pipe = self.redis.pipeline()
                pipe.incr(name)
                pipe.expire(name, 2 * window + 5)
                return int(pipe.execute()[0])
            from orchestrator.services.rate_limits import hit

            return hit(session, bucket, _datetime(start), _datetime(start + 2 * window))
        except Exception as exc:
            log.warning("rate limit counter unavailable (%s: %s); request let through",
                        type(exc).__name__, str(exc)[:200])
            return 0

    def _peek(self, session: Session, windows: list[tuple[str, int]]) -> list[int]:
        try:
            if self.redis is not None:
                values = self.redis.mget([f"{REDIS_PREFIX}{bucket}:{start}" for bucket, start in windows])
                return [int(v or 0) for v in values]
            from orchestrator.services.rate_limits import counts

            return counts(session, [(bucket, _datetime(start)) for bucket, start in windows])
        except Exception as exc:
            log.warning("rate limit counter unavailable (%s: %s); request let through",
                        type(exc).__name__, str(exc)[:200])
            return [0] * len(windows)


class ProcessLimiter(Limiter):
    """The same limits counted in this process's memory when there is no Redis (module docstring)."""

    def __init__(self, settings: Settings):
        super().__init__(settings)
        self.counts: dict[tuple[str, int], tuple[int, int]] = {}  # (bucket, start) -> (count, expiry)
        self.lock = threading.Lock()  # the routes' dependencies run in a thread pool
        self.pruned = 0  # the latest window start the expired counts were dropped at

    def _hit(self, session: Session, bucket: str, start: int, window: int) -> int:
        if self.redis is not None:
            return super()._hit(session, bucket, start, window)
        with self.lock:
            count = self.counts.get((bucket, start), (0, 0))[0] + 1
            if start > self.pruned:  # a later window: the expired go (once per window start, not per bucket)
                self.counts = {k: v for k, v in self.counts.items() if v[1] >= start}
                self.pruned = start
            self.counts[(bucket, start)] = (count, start + 2 * window)
            return count

    def _peek(self, session: Session, windows: list[tuple[str, int]]) -> list[int]:
        if self.redis is not None:
            return super()._peek(session, windows)
        with self.lock:
            return [self.counts.get(w, (0, 0))[0] for w in windows]


def _window_start(now: float, window: int) -> int:
    return int(now // window) * window


def _datetime(epoch: int) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


def _seconds(value: float) -> int:
    return max(1, math.ceil(value))


def limiter(app: FastAPI) -> Limiter:
    return app.state.limiter
