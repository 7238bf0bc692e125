"""The inference routes, as OpenAI (chat, completions, models) and vLLM/SGLang (classify) shape them.

Generation answers as the engine decodes: a stream sends each piece of text as soon as its token
is decoded (server-sent events, as the openai client reads them), and a stop string ends its row
in the batch when it appears. Every route authenticates with the tenants' keys
(`worker.serve.auth.serve_caller`); `model` names one of the caller's own live adapters by its
`ft:` name (lookup.py): another tenant's, a deleted one or an unknown name all answer 404 alike.
Each request's tokens and device-seconds are recorded for its tenant (usage.py: written in batches).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from orchestrator.api.auth import Caller
from orchestrator.api.deps import db_session
from orchestrator.api.errors import ApiError
from orchestrator.errors import NotFound
from orchestrator.services.base_models import base_problem, tenant_bases
from orchestrator.services.inference import ServedAdapter, served_adapters
from orchestrator.services.model_names import parse_model_name
from worker.serve.auth import serve_caller
from worker.serve.engine import Sampling
from worker.serve.metrics import instruments
from worker.serve.prompts import adapter_info
from worker.serve.schemas import (
    MAX_INPUTS,
    MAX_STOPS,
    ChatRequest,
    ClassifyRequest,
    CompletionRequest,
    Decoding,
)
from worker.serve.server import (
    ClassifyJob,
    Generated,
    GenerateJob,
    Generation,
    Serving,
    base_target,
    is_base,
)

router = APIRouter()
MAX_STOP_CHARS = 200
MAX_INPUT_CHARS = 100_000
DEFAULT_CHAT_TOKENS = 128


def serving(request: Request) -> Serving:
    return request.app.state.serving


def _base(request: Request, model: str, caller: Caller, kinds: Sequence[str], route: str
          ) -> ServedAdapter | None:
    """A base model the caller may use, served alone (generation only: a base's classifier head is
    untrained); None when `model` names no such base."""
    from lora_engine.model_ref import base_model_problem

    settings = request.app.state.settings
    if parse_model_name(model) is not None or base_problem(model, settings) is not None:
        return None
    if "generation" not in kinds:
        raise ApiError(400, f"{model[:200]!r} is a base model; {route} serves your fine-tuned classifiers "
                            "(ft: names)", param="model", code="wrong_model_kind")
    problem = base_model_problem(model, needs_causal=True)
    if problem:
        raise ApiError(400, f"{model[:200]!r} does not generate text ({problem})", param="model",
                       code="wrong_model_kind")
    return base_target(model, caller.tenant_id)


async def _adapter(session: Session, model: str, caller: Caller, kinds: Sequence[str], route: str,
                   request: Request) -> ServedAdapter:
    base = _base(request, model, caller, kinds, route)
    if base is not None:
        return base
    try:
        adapter = await run_in_threadpool(request.app.state.adapters.find, session, model, caller.tenant_id)
    except NotFound as exc:
        raise ApiError(404, str(exc), param="model", code="model_not_found") from None
    kind = adapter_info(adapter.path, adapter.sha256).kind
    if kind not in kinds:
        use = "/v1/classify" if kind != "generation" else "/v1/chat/completions or /v1/completions"
        raise ApiError(400, f"{model[:200]!r} is a {kind} model; {route} serves "
                            f"{' or '.join(kinds)} models (use {use})", param="model",
                       code="wrong_model_kind")
    return adapter


def _record(request: Request, caller: Caller, adapter: ServedAdapter, route: str, prompt_tokens: int,
            completion_tokens: int, device_seconds: float) -> None:
    """The request's usage, for its tenant (usage.py writes it with the next batch)."""
    tokens = instruments()["tokens"]
    tokens.labels("in").inc(prompt_tokens)
    tokens.labels("out").inc(completion_tokens)
    request.app.state.usage.add(caller.tenant_id, adapter_id=None if is_base(adapter) else adapter.id,
                                base_model=adapter.base_model, route=route, prompt_tokens=prompt_tokens,
                                completion_tokens=completion_tokens, device_seconds=device_seconds,
                                device=serving(request).engine.device_name)


