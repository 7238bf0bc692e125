"""A small dict whose entries are trusted `ttl_s` seconds from when they were put, bounded in
entries (the oldest go first past the bound): what the server keeps of the registry's answers
(auth.py's verified keys, lookup.py's adapter names). Thread-safe: the routes' dependencies run in
a thread pool."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable
from typing import Any

MAX_ENTRIES = 10_000


class TtlCache:
    def __init__(self, ttl_s: float, max_entries: int = MAX_ENTRIES,
                 clock: Callable[[], float] = time.monotonic):
        self.ttl_s, self.max_entries, self.clock = ttl_s, max_entries, clock
        self.held: dict[Hashable, tuple[Any, float]] = {}
        self.lock = threading.Lock()

    def get(self, key: Hashable) -> Any | None:
        with self.lock:
            found = self.held.get(key)
            if found is None:
                return None
            if self.clock() >= found[1]:
                del self.held[key]
                return None
            return found[0]

    def put(self, key: Hashable, value: Any) -> None:
        if self.ttl_s <= 0:
            return
        with self.lock:
            now = self.clock()
            if len(self.held) >= self.max_entries:
                self.held = {k: v for k, v in self.held.items() if v[1] > now}
                while len(self.held) >= self.max_entries:
                    del self.held[next(iter(self.held))]
            self.held[key] = (value, now + self.ttl_s)

    def drop(self, key: Hashable) -> None:
        with self.lock:
            self.held.pop(key, None)
