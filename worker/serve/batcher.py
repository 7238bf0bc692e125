"""The batching window: every engine call runs on one thread, fed by a queue.

A request (`Work`) is put on the queue and its future awaited. The thread takes the first waiting
request, waits at most `window_s` for others (up to `max_batch`), and runs them together:
`run(batch)` sets each one's result or exception. With the batched engine requests for several
adapters share one forward pass; with `PredictorEngine` they are served in one call each way.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

STOP = object()


@dataclass
class Work:
    kind: str  # "classify" | "generate"
    payload: Any
    future: Future = field(default_factory=Future)


class Batcher:
    def __init__(self, run: Callable[[list[Work]], None], *, window_s: float, max_batch: int):
        self.run, self.window_s, self.max_batch = run, window_s, max_batch
        self.queue: queue.Queue = queue.Queue()
        self.thread = threading.Thread(target=self._loop, name="lorafleet-serve-engine", daemon=True)
        self.thread.start()

    async def submit(self, kind: str, payload: Any) -> Any:
        work = Work(kind, payload)
        self.queue.put(work)
        return await asyncio.wrap_future(work.future)

    def close(self) -> None:
        self.queue.put(STOP)
        self.thread.join(timeout=30)

    def _loop(self) -> None:
        while True:
            first = self.queue.get()
            if first is STOP:
                return
            batch = [first]
            deadline = time.monotonic() + self.window_s
            stopping = False
            while len(batch) < self.max_batch:
                left = deadline - time.monotonic()
                try:
                    more = self.queue.get(timeout=left) if left > 0 else self.queue.get_nowait()
                except queue.Empty:
                    break
                if more is STOP:
                    stopping = True
                    break
                batch.append(more)
            try:
                self.run(batch)
            except BaseException as exc:  # never leave a request waiting forever
                for work in batch:
                    if not work.future.done():
                        work.future.set_exception(exc)
            if stopping:
                return
