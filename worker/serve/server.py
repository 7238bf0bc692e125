"""The serving core: requests in, engine work out, each request's cost measured.

`Serving.classify` / `Serving.generate` are awaited by the routes; the work runs on the batcher's
engine thread (batcher.py: continuous batching), which calls the `Core` methods below:

- a request's adapter is made resident first (cache.py, verified against the registry as the
  requesting tenant); adapters with rows decoding are pinned, never evicted under them;
- a classify batch is one engine call, its device time split between its requests by tokens;
- a generation request (`Generation`) is one row per choice (n), started into the decode batch;
  after each decode step every row's new tokens become text (rows.py: stop strings end the row
  there and then), sent to the request as it comes when it streams, else gathered until its
  last row ends. A step's device time is split between its rows by the tokens each fed (1 while
  decoding; its prompt on the step it joined).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from orchestrator.config import Settings
from orchestrator.services.inference import ServedAdapter
from worker.serve.batcher import Batcher, Work
from worker.serve.cache import AdapterCache
from worker.serve.engine import Advance, ClassifyResult, Engine, GenerateItem, Sampling
from worker.serve.metrics import instruments
from worker.serve.prompts import adapter_info, apply_template, last_user_message
from worker.serve.rows import RowText

BASE_PREFIX = "base:"  # the engine key of a base model served alone (never an adapter id: a UUID)


def base_target(name: str, tenant_id: str) -> ServedAdapter:
    """A request for base model `name` (one the tenant may use), in the shape of an adapter's."""
    return ServedAdapter(id=BASE_PREFIX + name, tenant_id=tenant_id, name=name, path="", sha256="", bytes=0,
                         base_model=name, task="", chat=True, created_at=0)


def is_base(adapter: ServedAdapter) -> bool:
    return adapter.id.startswith(BASE_PREFIX)


@dataclass(frozen=True)
class ClassifyJob:
    adapter: ServedAdapter
    tenant: str
    texts: tuple[str, ...]


@dataclass(frozen=True)
class GenerateJob:
    adapter: ServedAdapter
    tenant: str
    messages: tuple[dict, ...] | None  # a chat request; else `prompt`
    prompt: str | None
    samplings: tuple[Sampling, ...]  # one per choice (n)
    stops: tuple[str, ...] = ()


@dataclass(frozen=True)
class Served:
    outputs: list
    device_seconds: float


@dataclass(frozen=True)
class Choice:
    text: str
    finish_reason: str  # "stop" (end of sequence or a stop string), "length"; "cancelled": client gone
    completion_tokens: int


@dataclass(frozen=True)
class Generated:
    choices: list[Choice]
    prompt_tokens: int
    device_seconds: float


class Generation:
    """One generation request's rows, seen from both sides: the engine thread reports (`report`),
    the route reads `events()` on its event loop: ("text", choice, piece) as text is released
    (streaming requests only), ("end", choice, finish reason), then ("done", Generated)."""

    def __init__(self, job: GenerateJob, *, stream: bool):
        self.job, self.stream = job, stream
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue = asyncio.Queue()
        self.work = Work("generate", self, rows=len(job.samplings))
        # the engine thread's side
        self.texts: list[RowText] = []
        self.reasons: list[str] = ["cancelled"] * len(job.samplings)
        self.tokens = [0] * len(job.samplings)
        self.prompt_tokens = 0
        self.device_seconds = 0.0
        self.open = 0

    def report(self, *event) -> None:
        """From the engine thread: an event for the route."""
        with contextlib.suppress(RuntimeError):  # a closed loop (the server stopped): nobody listens
            self.loop.call_soon_threadsafe(self.queue.put_nowait, event)

    def summary(self) -> Generated:
        return Generated([Choice(t.text, r, n) for t, r, n in zip(self.texts, self.reasons, self.tokens,
                                                                  strict=True)],
                         self.prompt_tokens, self.device_seconds)

    async def events(self) -> AsyncIterator[tuple]:
        while True:
            event = await self.queue.get()
            if event[0] == "error":
                raise event[1]
            yield event
            if event[0] == "done":
                return

    async def result(self) -> Generated:
        async for event in self.events():
            if event[0] == "done":
                return event[1]
        raise AssertionError("a generation ends with done")


@dataclass(eq=False)
class Row:
    generation: Generation
    choice: int
    adapter: str
    text: RowText
    weight: int  # tokens it feeds the next step: its prompt until its first step, then 1


