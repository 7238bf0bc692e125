"""The seam between the server and the model code: `Engine`, and its first implementation.

The server calls only what `Engine` declares, from one thread (batcher.py): adapters are added
and removed by key (cache.py decides which), classification takes a batch of items, each naming
its adapter, and generation is rows started, stepped and cancelled one decode step at a time
(rows join and leave between steps: batcher.py). `PredictorEngine` runs each adapter through
`lora_engine.predict.load_for_inference` (what `lorafleet adapter predict` runs): one model per
loaded adapter, its own copy of the base, items served adapter by adapter. It is exact against
`adapter predict` by construction and slow in memory; the batched engine
(`lora_engine.serving.ServedBase`: one resident base per base model, mixed-adapter batches in
one forward and one KV cache) is `batched.BatchedEngine`, which the server runs (`app.make_engine`);
it keeps this one for what ServedBase does not serve (regression adapters, full fine-tunes).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol


@dataclass(frozen=True)
class ClassifyResult:
    label_index: int | None
    label: str | None
    probs: tuple[float, ...]
    value: float | None = None  # a regression adapter's score
    tokens: int = 0


@dataclass(frozen=True)
class Sampling:
    max_tokens: int
    temperature: float = 0.0  # 0: greedy, as `adapter predict`
    top_p: float = 1.0
    seed: int | None = None


@dataclass(frozen=True)
class GenerateItem:
    adapter_key: str
    prompt: str  # the whole prompt text, templates applied (prompts.py)
    sampling: Sampling


@dataclass(frozen=True)
class Started:
    handle: int  # the row's name in `step()`'s answers and for `cancel`
    prompt_tokens: int


@dataclass(frozen=True)
class Advance:
    """A row's progress in one `step()`: its new tokens (an end-of-sequence id excluded) and,
    when `finished`, why: "stop" (end of sequence) or "length" (max_tokens reached)."""

    ids: tuple[int, ...]
    finished: bool
    reason: str | None = None


class Engine(Protocol):
    device_name: str  # "cpu" or "cuda:<product>", as the cost report prices it

    def add_adapter(self, key: str, folder: str) -> int:
        """Load the adapter in `folder` under `key`; the bytes it holds resident."""

    def remove_adapter(self, key: str) -> None: ...

    def add_base(self, key: str, base_model: str) -> None:
        """Load a base model alone (a causal LM) under `key`, to answer requests that name it."""

    def kind(self, key: str) -> str:
        """classification, regression or generation."""

    def tokenizer(self, key: str):
        """The tokenizer of the model `key` generates with (to decode its ids)."""

    def chat_prompt(self, key: str, messages: Sequence[dict]) -> str:
        """The prompt a chat-trained adapter reads for `messages` (its base's chat template)."""

    def classify(self, items: Sequence[tuple[str, str]]) -> list[ClassifyResult]:
        """One result per (adapter key, text), in order."""

    def start(self, item: GenerateItem) -> Started:
        """Queue a generation row (refused, LoraFleetInputError, before anything is queued when
        its prompt and max_tokens do not fit); it joins the decoding rows at the next `step`."""

    def step(self) -> dict[int, Advance]:
        """One decode step of every row (the queued ones prefilled): {handle: Advance}. A finished
        row has left when this returns."""

    def cancel(self, handle: int) -> None:
        """Drop a row now (its client went away, or a stop string ended it); unknown: ignored."""

    @property
    def active(self) -> bool:
        """Whether any row is decoding or queued."""


def folder_bytes(folder: str | Path) -> int:
    return sum(p.stat().st_size for p in Path(folder).iterdir() if p.is_file())


class PredictorEngine:
    """The adapter side of `Engine` over `lora_engine.predict.Predictor`: one loaded model per
    adapter (BatchedEngine's fallback; it serves no base alone)."""

    def __init__(self) -> None:
        from lora_engine.device import pick_device

        self.device = pick_device()
        self.device_name = self.device.name
        self.predictors: dict[str, object] = {}
        self.handles = itertools.count(1)
        self.done: dict[int, Advance] = {}

    def add_adapter(self, key: str, folder: str) -> int:
        from lora_engine.predict import load_for_inference

        self.predictors[key] = load_for_inference(folder, device=self.device)
        return folder_bytes(folder)

    def remove_adapter(self, key: str) -> None:
        self.predictors.pop(key, None)

    def kind(self, key: str) -> str:
        return self.predictors[key].kind

    def chat_prompt(self, key: str, messages: Sequence[dict]) -> str:
        from lora_engine.data.chat import render_row

        # The training side's renderer: the messages before a (here empty) last assistant message.
        row = {"messages": [*messages, {"role": "assistant", "content": ""}]}
        return render_row(row, self.predictors[key].tokenizer)["prompt"]

    def classify(self, items: Sequence[tuple[str, str]]) -> list[ClassifyResult]:
        out: list[ClassifyResult | None] = [None] * len(items)
        by_key: dict[str, list[int]] = {}
        for i, (key, _) in enumerate(items):
            by_key.setdefault(key, []).append(i)
        for key, rows in by_key.items():
            predictor = self.predictors[key]
            texts = [items[i][1] for i in rows]
            lengths = [len(ids) for ids in predictor.tokenizer(texts, truncation=True,
                                                               max_length=predictor.max_length)["input_ids"]]
            for i, p, n in zip(rows, predictor.classify(texts), lengths, strict=True):
                out[i] = ClassifyResult(p.label_id, p.label, tuple(p.probabilities), p.value, n)
        return [r for r in out if r is not None]

    def tokenizer(self, key: str):
        return self.predictors[key].tokenizer

    # Generation runs whole in `start` (one model per adapter: nothing to batch); `step` hands
    # each row's tokens over at once.
    def start(self, item: GenerateItem) -> Started:
        import torch

        from lora_engine.data.batching import encode_prompts
        from lora_engine.generate import DecodeSettings, generate_ids

        predictor = self.predictors[item.adapter_key]
        tok, s = predictor.tokenizer, item.sampling
        prompt_ids = encode_prompts(tok, [item.prompt])
        check_context(predictor.model, len(prompt_ids[0]), s.max_tokens)
        if s.temperature == 0:
            greedy = DecodeSettings(num_beams=1, length_penalty=1.0, no_repeat_ngram_size=0,
                                    max_new_tokens=s.max_tokens, batch_size=1)
            ids = generate_ids(predictor.model, prompt_ids, tokenizer=tok, device=self.device,
                               settings=greedy)[0]
            ended = len(ids) < s.max_tokens
        else:
            ids, ended = self._sample(predictor, prompt_ids[0], s, torch)
        handle = next(self.handles)
        self.done[handle] = Advance(tuple(ids), True, "stop" if ended else "length")
        return Started(handle, len(prompt_ids[0]))

    def step(self) -> dict[int, Advance]:
        done, self.done = self.done, {}
        return done

    def cancel(self, handle: int) -> None:
        self.done.pop(handle, None)

    @property
    def active(self) -> bool:
        return bool(self.done)

    def _sample(self, predictor, prompt: list[int], s: Sampling, torch) -> tuple[list[int], bool]:
        tok = predictor.tokenizer
        eos = tok.eos_token_id
        pad = tok.pad_token_id if tok.pad_token_id is not None else eos
        if s.seed is not None:
            torch.manual_seed(s.seed)  # one engine thread: the global generator is this request's
        ids = torch.tensor([prompt], device=self.device.device)
        with torch.no_grad():
            out = predictor.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True,
                                           temperature=s.temperature, top_p=s.top_p, top_k=0,
                                           max_new_tokens=s.max_tokens, eos_token_id=eos, pad_token_id=pad)
        row = out[0, ids.shape[1]:].tolist()
        ended = eos in row
        row = row[:row.index(eos)] if ended else row
        return row, ended or len(row) < s.max_tokens


def check_context(model, prompt_tokens: int, max_tokens: int) -> None:
    """A prompt and its answer must fit the model's positions (a longer one fails inside the model)."""
    from lora_engine.errors import LoraFleetInputError

    config = model.config
    context = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    if context and prompt_tokens + max_tokens > context:
        raise LoraFleetInputError(f"the prompt is {prompt_tokens} tokens and max_tokens {max_tokens}: "
                                  f"together more than this model's context of {context} tokens; "
                                  "shorten the prompt or lower max_tokens")
