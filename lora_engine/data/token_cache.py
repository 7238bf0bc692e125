"""Tokenised splits remembered, so a job does not tokenise before its first step what the last job
on the same data already did.

Tokenising a training split is the largest cost between a claim and the first optimiser step
once the base model is warm: E2E's 42k rows take ~2.5 s of CPU on SmolLM2's tokenizer, SST-2's
~0.6 s on MiniLM's. The result is a pure function of three things, and the key is made of them:

    key = sha256(FORMAT, the rows (every text and label, serialised unambiguously),
                 the tokenizer (its class, its whole fast-tokenizer definition, pad/eos ids),
                 max_length)

so a change to any byte of the data, to the tokenizer or to `max_length` is a different key; no
path, name or mtime is trusted. Two levels:

- in the process (the solo worker keeps it between jobs): the last `MEMORY_SLOTS` splits, the very
  `Encoded` objects, which callers treat as read-only;
- on disk under `cache_dir()` (`LORAFLEET_DATA_CACHE`, default ~/.cache/lorafleet/tokens; empty:
  none), one safetensors file per key (the `Ragged` rows' flat int64 arrays and offsets, read
  back as they are: ~0.02 s for E2E where rebuilding Python lists took ~0.7 s; the key and the
  scalars in its metadata), written atomically and owner-only (it is a tenant's data,
  tokenised). A file that cannot be read, whose metadata names another key or whose arrays do
  not fit together is ignored and replaced. Never pickle.

A tokenizer without a fast backend has no definition to hash: its splits are not cached.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from lora_engine.atomic import atomic_write_bytes
from lora_engine.data.batching import Encoded, PromptMasked, Ragged
from lora_engine.data.examples import GenerationExample

FORMAT = "2"  # 2: the tokenizer digest skips its per-call state by cutting, not re-serialising
MEMORY_SLOTS = 2

_memory: OrderedDict[str, Encoded] = OrderedDict()
# A split finished in a background thread is kept from there (`keeper`): one lock for the level.
_memory_lock = threading.Lock()
_generation = [0]  # counts `forget()` calls: a split tokenised across one is not remembered
_in_progress: OrderedDict[str, object] = OrderedDict()  # key -> a streaming.PendingEncoded
# id(tokenizer) -> (a weak reference to it, len(tokenizer), digest); the reference tells a reused id
_tokenizer_digests: dict[int, tuple[weakref.ref, int, str]] = {}


def cache_dir() -> Path | None:
    """Where tokenised splits are stored: `LORAFLEET_DATA_CACHE`, else ~/.cache/lorafleet/tokens;
    None (memory only) when the variable is set but empty."""
    root = os.environ.get("LORAFLEET_DATA_CACHE")
    if root is None:
        return Path.home() / ".cache" / "lorafleet" / "tokens"
    return Path(root) if root.strip() else None


def tokenizer_digest(tokenizer) -> str | None:
    """sha256 of what decides the ids: the class, the fast tokenizer's full definition (vocabulary,
    merges, normaliser, post-processor, added tokens; not the truncation/padding the last call
    left on it) and the pad/eos ids; None without a fast backend. Remembered per tokenizer object
    and vocabulary size."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    size = len(tokenizer)
    known = _tokenizer_digests.get(id(tokenizer))
    if known is None or known[0]() is not tokenizer or known[1] != size:
        h = hashlib.sha256(type(tokenizer).__qualname__.encode())
        h.update(definition_bytes(backend.to_str()))
        known = (weakref.ref(tokenizer), size, h.hexdigest())
        _tokenizer_digests[id(tokenizer)] = known
    ids = json.dumps([tokenizer.pad_token_id, tokenizer.eos_token_id])
    return hashlib.sha256(f"{known[2]}:{ids}".encode()).hexdigest()


# The backend serialises `{"version":..,"truncation":..,"padding":..,"added_tokens":..,...}` in that
# order (serde, compact): its definition is everything from "added_tokens" on. Cutting there costs
# ~0.05 s for SmolLM2's 1.5 MB; parsing and re-serialising it, 0.4 s of a cold job.
_DEFINITION = ',"added_tokens":'