class Serving:
    def __init__(self, engine: Engine, settings: Settings):
        self.engine, self.settings = engine, settings
        self.cache = AdapterCache(engine, settings.serve_adapter_cache_bytes)
        self.bases: set[str] = set()  # one resident copy each, outside the adapters' bound
        self.decoding: dict[int, Row] = {}  # engine handle -> row
        self.busy: Counter[str] = Counter()  # adapter key -> its rows decoding
        self.batcher = Batcher(self, window_s=settings.serve_batch_window_ms / 1000,
                               max_batch=settings.serve_batch_max)

    async def classify(self, job: ClassifyJob) -> Served:
        return await self.batcher.submit(Work("classify", job))

    async def generate(self, job: GenerateJob, *, stream: bool = False) -> Generation:
        """The request's rows started (a refusal raises here, before anything is answered)."""
        generation = Generation(job, stream=stream)
        await self.batcher.submit(generation.work)
        return generation

    def cancel(self, generation: Generation) -> None:
        """Its client is gone: its rows leave the batch at the next step."""
        self.batcher.cancel(generation.work)

    def close(self) -> None:
        self.batcher.close()

    # ---- the engine thread (batcher.Core) -----------------------------------------------------

    @property
    def rows(self) -> int:
        return len(self.decoding)

    def classify_batch(self, works: list[Work]) -> None:
        """Every adapter of the batch made resident (pinned: none of them evicts another, nor one
        that rows decode with), then one engine call with every request, whatever its adapter."""
        instruments()["batch"].observe(len(works))
        pinned = set(self.busy)
        ready: list[Work] = []
        for work in works:
            try:
                self._resident(work.payload, pinned)
            except BaseException as exc:
                work.future.set_exception(exc)
                continue
            pinned.add(work.payload.adapter.id)
            ready.append(work)
        if ready:
            self._together(ready)

    def _together(self, works: list[Work]) -> None:
        """The works classified together; when that fails, each again alone, so one request's
        error is its own and never its neighbours'."""
        try:
            self._classify(works)
        except BaseException as exc:
            if len(works) == 1:
                if not works[0].future.done():
                    works[0].future.set_exception(exc)
                return
            for work in works:
                if not work.future.done():
                    self._together([work])

    def admit(self, work: Work) -> None:
        generation: Generation = work.payload
        job = generation.job
        self._resident(job, set(self.busy))
        prompt = self._prompt(job)
        handles: list[int] = []
        start = time.perf_counter()
        try:
            for sampling in job.samplings:
                started = self.engine.start(GenerateItem(job.adapter.id, prompt, sampling))
                handles.append(started.handle)
        except BaseException:
            for handle in handles:
                self.engine.cancel(handle)
            raise
        generation.device_seconds += time.perf_counter() - start
        generation.prompt_tokens = started.prompt_tokens
        tokenizer = self.engine.tokenizer(job.adapter.id)
        for choice, handle in enumerate(handles):
            self.decoding[handle] = Row(generation, choice, job.adapter.id, RowText(tokenizer, job.stops),
                                        started.prompt_tokens)
            generation.texts.append(self.decoding[handle].text)
            self.busy[job.adapter.id] += 1
        generation.open = len(handles)
        instruments()["rows"].set(len(self.decoding))
        work.future.set_result(None)

    def step(self) -> None:
        instruments()["decode_rows"].observe(len(self.decoding))
        start = time.perf_counter()
        advanced: dict[int, Advance] = self.engine.step()
        elapsed = time.perf_counter() - start
        total = sum(row.weight for row in self.decoding.values()) or 1
        for row in self.decoding.values():
            row.generation.device_seconds += elapsed * row.weight / total
            row.weight = 1
        for handle, advance in advanced.items():
            row = self.decoding.get(handle)
            if row is None:
                continue
            generation = row.generation
            generation.tokens[row.choice] += len(advance.ids)
            piece = row.text.add(advance.ids)
            finished, reason = advance.finished, advance.reason
            if row.text.stopped:
                if not finished:
                    self.engine.cancel(handle)  # it leaves the batch now
                finished, reason = True, "stop"
            if finished:
                piece += row.text.finish()
            if piece and generation.stream:
                generation.report("text", row.choice, piece)
            if finished:
                self._end(handle, reason or "stop")
        instruments()["rows"].set(len(self.decoding))

    def cancel_work(self, work: Work) -> None:
        generation: Generation = work.payload
        for handle in [h for h, row in self.decoding.items() if row.generation is generation]:
            self.engine.cancel(handle)
            instruments()["cancelled"].inc()
            self._end(handle, "cancelled")
        instruments()["rows"].set(len(self.decoding))

    def close_all(self, exc: BaseException) -> None:
        for handle in list(self.decoding):
            row = self.decoding.pop(handle)
            self.engine.cancel(handle)
            self.busy[row.adapter] -= 1
            row.generation.report("error", exc)
        self.busy = +self.busy
        instruments()["rows"].set(0)

    def _end(self, handle: int, reason: str) -> None:
        row = self.decoding.pop(handle)
        self.busy[row.adapter] -= 1
        if not self.busy[row.adapter]:
            del self.busy[row.adapter]
        generation = row.generation
        generation.reasons[row.choice] = reason
        generation.open -= 1
        if generation.stream:
            generation.report("end", row.choice, reason)
        if not generation.open:
            generation.report("done", generation.summary())

    def _resident(self, job: ClassifyJob | GenerateJob, pinned: set[str]) -> None:
        from orchestrator.registry.db import session_scope
        from orchestrator.services.inference import verified_served

        if is_base(job.adapter):
            if job.adapter.id not in self.bases:
                self.engine.add_base(job.adapter.id, job.adapter.base_model)
                self.bases.add(job.adapter.id)
            return

        def load() -> str:
            with session_scope(self.settings) as session:
                return verified_served(session, job.adapter.id, job.tenant).path

        self.cache.ensure(job.adapter.id, job.adapter.sha256, load, pinned)

    def _classify(self, works: Sequence[Work]) -> None:
        items = [(w.payload.adapter.id, text) for w in works for text in w.payload.texts]
        start = time.perf_counter()
        results: list[ClassifyResult] = self.engine.classify(items)
        elapsed = time.perf_counter() - start
        total = sum(r.tokens for r in results) or 1
        at = 0
        for w in works:
            mine = results[at:at + len(w.payload.texts)]
            at += len(mine)
            w.future.set_result(Served(mine, elapsed * sum(r.tokens for r in mine) / total))

    def _prompt(self, job: GenerateJob) -> str:
        if job.messages is not None and job.adapter.chat:
            return self.engine.chat_prompt(job.adapter.id, job.messages)
        text = last_user_message(job.messages) if job.messages is not None else job.prompt
        if is_base(job.adapter):
            return text or ""
        return apply_template(adapter_info(job.adapter.path, job.adapter.sha256).prompt_template, text or "")