def _samplings(body: Decoding, max_tokens: int | None, cap: int) -> tuple[Sampling, ...]:
    stops = body.stops()
    if len(stops) > MAX_STOPS or any(len(s) > MAX_STOP_CHARS for s in stops):
        raise ApiError(400, f"stop takes at most {MAX_STOPS} sequences of at most {MAX_STOP_CHARS} "
                            "characters", param="stop")
    # Unset: OpenAI's 16 for a completion; for a chat, a short answer that leaves a small model's
    # context room for the conversation (the cap when that is lower).
    tokens = max_tokens or min(16 if isinstance(body, CompletionRequest) else DEFAULT_CHAT_TOKENS, cap)
    if tokens > cap:
        raise ApiError(400, f"max_tokens is {tokens}; this server generates at most {cap} tokens per request "
                            "(LORAFLEET_SERVE_MAX_TOKENS)", param="max_tokens")
    if body.stream_options is not None and not body.stream:
        raise ApiError(400, "stream_options is only allowed with stream: true", param="stream_options")
    seeds = [None if body.seed is None else (body.seed + i) % 2**63 for i in range(body.n)]
    return tuple(Sampling(tokens, body.temperature, body.top_p, seed) for seed in seeds)


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


async def _start(body: ChatRequest | CompletionRequest, caller: Caller, session: Session, request: Request,
                 route: str) -> tuple[ServedAdapter, Generation]:
    """The request checked, its adapter found and its rows started (a refusal raises here)."""
    max_tokens = body.max_tokens
    if isinstance(body, ChatRequest):
        max_tokens = body.max_completion_tokens or max_tokens
    cap = request.app.state.settings.serve_max_tokens
    samplings = _samplings(body, max_tokens, cap)
    if isinstance(body, CompletionRequest) and len(body.prompt) > MAX_INPUT_CHARS:
        raise ApiError(400, f"prompt holds more than {MAX_INPUT_CHARS} characters", param="prompt")
    adapter = await _adapter(session, body.model, caller, ("generation",), route, request)
    messages = tuple(m.model_dump() for m in body.messages) if isinstance(body, ChatRequest) else None
    prompt = body.prompt if isinstance(body, CompletionRequest) else None
    job = GenerateJob(adapter, caller.tenant_slug, messages, prompt, samplings, tuple(body.stops()))
    return adapter, await serving(request).generate(job, stream=body.stream)


def _completed(generated: Generated) -> tuple[int, int]:
    return generated.prompt_tokens, sum(c.completion_tokens for c in generated.choices)


async def _answer(body: ChatRequest | CompletionRequest, caller: Caller, session: Session, request: Request,
                  route: str) -> Generated:
    adapter, generation = await _start(body, caller, session, request, route)
    generated = await generation.result()
    _record(request, caller, adapter, route, *_completed(generated), generated.device_seconds)
    return generated


def _stream(request: Request, caller: Caller, adapter: ServedAdapter, generation: Generation, route: str,
            chunk: Callable[[tuple], dict | None], usage_wanted: bool) -> StreamingResponse:
    """Server-sent events, one per piece of text as the engine releases it (`chunk` shapes an
    event as the route's object), then the usage if asked, then [DONE]. A client that goes away
    stops the stream: its rows leave the batch, and what they generated is still recorded."""

    async def events() -> AsyncIterator[str]:
        done = False
        try:
            async for event in generation.events():
                if event[0] == "done":
                    done = True
                    prompt, completion = _completed(event[1])
                    _record(request, caller, adapter, route, prompt, completion, event[1].device_seconds)
                    if usage_wanted:
                        yield _sse({**chunk(("usage",)), "choices": [], "usage": _usage(prompt, completion)})
                    break
                shaped = chunk(event)
                if shaped is not None:
                    yield _sse(shaped)
            yield "data: [DONE]\n\n"
        finally:
            if not done:
                serving(request).cancel(generation)
                _in_background(request, _record_when_done(request, caller, adapter, route, generation))

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"cache-control": "no-cache", "x-accel-buffering": "no"})


def _sse(chunk: dict) -> str:
    return f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"


def _in_background(request: Request, coroutine) -> None:
    tasks: set = request.app.state.background  # held: the loop keeps only weak references to tasks
    task = asyncio.get_running_loop().create_task(coroutine)
    tasks.add(task)
    task.add_done_callback(tasks.discard)


async def _record_when_done(request: Request, caller: Caller, adapter: ServedAdapter, route: str,
                            generation: Generation) -> None:
    try:
        generated = await generation.result()
    except Exception:  # the server stopped: nothing more to record
        return
    _record(request, caller, adapter, route, *_completed(generated), generated.device_seconds)