def definition_bytes(serialised: str) -> bytes:
    """A backend's serialisation less its per-call state (truncation, padding; `max_length` is in the
    key already): what decides the ids. Any other layout is parsed and re-serialised without them."""
    head, cut, rest = serialised.partition(_DEFINITION)
    if cut and head.startswith('{"version":') and '"truncation":' in head and '"padding":' in head:
        # JSON strings escape their quotes, so the first `,"added_tokens":` is the top-level key.
        return (cut + rest).encode("utf-8", "surrogatepass")
    definition = json.loads(serialised)
    definition.pop("truncation", None)
    definition.pop("padding", None)
    return json.dumps(definition, sort_keys=True).encode()


def rows_digest(examples: Sequence) -> str:
    """sha256 of the rows' content: every field's length (-1 for a missing pair), then all the
    text, then the labels as JSON, so no two different row lists serialise alike."""
    if examples and isinstance(examples[0], GenerationExample):
        kind, labels = b"generation", []
        fields = [f for ex in examples for f in (ex.prompt, ex.completion)]
    else:
        kind, labels = b"classification", [ex.label for ex in examples]
        fields = [f for ex in examples for f in (ex.text, ex.text_pair)]
    lengths = np.fromiter((-1 if f is None else len(f) for f in fields), dtype=np.int64, count=len(fields))
    h = hashlib.sha256(kind)
    h.update(lengths.tobytes())
    h.update("".join(f for f in fields if f is not None).encode("utf-8", "surrogatepass"))
    h.update(json.dumps(labels).encode())
    return h.hexdigest()


def cache_key(examples: Sequence, tokenizer, max_length: int) -> str | None:
    """The key of a tokenised split, or None when the tokenizer cannot be fingerprinted."""
    tok = tokenizer_digest(tokenizer)
    if tok is None:
        return None
    return hashlib.sha256(f"{FORMAT}:{rows_digest(examples)}:{tok}:{int(max_length)}".encode()).hexdigest()


def cached_encode(examples: Sequence, tokenizer, max_length: int, build: Callable[[], Encoded]) -> Encoded:
    """`build()` (which tokenises `examples`), or the same split remembered in memory or on disk."""
    key = cache_key(examples, tokenizer, max_length)
    if key is None:
        return build()
    encoded = recall(key)
    if encoded is None:
        encoded = build()
        keeper(key)(encoded)
    return encoded


def recall(key: str) -> Encoded | None:
    """The split remembered under `key`, in memory or on disk (then kept in memory too), or None."""
    with _memory_lock:
        if key in _memory:
            _memory.move_to_end(key)
            return _memory[key]
    folder = cache_dir()
    encoded = read_encoded(folder / f"{key}.safetensors", key) if folder is not None else None
    if encoded is not None:
        _keep_in_memory(key, encoded)
    return encoded


def track(key: str, split) -> None:
    """Remember `split`, still being tokenised (`streaming.PendingEncoded`), under `key` until its
    keeper has it: the next job on the same data takes it up where it is (the last `MEMORY_SLOTS`)."""
    with _memory_lock:
        _in_progress[key] = split
        _in_progress.move_to_end(key)
        while len(_in_progress) > MEMORY_SLOTS:
            _in_progress.popitem(last=False)


def in_progress(key: str):
    """The split `track`ed under `key` and not yet complete, or None."""
    with _memory_lock:
        return _in_progress.get(key)


def keeper(key: str) -> Callable[[Encoded], None]:
    """What remembers the split of `key` once it is tokenised, in memory and on disk; a split
    finished after `forget()` (tokenised meanwhile in a background thread) is not remembered."""
    generation = _generation[0]

    def keep(encoded: Encoded) -> None:
        with _memory_lock:
            _in_progress.pop(key, None)
        if _generation[0] != generation:
            return
        folder = cache_dir()
        if folder is not None:
            # A read-only or full cache folder costs the next job a tokenisation, nothing else.
            with contextlib.suppress(OSError):
                atomic_write_bytes(folder / f"{key}.safetensors", encoded_bytes(encoded, key), private=True)
        _keep_in_memory(key, encoded)

    return keep


