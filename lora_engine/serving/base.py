"""One resident base model serving many adapters, each batch row through its own adapter.

    served = ServedBase.load("minilm-l6", "classification")
    served.add_adapter("a", folder_a); served.add_adapter("b", folder_b)
    served.classify([("a", "great film"), ("b", "terrible"), (None, "bare base")])

    row = served.start("a", prompt_ids, Sampling(max_tokens=32, temperature=0.7, seed=1))
    while served.active: tokens = served.step()      # {row: Token}; rows may join between steps

The base is loaded once (eval mode, no gradients). A layer is wrapped in a `ServedLinear` the first
time an adapter targets it, and stays wrapped; adding an adapter adds its updates to those layers,
nothing else (the base weights are shared, never copied). One forward serves rows of different
adapters: the rows are ordered by adapter so that each adapter's rows are one contiguous range of
every routed layer's input (`packed.routing.Routing`), and each range goes through its adapter.

Classification (BERT / RoBERTa) runs the project's padding-free encoder (forward/encoder.py) on
the rows' real tokens (attention by length buckets: attention.py; the last layer on first tokens
only unless a row's adapter mean-pools), then each row is pooled as its adapter was trained to be
([CLS] or mean) and read by its adapter's own head (`classifier`, and BERT's pooler when the
adapter saves it).

Generation keeps one KV cache for the batch. Rows are left-padded and carry explicit position ids,
so a row's positions (GPT-2's learned positions, Llama's rotary angles) are those it has alone and
the padding is masked out of attention. A row that joins is prefilled (with the other newcomers of
similar length), its cache left-padded to the batch's length or the batch's to its, and merged in;
a row that ends leaves the cache. So a row's logits at every step are the ones it gets alone, up to float
rounding (tests/unit/test_serving_engine.py checks 1e-5 in fp32, joins and early finishes
included), and its tokens depend only on those logits and its own seed (sampling.py).

Not thread-safe: one caller (the server's batching loop) drives it.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from lora_engine.adapters.folder import AdapterMeta
from lora_engine.device import DeviceInfo, pick_device
from lora_engine.errors import AdapterError, LoraFleetInputError
from lora_engine.forward import encoder
from lora_engine.inject import set_module
from lora_engine.model_ref import alias_of
from lora_engine.packed.routing import Routing
from lora_engine.serving.adapter import ServedAdapter, read_served_adapter
from lora_engine.serving.attention import LengthBuckets, cut_by_length
from lora_engine.serving.layer import ServedLinear
from lora_engine.serving.sampling import GREEDY, Sampling, next_token, row_generator, stops_of

KINDS = ("classification", "generation")
BARE = ""  # the routing key of rows served by the bare base (no adapter is ever named "")
DEFAULT_MAX_LENGTH = 128  # a classifier input's token limit when its adapter records none


@dataclass(frozen=True)
class ClassifyResult:
    label_index: int
    label: str  # the adapter's name for the label, or its index as text
    probs: tuple[float, ...]
    logits: torch.Tensor  # (labels,) float32, what the probabilities are the softmax of


@dataclass(frozen=True)
class Token:
    """One row's outcome of a decode step. `token_id` is the sampled id; when `finished`, `reason`
    is "stop" (the id is a stop id, not part of the text) or "length" (the id is the last token)."""

    token_id: int
    finished: bool
    reason: str | None
    logits: torch.Tensor  # (vocab,) the row's logits this step, before temperature


@dataclass
class Row:
    handle: int
    key: str
    sampling: Sampling
    stops: frozenset[int]
    generator: torch.Generator
    prompt: list[int]
    output: list[int] = field(default_factory=list)  # generated ids, stop ids excluded
    position: int = 0  # the position id of the next token fed
    last: int = 0  # the token fed at the next decode step


class ServedBase:
    def __init__(self, model, tokenizer, *, name: str, kind: str, device: DeviceInfo):
        self.model, self.tokenizer, self.name, self.kind, self.device = model, tokenizer, name, kind, device
        self.routing = Routing(fused=False)
        self.adapters: dict[str, ServedAdapter] = {}
        self.aliases = {name, alias_of(name)}
        self._handles = itertools.count(1)
        self._pending: list[Row] = []
        self._rows: list[Row] = []  # the decode batch, ordered by adapter key
        self._kv: list[tuple[torch.Tensor, torch.Tensor]] | None = None
        self._mask: torch.Tensor | None = None  # (rows, cache length): 1 on real tokens

    # -- loading ----------------------------------------------------------------------------------
    @classmethod
    def load(cls, base_model: str, kind: str, device: DeviceInfo | None = None) -> ServedBase:
        from lora_engine.models import load_base_model

        if kind not in KINDS:
            raise LoraFleetInputError(f"a served base is one of {', '.join(KINDS)}, not {kind!r}")
        model, tokenizer = load_base_model(base_model, kind, 2 if kind == "classification" else None)
        if kind == "classification" and type(model).__name__ not in encoder.SUPPORTED:
            raise LoraFleetInputError(f"classifiers are served on BERT/RoBERTa bases, not "
                                      f"{type(model).__name__} ({base_model!r})")
        device = device or pick_device()
        model.requires_grad_(False)
        model.to(device.device).eval()
        return cls(model, tokenizer, name=base_model, kind=kind, device=device)

    def add_adapter(self, key: str, folder: str | Path) -> int:
        """Load the adapter in `folder` under `key` (replacing one held there); its bytes held."""
        if not isinstance(key, str) or key == BARE:
            raise LoraFleetInputError(f"an adapter key is a non-empty string, got {key!r}")
        adapter = read_served_adapter(key, folder, self.model, kind=self.kind, base_aliases=self.aliases)
        if self.kind == "classification" and "classifier" not in adapter.heads:
            raise AdapterError(f"adapter {key!r} saves no classifier head: nothing to classify with")
        self.remove_adapter(key)
        for name, update in adapter.layers.items():
            layer = self.model.get_submodule(name)
            if not isinstance(layer, ServedLinear):
                layer = ServedLinear(layer, self.routing)
                set_module(self.model, name, layer)
            layer.add(key, update)
        self.adapters[key] = adapter
        return adapter.bytes

    def remove_adapter(self, key: str) -> None:
        """Forget the adapter (a no-op for an unknown key); refused while a row decodes with it."""
        if key not in self.adapters:
            return
        busy = self.busy(key)
        if busy:
            raise LoraFleetInputError(f"adapter {key!r} is in use by {busy} generating row(s)")
        for name in self.adapters.pop(key).layers:
            self.model.get_submodule(name).remove(key)

    def busy(self, key: str) -> int:
        """How many generating rows (decoding or waiting to join) use the adapter: an LRU evicts
        only adapters with none."""
        return sum(r.key == key for r in self._rows + self._pending)

    def adapter_meta(self, key: str) -> AdapterMeta:
        return self._adapter(key).meta

    def adapter_bytes(self, key: str) -> int:
        return self._adapter(key).bytes

    def _adapter(self, key: str) -> ServedAdapter:
        try:
            return self.adapters[key]
        except KeyError:
            raise LoraFleetInputError(f"no adapter {key!r} is loaded on {self.name!r}") from None

    def _route_key(self, key: str | None) -> str:
        if key is None:
            return BARE
        self._adapter(key)
        return key

    def prompt_ids(self, key: str | None, text: str) -> list[int]:
        """`text` through the adapter's prompt template, tokenised as training tokenised prompts."""
        from lora_engine.data.batching import encode_prompts

        template = (self._adapter(key).meta.prompt_template if key is not None else None) or "{prompt}"
        return encode_prompts(self.tokenizer, [template.replace("{mr}", text).replace("{prompt}", text)])[0]

    # -- classification ---------------------------------------------------------------------------
    @torch.no_grad()
    def classify(self, items: Sequence[tuple[str | None, str | tuple[str, str]]]) -> list[ClassifyResult]:
        """One forward for every row, each through its own adapter and head; results in order."""
        if self.kind != "classification":
            raise LoraFleetInputError(f"{self.name!r} is served for generation; it does not classify")
        if not items:
            return []
        keys = [self._route_key(k) for k, _ in items]
        order = sorted(range(len(items)), key=lambda i: keys[i])
        encoded = [self._encode_for_classifier(keys[i], items[i][1]) for i in order]
        inputs = _right_pad(encoded, self.tokenizer.pad_token_id, self.device.device)
        groups = _groups([keys[i] for i in order])
        lengths = [len(e["input_ids"]) for e in encoded]
        token_counts, start = [], 0
        for _, n in groups:
            token_counts.append(sum(lengths[start:start + n]))
            start += n
        hidden, packing, first = encoder.embed(self.model, inputs)
        # The last layer computes every token only when some row's head reads the mean of them.
        means_needed = any(self.adapters[k].meta.pooling == "mean" for k, _ in groups if k != BARE)
        self.routing.set([k for k, _ in groups], token_counts, [n for _, n in groups])
        try:
            states = encoder.encode(self.model, hidden, LengthBuckets(lengths, hidden.device, hidden.dtype),
                                    None if means_needed else first)
        finally:
            self.routing.clear()
        means = packing.row_means(states) if means_needed else None
        firsts = states.index_select(0, first) if means_needed else states  # (rows, hidden)
        results: list[ClassifyResult | None] = [None] * len(items)
        start = 0
        for key, n in groups:
            rows = torch.arange(start, start + n, device=states.device)
            adapter = self.adapters.get(key)
            mean = adapter is not None and adapter.meta.pooling == "mean"
            pooled = (means if mean else firsts).index_select(0, rows)
            heads = adapter.heads if adapter is not None else {}
            logits = encoder.head_logits(self.model, pooled, classifier=heads.get("classifier"),
                                         pooler=heads.get(f"{self.model.base_model_prefix}.pooler")).float()
            names = list(adapter.meta.label_names) if adapter is not None else []
            for j, row_logits in enumerate(logits.cpu()):
                probs = torch.softmax(row_logits, dim=-1)
                index = int(torch.argmax(probs))
                results[order[start + j]] = ClassifyResult(
                    index, names[index] if index < len(names) else str(index),
                    tuple(float(p) for p in probs), row_logits)
            start += n
        return results  # type: ignore[return-value]

    def _encode_for_classifier(self, key: str, text: str | tuple[str, str]) -> dict[str, list[int]]:
        adapter = self.adapters.get(key)
        max_length = (adapter.meta.max_length if adapter is not None else None) or DEFAULT_MAX_LENGTH
        if isinstance(text, tuple | list) and len(text) == 2 and all(isinstance(t, str) for t in text):
            enc = self.tokenizer(text[0], text[1], truncation=True, max_length=max_length)
        elif isinstance(text, str):
            enc = self.tokenizer(text, truncation=True, max_length=max_length)
        else:
            raise LoraFleetInputError(f"a classifier input is a string or a (text, text_pair) pair, "
                                      f"got {type(text).__name__}")
        return dict(enc)

    # -- generation -------------------------------------------------------------------------------
    @property
    def active(self) -> bool:
        """True while a row is decoding or waiting to join."""
        return bool(self._rows or self._pending)

    def start(self, adapter_key: str | None, prompt_ids: Sequence[int], sampling: Sampling = GREEDY) -> int:
        """Queue a row; it joins the batch at the next `step()`, whose result holds its first token."""
        if self.kind != "generation":
            raise LoraFleetInputError(f"{self.name!r} is served for classification; it does not generate")
        key = self._route_key(adapter_key)
        prompt = [int(t) for t in prompt_ids]
        vocab = self.model.get_output_embeddings().weight.shape[0]
        if not prompt or any(not 0 <= t < vocab for t in prompt):
            raise LoraFleetInputError(f"a prompt is a non-empty list of token ids below {vocab}")
        limit = _max_positions(self.model.config)
        if limit is not None and len(prompt) + sampling.max_tokens > limit:
            raise LoraFleetInputError(f"the prompt's {len(prompt)} tokens plus max_tokens "
                                      f"{sampling.max_tokens} exceed this model's {limit} positions")
        stops = frozenset(stops_of(sampling, self.tokenizer.eos_token_id))
        row = Row(next(self._handles), key, sampling, stops, row_generator(sampling.seed, self.device.device),
                  prompt)
        self._pending.append(row)
        return row.handle

    def cancel(self, handle: int) -> None:
        """Drop a row (a client gone); unknown handles are ignored."""
        self._pending = [r for r in self._pending if r.handle != handle]
        keep = [i for i, r in enumerate(self._rows) if r.handle != handle]
        if len(keep) != len(self._rows):
            self._keep(keep)

    def output_ids(self, handle: int) -> list[int]:
        """The ids a row has generated so far (stop ids excluded), while it is in the batch."""
        for r in self._rows + self._pending:
            if r.handle == handle:
                return list(r.output)
        raise LoraFleetInputError(f"no generating row {handle}")

    @torch.no_grad()
    def step(self) -> dict[int, Token]:
        """One decode step of the batch, then the waiting rows' prefill: {row handle: Token}.
        A finished row has left the batch when this returns."""
        out: dict[int, Token] = {}
        if self._rows:
            self._decode(out)
        if self._pending:
            self._prefill(out)
        return out

    def generate(self, items: Sequence[tuple[str | None, str]], sampling: Sampling = GREEDY) -> list[str]:
        """Texts for (adapter key, input) pairs, each input through its adapter's prompt template,
        decoded as `adapter predict` decodes (special tokens dropped, stripped). For tests and tools."""
        handles = [self.start(k, self.prompt_ids(k, text), sampling) for k, text in items]
        done: dict[int, list[int]] = {}
        outputs: dict[int, list[int]] = {h: [] for h in handles}
        while len(done) < len(handles):
            for handle, token in self.step().items():
                if handle not in outputs:
                    continue
                if token.reason != "stop":
                    outputs[handle].append(token.token_id)
                if token.finished:
                    done[handle] = outputs[handle]
        return [self.tokenizer.decode(done[h], skip_special_tokens=True).strip() for h in handles]

    def _forward(self, keys: list[str], ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor,
                 kv) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
        from transformers import DynamicCache

        cache = DynamicCache(ddp_cache_data=kv) if kv is not None else DynamicCache()
        groups = _groups(keys)
        width = ids.shape[1]
        self.routing.set([k for k, _ in groups], [n * width for _, n in groups])
        try:
            logits = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache,
                                use_cache=True, logits_to_keep=1).logits[:, -1].float()
        finally:
            self.routing.clear()
        return logits, [(layer.keys, layer.values) for layer in cache.layers]

    def _decode(self, out: dict[int, Token]) -> None:
        dev = self.device.device
        ids = torch.tensor([[r.last] for r in self._rows], device=dev)
        positions = torch.tensor([[r.position] for r in self._rows], device=dev)
        mask = torch.cat([self._mask, torch.ones(len(self._rows), 1, dtype=self._mask.dtype, device=dev)], 1)
        logits, self._kv = self._forward([r.key for r in self._rows], ids, mask, positions, self._kv)
        self._mask = mask
        for r in self._rows:
            r.position += 1
        self._emit(self._rows, logits, out)
        self._keep([i for i, r in enumerate(self._rows) if r.handle not in out or not out[r.handle].finished])

    def _prefill(self, out: dict[int, Token]) -> None:
        """The waiting rows' prompts, in buckets of similar length (each left-padded only to its own
        longest: 32 prompts of 9-64 tokens padded to 64 were 2.5x the real tokens, and prefill is
        compute), each bucket merged into the batch."""
        pending, self._pending = self._pending, []
        for bucket in cut_by_length([len(r.prompt) for r in pending]):
            self._prefill_rows([pending[i] for i in bucket], out)

    def _prefill_rows(self, rows: list[Row], out: dict[int, Token]) -> None:
        dev = self.device.device
        rows = sorted(rows, key=lambda r: r.key)
        width = max(len(r.prompt) for r in rows)
        ids = torch.full((len(rows), width), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, width - len(r.prompt):] = torch.tensor(r.prompt)
            mask[i, width - len(r.prompt):] = 1
        ids, mask = ids.to(dev), mask.to(dev)
        positions = (mask.cumsum(1) - 1).clamp(min=0)
        logits, kv = self._forward([r.key for r in rows], ids, mask, positions, None)
        for r in rows:
            r.position = len(r.prompt)
        self._emit(rows, logits, out)
        alive = [i for i, r in enumerate(rows) if not out[r.handle].finished]
        if not alive:
            return
        index = torch.tensor(alive, device=dev)
        kv = [(k.index_select(0, index), v.index_select(0, index)) for k, v in kv]
        self._merge([rows[i] for i in alive], kv, mask.index_select(0, index))

    def _emit(self, rows: list[Row], logits: torch.Tensor, out: dict[int, Token]) -> None:
        for r, row_logits in zip(rows, logits, strict=True):
            token = next_token(row_logits, r.sampling, r.generator)
            stop = token in r.stops
            if not stop:
                r.output.append(token)
            length = len(r.output) >= r.sampling.max_tokens
            out[r.handle] = Token(token, stop or length, "stop" if stop else ("length" if length else None),
                                  row_logits)
            r.last = token

    def _merge(self, rows: list[Row], kv, mask: torch.Tensor) -> None:
        """Newly prefilled rows into the batch: both caches left-padded to one length, then every
        row ordered by adapter key (so each adapter's rows stay one contiguous range)."""
        if self._kv is None or not self._rows:
            self._rows, self._kv, self._mask = rows, kv, mask
            return
        length = max(self._mask.shape[1], mask.shape[1])

        def pad(t: torch.Tensor, dim_from_end: int) -> torch.Tensor:
            missing = length - t.shape[-dim_from_end]
            return t if missing == 0 else F.pad(t, (0, 0) * (dim_from_end - 1) + (missing, 0))

        merged_kv = [(torch.cat([pad(k0, 2), pad(k1, 2)]), torch.cat([pad(v0, 2), pad(v1, 2)]))
                     for (k0, v0), (k1, v1) in zip(self._kv, kv, strict=True)]
        merged_mask = torch.cat([pad(self._mask, 1), pad(mask, 1)])
        everyone = self._rows + rows
        order = sorted(range(len(everyone)), key=lambda i: everyone[i].key)
        self._rows, self._kv, self._mask = everyone, merged_kv, merged_mask
        self._keep(order)

    def _keep(self, indices: list[int]) -> None:
        """The batch cut (and reordered) to `indices`; cache columns no row needs are dropped."""
        if len(indices) == len(self._rows) and indices == sorted(indices):
            return
        self._rows = [self._rows[i] for i in indices]
        if not self._rows:
            self._kv, self._mask = None, None
            return
        index = torch.tensor(indices, device=self._mask.device)
        mask = self._mask.index_select(0, index)
        used = int(mask.any(0).nonzero()[0]) if mask.any() else 0  # leading all-padding columns
        self._mask = mask[:, used:]
        self._kv = [(k.index_select(0, index)[:, :, used:], v.index_select(0, index)[:, :, used:])
                    for k, v in self._kv]


def _groups(keys: list[str]) -> list[tuple[str, int]]:
    """Runs of equal keys in order: [(key, count)] (keys arrive sorted, so one run per key)."""
    return [(k, len(list(g))) for k, g in itertools.groupby(keys)]


def _right_pad(encoded: list[dict[str, list[int]]], pad_id: int, device) -> dict[str, torch.Tensor]:
    width = max(len(e["input_ids"]) for e in encoded)
    out = {}
    for name, fill in (("input_ids", pad_id), ("attention_mask", 0), ("token_type_ids", 0)):
        if name == "attention_mask" or name in encoded[0]:
            rows = [e.get(name, [1] * len(e["input_ids"])) for e in encoded]
            out[name] = torch.tensor([r + [fill] * (width - len(r)) for r in rows], device=device)
    return out


def _max_positions(config) -> int | None:
    for name in ("n_positions", "max_position_embeddings"):
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value
    return None
