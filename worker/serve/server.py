"""The serving core: requests in, engine batches out, each request's cost measured.

`Serving.classify` / `Serving.generate` are awaited by the routes; the work runs on the batcher's
engine thread (`run`): each adapter of the batch is made resident (cache.py, verified against the
registry as the requesting tenant) and its requests go to the engine in one call; the call's
device time is split between its requests by tokens.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from orchestrator.config import Settings
from orchestrator.services.inference import ServedAdapter
from worker.serve.batcher import Batcher, Work
from worker.serve.cache import AdapterCache
from worker.serve.engine import ClassifyResult, Engine, Generated, GenerateItem, Sampling
from worker.serve.metrics import instruments
from worker.serve.prompts import adapter_info, apply_template, last_user_message

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


@dataclass(frozen=True)
class Served:
    outputs: list
    device_seconds: float


class Serving:
    def __init__(self, engine: Engine, settings: Settings):
        self.engine, self.settings = engine, settings
        self.cache = AdapterCache(engine, settings.serve_adapter_cache_bytes)
        self.bases: set[str] = set()  # one resident copy each, outside the adapters' bound
        self.batcher = Batcher(self.run, window_s=settings.serve_batch_window_ms / 1000,
                               max_batch=settings.serve_batch_max)

    async def classify(self, job: ClassifyJob) -> Served:
        return await self.batcher.submit("classify", job)

    async def generate(self, job: GenerateJob) -> Served:
        return await self.batcher.submit("generate", job)

    def close(self) -> None:
        self.batcher.close()

    # ---- the engine thread ------------------------------------------------------------------

    def run(self, batch: list[Work]) -> None:
        """Every adapter of the batch made resident (pinned: none of them evicts another), then
        one engine call per kind with every request, whatever its adapter."""
        instruments()["batch"].observe(len(batch))
        pinned: set[str] = set()
        ready: list[Work] = []
        for work in batch:
            try:
                self._resident(work.payload, pinned)
            except BaseException as exc:
                work.future.set_exception(exc)
                continue
            pinned.add(work.payload.adapter.id)
            ready.append(work)
        for kind, serve in (("classify", self._classify), ("generate", self._generate)):
            works = [w for w in ready if w.kind == kind]
            if works:
                self._together(serve, works)

    def _together(self, serve, works: list[Work]) -> None:
        """`serve(works)`; when that fails for a batch, each request again alone, so one request's
        error (a prompt too long for the model) is its own and never its neighbours'."""
        try:
            serve(works)
        except BaseException as exc:
            if len(works) == 1:
                if not works[0].future.done():
                    works[0].future.set_exception(exc)
                return
            for work in works:
                if not work.future.done():
                    self._together(serve, [work])

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

    def _generate(self, works: Sequence[Work]) -> None:
        items, owners = [], []
        for w in works:
            try:
                prompt = self._prompt(w.payload)
            except Exception as exc:
                w.future.set_exception(exc)
                continue
            for sampling in w.payload.samplings:
                items.append(GenerateItem(w.payload.adapter.id, prompt, sampling))
                owners.append(w)
        if not items:
            return
        start = time.perf_counter()
        results: list[Generated] = self.engine.generate(items)
        elapsed = time.perf_counter() - start
        tokens = [r.prompt_tokens + r.completion_tokens for r in results]
        total = sum(tokens) or 1
        mine: dict[int, list[int]] = {}
        for i, owner in enumerate(owners):
            mine.setdefault(id(owner), []).append(i)
        for w in works:
            if w.future.done():
                continue
            rows = mine[id(w)]
            share = elapsed * sum(tokens[i] for i in rows) / total
            w.future.set_result(Served([results[i] for i in rows], share))
