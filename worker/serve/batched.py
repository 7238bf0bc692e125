"""`Engine` over `lora_engine.serving.ServedBase`: one resident base per (base model, kind), the
adapters of one base served in one forward (classification) or one KV cache (generation).

A classify batch (batcher.py) becomes one `classify` call per base; generation rows are started
into their base's decode batch and every base is stepped once per `step()`, rows joining and
leaving between steps. Regression adapters, which ServedBase does not serve,
go through `PredictorEngine` (one model each).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from worker.serve.engine import (
    Advance,
    ClassifyResult,
    GenerateItem,
    PredictorEngine,
    Started,
    check_context,
)

SERVED_KINDS = ("classification", "generation")


class BatchedEngine:
    def __init__(self) -> None:
        from lora_engine.device import pick_device

        self.device = pick_device()
        self.device_name = self.device.name
        self.bases: dict[tuple[str, str], object] = {}
        self.where: dict[str, object] = {}  # key -> the ServedBase holding it
        self.bare: set[str] = set()  # keys naming a base alone
        self.fallback = PredictorEngine()
        self.handles = itertools.count(1)
        self.rows: dict[int, tuple[object, int]] = {}  # our handle -> (ServedBase or fallback, its handle)

    def _base(self, base_model: str, kind: str):
        from lora_engine.serving import ServedBase

        if (base_model, kind) not in self.bases:
            self.bases[base_model, kind] = ServedBase.load(base_model, kind, self.device)
        return self.bases[base_model, kind]

    def add_adapter(self, key: str, folder: str) -> int:
        from lora_engine.adapters.folder import read_adapter_meta

        meta = read_adapter_meta(folder)
        if meta.kind not in SERVED_KINDS or meta.method == "full":
            return self.fallback.add_adapter(key, folder)
        base = self._base(meta.base_model, meta.kind)
        size = base.add_adapter(key, folder)
        self.where[key] = base
        return size

    def remove_adapter(self, key: str) -> None:
        base = self.where.pop(key, None)
        if base is None:
            self.fallback.remove_adapter(key)
        else:
            base.remove_adapter(key)

    def add_base(self, key: str, base_model: str) -> None:
        self.where[key] = self._base(base_model, "generation")
        self.bare.add(key)

    def kind(self, key: str) -> str:
        return self.where[key].kind if key in self.where else self.fallback.kind(key)

    def chat_prompt(self, key: str, messages: Sequence[dict]) -> str:
        from lora_engine.data.chat import render_row

        if key not in self.where:
            return self.fallback.chat_prompt(key, messages)
        row = {"messages": [*messages, {"role": "assistant", "content": ""}]}
        return render_row(row, self.where[key].tokenizer)["prompt"]

    def _route(self, key: str) -> str | None:
        return None if key in self.bare else key

    def classify(self, items: Sequence[tuple[str, str]]) -> list[ClassifyResult]:
        out: list[ClassifyResult | None] = [None] * len(items)
        groups: dict[int, list[int]] = {}
        for i, (key, _) in enumerate(items):
            groups.setdefault(id(self.where.get(key)), []).append(i)
        for rows in groups.values():
            base = self.where.get(items[rows[0]][0])
            if base is None:
                for i, r in zip(rows, self.fallback.classify([items[i] for i in rows]), strict=True):
                    out[i] = r
                continue
            texts = [items[i][1] for i in rows]
            results = base.classify([(self._route(items[i][0]), items[i][1]) for i in rows])
            lengths = [len(ids) for ids in base.tokenizer(texts, truncation=True)["input_ids"]]
            for i, r, n in zip(rows, results, lengths, strict=True):
                out[i] = ClassifyResult(r.label_index, r.label, r.probs, None, n)
        return [r for r in out if r is not None]

    def tokenizer(self, key: str):
        return self.where[key].tokenizer if key in self.where else self.fallback.tokenizer(key)

    # -- generation: rows of every base, each base's rows in one KV cache --------------------------
    def start(self, item: GenerateItem) -> Started:
        from lora_engine.data.batching import encode_prompts
        from lora_engine.serving import Sampling

        base = self.where.get(item.adapter_key)
        if base is None:
            started = self.fallback.start(item)
            handle = next(self.handles)
            self.rows[handle] = (self.fallback, started.handle)
            return Started(handle, started.prompt_tokens)
        prompt = encode_prompts(base.tokenizer, [item.prompt])[0]
        s = item.sampling
        check_context(base.model, len(prompt), s.max_tokens)
        sampling = Sampling(max_tokens=s.max_tokens, temperature=s.temperature, top_p=s.top_p, seed=s.seed)
        handle = next(self.handles)
        self.rows[handle] = (base, base.start(self._route(item.adapter_key), prompt, sampling))
        return Started(handle, len(prompt))

    def step(self) -> dict[int, Advance]:
        ours = {(id(holder), inner): handle for handle, (holder, inner) in self.rows.items()}
        out: dict[int, Advance] = {}
        for holder in {id(h): h for h, _ in self.rows.values()}.values():
            if not holder.active:
                continue
            for inner, token in holder.step().items():
                handle = ours.get((id(holder), inner))
                if handle is None:
                    continue
                if isinstance(token, Advance):  # the fallback's whole row
                    out[handle] = token
                else:
                    ids = () if token.reason == "stop" else (token.token_id,)
                    out[handle] = Advance(ids, token.finished, token.reason)
                if out[handle].finished:
                    del self.rows[handle]
        return out

    def cancel(self, handle: int) -> None:
        holder, inner = self.rows.pop(handle, (None, None))
        if holder is not None:
            holder.cancel(inner)

    @property
    def active(self) -> bool:
        return bool(self.rows)