def _keep_in_memory(key: str, encoded: Encoded) -> None:
    with _memory_lock:
        _memory[key] = encoded
        _memory.move_to_end(key)
        while len(_memory) > MEMORY_SLOTS:
            _memory.popitem(last=False)


def forget() -> None:
    """Drop the in-process level (tests; a worker that must not keep data between jobs)."""
    with _memory_lock:
        _generation[0] += 1
        _memory.clear()
        _in_progress.clear()
    _tokenizer_digests.clear()


def encoded_bytes(encoded: Encoded, key: str) -> bytes:
    """One split as a safetensors file: the `Ragged` rows' arrays as they are, the scalars as metadata."""
    from safetensors.numpy import save

    tensors = {"input_ids": encoded.input_ids.flat, "offsets": encoded.input_ids.offsets,
               "kept": np.asarray(encoded.kept, dtype=np.int64)}
    if encoded.kind == "generation":  # labels are -100 over the prompt, then the ids themselves
        tensors["label_starts"] = encoded.labels.starts
    else:
        floats = any(isinstance(v, float) for v in encoded.labels)
        tensors["labels"] = np.asarray(encoded.labels, dtype=np.float64 if floats else np.int64)
    if encoded.token_type_ids is not None:
        tensors["token_type_ids"] = encoded.token_type_ids.flat
    meta = {"format": FORMAT, "key": key, "kind": encoded.kind, "pad_id": str(encoded.pad_id),
            "dropped": str(encoded.dropped)}
    return save(tensors, metadata=meta)


def read_encoded(path: Path, key: str) -> Encoded | None:
    """The split stored at `path` for `key`, or None when absent, unreadable, for another key or
    inconsistent (the caller then tokenises again and overwrites the file). The arrays become the
    `Encoded` as they are: no per-row Python objects are built."""
    from safetensors import SafetensorError
    from safetensors.numpy import load

    try:
        data = path.read_bytes()
    except OSError:
        return None
    try:
        tensors = load(data)
        meta = _metadata(data)
        if meta.get("format") != FORMAT or meta.get("key") != key:
            return None
        return _check(meta, tensors)
    except (SafetensorError, KeyError, ValueError, TypeError, IndexError, OverflowError):
        return None


def _metadata(data: bytes) -> dict:
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + size])
    meta = header.get("__metadata__")
    return meta if isinstance(meta, dict) else {}


def _check(meta: dict, tensors: dict) -> Encoded:
    """The `Encoded` of a file's arrays, verified to fit together; ValueError when they do not."""
    ids, offsets = tensors["input_ids"], tensors["offsets"]
    for name in ("input_ids", "offsets", "kept", "label_starts", "token_type_ids"):
        if name in tensors and (tensors[name].dtype != np.int64 or tensors[name].ndim != 1):
            raise ValueError(f"{name} is not a flat int64 array")
    if len(offsets) < 1 or offsets[0] != 0 or np.any(np.diff(offsets) < 0) or offsets[-1] != len(ids):
        raise ValueError("offsets")
    rows = Ragged(ids, offsets)
    n, kept = len(rows), tensors["kept"].tolist()
    types = tensors.get("token_type_ids")
    if len(kept) != n or (types is not None and len(types) != len(ids)):
        raise ValueError("row counts")
    kind = meta["kind"]
    if kind == "generation":
        starts = tensors["label_starts"]
        if len(starts) != n or np.any(starts < 0) or np.any(starts > rows.lengths()):
            raise ValueError("label starts")
        labels = PromptMasked(rows, starts)
    elif kind == "classification":
        labels = tensors["labels"].tolist()
        if len(labels) != n:
            raise ValueError("labels")
    else:
        raise ValueError("kind")
    return Encoded(kind=kind, input_ids=rows, labels=labels, pad_id=int(meta["pad_id"]),
                   dropped=int(meta["dropped"]), kept=kept,
                   token_type_ids=Ragged(types, offsets) if types is not None else None)
