"""`Engine` over `lora_engine.serving.ServedBase`: one resident base per (base model, kind), the
adapters of one base served in one forward (classification) or one KV cache (generation).

Each engine batch (batcher.py) becomes one `classify` call per base, or one set of rows started
together and stepped until every row ends. Regression adapters, which ServedBase does not serve,
go through `PredictorEngine` (one model each).
"""

from __future__ import annotations

from collections.abc import Sequence

from worker.serve.engine import (
    ClassifyResult,
    Generated,
    GenerateItem,
    PredictorEngine,
    check_context,
    pieces_of,
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

    def generate(self, items: Sequence[GenerateItem]) -> list[Generated]:
        from lora_engine.data.batching import encode_prompts
        from lora_engine.serving import Sampling

        out: list[Generated | None] = [None] * len(items)
        prompts = []
        for item in items:  # every item checked before any row starts: a refusal leaves no row behind
            base = self.where[item.adapter_key]
            prompts.append(encode_prompts(base.tokenizer, [item.prompt])[0])
            check_context(base.model, len(prompts[-1]), item.sampling.max_tokens)
        rows: dict[tuple[int, int], tuple[object, int, list[int]]] = {}  # -> (base, item index, prompt)
        bases = {}
        try:
            for i, (item, prompt) in enumerate(zip(items, prompts, strict=True)):
                base, s = self.where[item.adapter_key], item.sampling
                sampling = Sampling(max_tokens=s.max_tokens, temperature=s.temperature, top_p=s.top_p,
                                    seed=s.seed)
                handle = base.start(self._route(item.adapter_key), prompt, sampling)
                rows[id(base), handle] = (base, i, prompt)
                bases[id(base)] = base
        except BaseException:
            for (_, handle), (base, _, _) in rows.items():
                base.cancel(handle)
            raise
        outputs: dict[tuple[int, int], list[int]] = {k: [] for k in rows}
        for base in bases.values():
            while base.active:
                for handle, token in base.step().items():
                    key = (id(base), handle)
                    if key not in rows:
                        continue
                    if token.reason != "stop":
                        outputs[key].append(token.token_id)
                    if token.finished:
                        _, i, prompt = rows[key]
                        ids = outputs[key]
                        text = base.tokenizer.decode(ids, skip_special_tokens=True).strip()
                        pieces = pieces_of(base.tokenizer, ids, text)
                        out[i] = Generated(text, pieces, len(prompt), len(ids), token.reason or "stop")
        return [g for g in out if g is not None]
