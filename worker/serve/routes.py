"""The inference routes, as OpenAI (chat, completions, models) and vLLM/SGLang (classify) shape them.

Every route authenticates with the tenants' keys (`orchestrator.api.auth.tenant_caller`); `model`
names one of the caller's own live adapters by its `ft:` name: another tenant's, a deleted one
or an unknown name all answer 404 alike. Each request's tokens and device-seconds are recorded
for its tenant (`services.inference.record_inference`).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from orchestrator.api.auth import Caller, tenant_caller
from orchestrator.api.deps import db_session
from orchestrator.api.errors import ApiError
from orchestrator.errors import NotFound
from orchestrator.services.base_models import base_problem, tenant_bases
from orchestrator.services.inference import ServedAdapter, record_inference, served_adapter, served_adapters
from orchestrator.services.model_names import parse_model_name
from worker.serve.engine import Generated, Sampling
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
from worker.serve.server import ClassifyJob, GenerateJob, Served, Serving, base_target, is_base

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
        adapter = await run_in_threadpool(served_adapter, session, model, caller.tenant_slug)
    except NotFound as exc:
        raise ApiError(404, str(exc), param="model", code="model_not_found") from None
    kind = adapter_info(adapter.path, adapter.sha256).kind
    if kind not in kinds:
        use = "/v1/classify" if kind != "generation" else "/v1/chat/completions or /v1/completions"
        raise ApiError(400, f"{model[:200]!r} is a {kind} model; {route} serves "
                            f"{' or '.join(kinds)} models (use {use})", param="model",
                       code="wrong_model_kind")
    return adapter


async def _record(request: Request, session: Session, caller: Caller, adapter: ServedAdapter, route: str,
                  prompt_tokens: int, completion_tokens: int, served: Served) -> None:
    tokens = instruments()["tokens"]
    tokens.labels("in").inc(prompt_tokens)
    tokens.labels("out").inc(completion_tokens)
    adapter_id = None if is_base(adapter) else adapter.id
    await run_in_threadpool(record_inference, session, caller.tenant_id, adapter_id=adapter_id,
                            base_model=adapter.base_model, route=route, prompt_tokens=prompt_tokens,
                            completion_tokens=completion_tokens, device_seconds=served.device_seconds,
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


def _cut(result: Generated, stops: list[str]) -> tuple[str, tuple[str, ...], str]:
    """(text, streamed pieces, finish reason) with the text ending before its first stop sequence."""
    ends = [i for i in (result.text.find(s) for s in stops) if i >= 0]
    if not ends:
        return result.text, result.pieces, result.finish_reason
    end, pieces, at = min(ends), [], 0
    for piece in result.pieces:
        if at >= end:
            break
        pieces.append(piece[:end - at])
        at += len(piece)
    return result.text[:end], tuple(p for p in pieces if p), "stop"


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _sse(chunks: Iterator[dict]) -> StreamingResponse:
    def events() -> Iterator[str]:
        for chunk in chunks:
            yield f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"cache-control": "no-cache", "x-accel-buffering": "no"})


Choice = tuple[str, tuple[str, ...], str]  # text, streamed pieces, finish reason


async def _generate(body: ChatRequest | CompletionRequest, caller: Caller, session: Session, request: Request,
                    route: str) -> tuple[ServedAdapter, list[Choice], dict[str, int]]:
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
    job = GenerateJob(adapter, caller.tenant_slug, messages, prompt, samplings)
    served = await serving(request).generate(job)
    results: list[Generated] = served.outputs
    prompt_tokens = results[0].prompt_tokens
    completion_tokens = sum(r.completion_tokens for r in results)
    await _record(request, session, caller, adapter, route, prompt_tokens, completion_tokens, served)
    return adapter, [_cut(r, body.stops()) for r in results], _usage(prompt_tokens, completion_tokens)


@router.post("/v1/chat/completions")
async def chat_completions(body: ChatRequest, request: Request, caller: Caller = Depends(tenant_caller),
                           session: Session = Depends(db_session)) -> Any:
    """A chat completion from one of your adapters (`model`: its `ft:` name)."""
    _, choices, usage = await _generate(body, caller, session, request, "chat.completions")
    ident, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
    if not body.stream:
        return {"id": ident, "object": "chat.completion", "created": created, "model": body.model,
                "choices": [{"index": i, "message": {"role": "assistant", "content": text},
                             "finish_reason": reason, "logprobs": None}
                            for i, (text, _, reason) in enumerate(choices)],
                "usage": usage}

    def chunks() -> Iterator[dict]:
        base = {"id": ident, "object": "chat.completion.chunk", "created": created, "model": body.model}
        for i, (_, pieces, reason) in enumerate(choices):
            yield {**base, "choices": [{"index": i, "delta": {"role": "assistant", "content": ""},
                                        "finish_reason": None}]}
            for piece in pieces:
                yield {**base, "choices": [{"index": i, "delta": {"content": piece}, "finish_reason": None}]}
            yield {**base, "choices": [{"index": i, "delta": {}, "finish_reason": reason}]}
        if body.stream_options is not None and body.stream_options.include_usage:
            yield {**base, "choices": [], "usage": usage}

    return _sse(chunks())


@router.post("/v1/completions")
async def completions(body: CompletionRequest, request: Request, caller: Caller = Depends(tenant_caller),
                      session: Session = Depends(db_session)) -> Any:
    """A completion of `prompt` (through the adapter's prompt template) from one of your adapters."""
    _, choices, usage = await _generate(body, caller, session, request, "completions")
    ident, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
    if not body.stream:
        return {"id": ident, "object": "text_completion", "created": created, "model": body.model,
                "choices": [{"index": i, "text": text, "finish_reason": reason, "logprobs": None}
                            for i, (text, _, reason) in enumerate(choices)],
                "usage": usage}

    def chunks() -> Iterator[dict]:
        base = {"id": ident, "object": "text_completion", "created": created, "model": body.model}
        for i, (_, pieces, reason) in enumerate(choices):
            for piece in pieces:
                choice = {"index": i, "text": piece, "finish_reason": None, "logprobs": None}
                yield {**base, "choices": [choice]}
            yield {**base, "choices": [{"index": i, "text": "", "finish_reason": reason, "logprobs": None}]}
        if body.stream_options is not None and body.stream_options.include_usage:
            yield {**base, "choices": [], "usage": usage}

    return _sse(chunks())


@router.post("/v1/classify")
async def classify(body: ClassifyRequest, request: Request, caller: Caller = Depends(tenant_caller),
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
    await _record(request, session, caller, adapter, "classify", tokens, 0, served)
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
def list_models(request: Request, caller: Caller = Depends(tenant_caller),
                session: Session = Depends(db_session)) -> Any:
    """The models you can serve: your live adapters, by their `ft:` names, then the base models."""
    adapters = served_adapters(session, caller.tenant_slug)
    bases = tenant_bases(request.app.state.settings)
    return {"object": "list",
            "data": [*({"id": a.name, "object": "model", "created": a.created_at,
                        "owned_by": caller.tenant_slug} for a in adapters),
                     *({"id": b, "object": "model", "created": 0, "owned_by": "lorafleet"} for b in bases)]}
