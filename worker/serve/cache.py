"""The adapters the engine holds: an LRU bounded in bytes (LORAFLEET_SERVE_ADAPTER_CACHE_BYTES).

An adapter is loaded on first use, after its files are hashed against the registry's sha256
(`services.inference.verified_served`, scoped to the requesting tenant), and stays until the
bytes of the loaded adapters pass the bound: the least recently used are removed from the engine
then, and loaded (verified) again on their next use. The adapter just loaded, and those `pinned`
by the batch being served, are never evicted: one adapter larger than the bound is still
served, alone, and one batch's adapters may pass the bound until the next load. A row whose
sha256 changed in the registry (the same id, other files) is reloaded. Only the engine thread
(batcher.py) calls it.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Collection

from worker.serve.engine import Engine
from worker.serve.metrics import instruments


class AdapterCache:
    def __init__(self, engine: Engine, max_bytes: int):
        self.engine, self.max_bytes = engine, max_bytes
        self.loaded: OrderedDict[str, tuple[str, int]] = OrderedDict()  # key -> (sha256, bytes)

    @property
    def bytes(self) -> int:
        return sum(size for _, size in self.loaded.values())

    def ensure(self, key: str, sha256: str, load: Callable[[], str],
               pinned: Collection[str] = ()) -> None:
        """Make `key` resident and most recently used; `load()` verifies and returns its folder."""
        held = self.loaded.get(key)
        if held is not None and held[0] == sha256:
            self.loaded.move_to_end(key)
            return
        if held is not None:
            self._evict(key)
        folder = load()
        size = self.engine.add_adapter(key, folder)
        self.loaded[key] = (sha256, size)
        instruments()["loads"].inc()
        for old in [k for k in self.loaded if k != key and k not in pinned]:  # least recent first
            if self.bytes <= self.max_bytes:
                break
            self._evict(old)
        self._report()

    def _evict(self, key: str) -> None:
        self.loaded.pop(key, None)
        self.engine.remove_adapter(key)
        instruments()["evictions"].inc()

    def _report(self) -> None:
        metrics = instruments()
        metrics["cached_bytes"].set(self.bytes)
        metrics["cached"].set(len(self.loaded))