@router.post("/v1/chat/completions")
async def chat_completions(body: ChatRequest, request: Request, caller: Caller = Depends(serve_caller),
                           session: Session = Depends(db_session)) -> Any:
    """A chat completion from one of your adapters (`model`: its `ft:` name)."""
    ident, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
    base = {"id": ident, "object": "chat.completion.chunk", "created": created, "model": body.model}
    if not body.stream:
        generated = await _answer(body, caller, session, request, "chat.completions")
        return {"id": ident, "object": "chat.completion", "created": created, "model": body.model,
                "choices": [{"index": i, "message": {"role": "assistant", "content": c.text},
                             "finish_reason": c.finish_reason, "logprobs": None}
                            for i, c in enumerate(generated.choices)],
                "usage": _usage(*_completed(generated))}
    adapter, generation = await _start(body, caller, session, request, "chat.completions")
    spoken: set[int] = set()  # choices whose first chunk (the role) went out

    def chunk(event: tuple) -> dict | None:
        if event[0] == "usage":
            return base
        index = event[1]
        delta: dict[str, Any] = {} if index in spoken else {"role": "assistant"}
        spoken.add(index)
        if event[0] == "text":
            return {**base, "choices": [{"index": index, "delta": {**delta, "content": event[2]},
                                         "finish_reason": None, "logprobs": None}]}
        return {**base, "choices": [{"index": index, "delta": delta, "finish_reason": event[2],
                                     "logprobs": None}]}

    usage_wanted = body.stream_options is not None and body.stream_options.include_usage
    return _stream(request, caller, adapter, generation, "chat.completions", chunk, usage_wanted)


@router.post("/v1/completions")
async def completions(body: CompletionRequest, request: Request, caller: Caller = Depends(serve_caller),
                      session: Session = Depends(db_session)) -> Any:
    """A completion of `prompt` (through the adapter's prompt template) from one of your adapters."""
    ident, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
    base = {"id": ident, "object": "text_completion", "created": created, "model": body.model}
    if not body.stream:
        generated = await _answer(body, caller, session, request, "completions")
        return {"id": ident, "object": "text_completion", "created": created, "model": body.model,
                "choices": [{"index": i, "text": c.text, "finish_reason": c.finish_reason, "logprobs": None}
                            for i, c in enumerate(generated.choices)],
                "usage": _usage(*_completed(generated))}
    adapter, generation = await _start(body, caller, session, request, "completions")

    def chunk(event: tuple) -> dict | None:
        if event[0] == "usage":
            return base
        text, reason = (event[2], None) if event[0] == "text" else ("", event[2])
        return {**base, "choices": [{"index": event[1], "text": text, "finish_reason": reason,
                                     "logprobs": None}]}

    usage_wanted = body.stream_options is not None and body.stream_options.include_usage
    return _stream(request, caller, adapter, generation, "completions", chunk, usage_wanted)


@router.post("/v1/classify")
async def classify(body: ClassifyRequest, request: Request, caller: Caller = Depends(serve_caller),
                   session: Session = Depends(db_session)) -> Any:
    """Labels for one text or a list (vLLM's and SGLang's shape), from one of your classifiers."""
    texts = [body.input] if isinstance(body.input, str) else list(body.input)
    if not texts or len(texts) > MAX_INPUTS:
        raise ApiError(400, f"input holds {len(texts)} texts; give 1 to {MAX_INPUTS}", param="input")
    long = next((i for i, t in enumerate(texts) if len(t) > MAX_INPUT_CHARS), None)
    if long is not None:
        raise ApiError(400, f"input[{long}] holds more than {MAX_INPUT_CHARS} characters", param="input")
    kinds = ("classification", "regression")
    adapter = await _adapter(session, body.model, caller, kinds, "/v1/classify", request)
    served = await serving(request).classify(ClassifyJob(adapter, caller.tenant_slug, tuple(texts)))
    tokens = sum(r.tokens for r in served.outputs)
    _record(request, caller, adapter, "classify", tokens, 0, served.device_seconds)
    data = []
    for i, r in enumerate(served.outputs):
        row: dict[str, Any] = {"index": i, "label": r.label, "label_index": r.label_index,
                               "probs": list(r.probs), "num_classes": len(r.probs)}
        if r.value is not None:
            row["value"] = r.value
        data.append(row)
    return {"id": f"classify-{uuid.uuid4().hex}", "object": "list", "created": int(time.time()),
            "model": body.model, "data": data, "usage": _usage(tokens, 0)}


@router.get("/v1/models")
def list_models(request: Request, caller: Caller = Depends(serve_caller),
                session: Session = Depends(db_session)) -> Any:
    """The models you can serve: your live adapters, by their `ft:` names, then the base models."""
    adapters = served_adapters(session, caller.tenant_slug)
    bases = tenant_bases(request.app.state.settings)
    return {"object": "list",
            "data": [*({"id": a.name, "object": "model", "created": a.created_at,
                        "owned_by": caller.tenant_slug} for a in adapters),
                     *({"id": b, "object": "model", "created": 0, "owned_by": "lorafleet"} for b in bases)]}
