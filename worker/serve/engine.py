"""The seam between the server and the model code: `Engine`, and its first implementation.

The server calls only what `Engine` declares, from one thread (batcher.py): adapters are added
and removed by key (cache.py decides which), classification and generation take a batch of
items, each naming its adapter. `PredictorEngine` runs each adapter through
`lora_engine.predict.load_for_inference` (what `lorafleet adapter predict` runs): one model per
loaded adapter, its own copy of the base, items served adapter by adapter. It is exact against
`adapter predict` by construction and slow in memory; the batched engine
(`lora_engine.serving.ServedBase`: one resident base per base model, mixed-adapter batches in
one forward and one KV cache) is `batched.BatchedEngine`, which the server runs (`app.make_engine`);
it keeps this one for what ServedBase does not serve (regression adapters, full fine-tunes).
"""

from __future__ import annotations

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
class Generated:
    text: str  # as `adapter predict` prints it: special tokens dropped, white space stripped
    pieces: tuple[str, ...]  # `text` cut at token boundaries, for streaming
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" (end of sequence) or "length" (max_tokens reached)


class Engine(Protocol):
    device_name: str  # "cpu" or "cuda:<product>", as the cost report prices it

    def add_adapter(self, key: str, folder: str) -> int:
        """Load the adapter in `folder` under `key`; the bytes it holds resident."""

    def remove_adapter(self, key: str) -> None: ...

    def add_base(self, key: str, base_model: str) -> None:
        """Load a base model alone (a causal LM) under `key`, to answer requests that name it."""

    def kind(self, key: str) -> str:
        """classification, regression or generation."""

    def chat_prompt(self, key: str, messages: Sequence[dict]) -> str:
        """The prompt a chat-trained adapter reads for `messages` (its base's chat template)."""

    def classify(self, items: Sequence[tuple[str, str]]) -> list[ClassifyResult]:
        """One result per (adapter key, text), in order."""

    def generate(self, items: Sequence[GenerateItem]) -> list[Generated]: ...


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

    def generate(self, items: Sequence[GenerateItem]) -> list[Generated]:
        return [self._generate_one(item) for item in items]

    def _generate_one(self, item: GenerateItem) -> Generated:
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
        text = tok.decode(ids, skip_special_tokens=True).strip()
        return Generated(text, pieces_of(tok, ids, text), len(prompt_ids[0]), len(ids),
                         "stop" if ended else "length")

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


def pieces_of(tokenizer, ids: list[int], text: str) -> tuple[str, ...]:
    """`text` split where each token ends (its decoded prefix), so streamed pieces join to `text`."""
    pieces, emitted = [], 0
    for i in range(1, len(ids) + 1):
        prefix = tokenizer.decode(ids[:i], skip_special_tokens=True).lstrip()
        if prefix.endswith("\ufffd"):
            continue  # half a multi-byte character: wait for the rest
        end = min(len(prefix), len(text))
        if end > emitted:
            pieces.append(text[emitted:end])
            emitted = end
    if emitted < len(text):
        pieces.append(text[emitted:])
    return tuple(pieces)
