"""Continuous batching: one engine thread serves every request, between decode steps.

Requests (`Work`) and cancels reach the thread through one queue. The thread loops:

    idle (nothing decoding)   wait for a request, then at most `window_s` for company
                              (up to `max_batch` requests)
    decoding                  take whatever arrived since the last step, without waiting
    then                      cancels: the requests' rows leave the batch now
                              classify requests: one forward per `max_batch` of them, now
                              (between two decode steps: a classify never waits for a generation)
                              generation requests: started, in arrival order, while the rows
                              decoding stay within `max_batch` (a request of n choices is n rows;
                              one that alone passes the cap runs when the batch is empty)
                              one decode step of every row; finished rows leave and answer

What serving a request means is `Core`'s (server.py): the adapters made resident, prompts,
the rows' text and answers. Nothing here waits on a timer while rows decode.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Protocol

from worker.serve.metrics import instruments

STOP = object()


@dataclass(eq=False)
class Work:
    kind: str  # "classify" | "generate"
    payload: Any
    rows: int = 1  # decode rows a generation takes (its n)
    future: Future = field(default_factory=Future)  # classify: the answer; generate: admission


@dataclass(frozen=True)
class Cancel:
    work: Work


class Core(Protocol):
    rows: int  # rows decoding (or started, waiting for their first step)

    def classify_batch(self, works: list[Work]) -> None: ...

    def admit(self, work: Work) -> None:
        """Start the request's rows (raises when it is refused: the request fails alone)."""

    def step(self) -> None: ...

    def cancel_work(self, work: Work) -> None:
        """The request's client is gone: its rows (if any) leave now."""

    def close_all(self, exc: BaseException) -> None:
        """The server stops: every request still held fails with `exc`."""


class Batcher:
    def __init__(self, core: Core, *, window_s: float, max_batch: int):
        self.core, self.window_s, self.max_batch = core, window_s, max_batch
        self.queue: queue.Queue = queue.Queue()
        self.waiting: deque[Work] = deque()  # generation requests not yet started (the cap)
        self.thread = threading.Thread(target=self._loop, name="lorafleet-serve-engine", daemon=True)
        self.thread.start()

    async def submit(self, work: Work) -> Any:
        """Queue `work`; its future's result (classify: the answer, generate: its admission)."""
        self.queue.put(work)
        return await asyncio.wrap_future(work.future)

    def cancel(self, work: Work) -> None:
        self.queue.put(Cancel(work))

    def close(self) -> None:
        self.queue.put(STOP)
        self.thread.join(timeout=30)

    def _loop(self) -> None:
        while True:
            arrived = list(self._arrivals(idle=not self.core.rows and not self.waiting))
            stopping = STOP in arrived
            try:
                self._serve([m for m in arrived if m is not STOP])
            except BaseException as exc:  # never leave a request waiting forever
                self.core.close_all(exc)
                for work in self.waiting:
                    if not work.future.done():
                        work.future.set_exception(exc)
                self.waiting.clear()
            if stopping:
                self.core.close_all(RuntimeError("the server is stopping"))
                for work in self.waiting:
                    if not work.future.done():
                        work.future.set_exception(RuntimeError("the server is stopping"))
                return

    def _arrivals(self, *, idle: bool) -> Iterator[Any]:
        """Idle: the first request, then those arriving within the window (up to the cap).
        Busy: what is queued now."""
        if not idle:
            while True:
                try:
                    yield self.queue.get_nowait()
                except queue.Empty:
                    return
        first = self.queue.get()
        yield first
        if first is STOP:
            return
        deadline, taken = time.monotonic() + self.window_s, 1
        while taken < self.max_batch:
            left = deadline - time.monotonic()
            try:
                more = self.queue.get(timeout=left) if left > 0 else self.queue.get_nowait()
            except queue.Empty:
                return
            yield more
            if more is STOP:
                return
            taken += isinstance(more, Work)

    def _serve(self, arrived: list[Any]) -> None:
        joined = instruments()["joined"]
        decoding = self.core.rows > 0
        for message in arrived:
            if isinstance(message, Cancel):
                if message.work in self.waiting:
                    self.waiting.remove(message.work)
                    message.work.future.cancel()
                else:
                    self.core.cancel_work(message.work)
        classify = [m for m in arrived if isinstance(m, Work) and m.kind == "classify"]
        for start in range(0, len(classify), self.max_batch):
            self.core.classify_batch(classify[start:start + self.max_batch])
        if decoding and classify:
            joined.labels("classify").inc(len(classify))
        self.waiting.extend(m for m in arrived if isinstance(m, Work) and m.kind == "generate")
        while self.waiting and self._room(self.waiting[0]):
            work = self.waiting.popleft()
            try:
                self.core.admit(work)
            except BaseException as exc:
                if not work.future.done():
                    work.future.set_exception(exc)
                continue
            if decoding:  # rows decoded before this request arrived: it joins their batch
                joined.labels("generate").inc()
        if self.core.rows:
            self.core.step()

    def _room(self, work: Work) -> bool:
        return not self.core.rows or self.core.rows + work.rows <= self.max_batch
