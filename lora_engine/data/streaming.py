"""A training split tokenised as its rows are asked for: the first step waits for one chunk, not
for the whole split.

    encoded = pending_split(examples, tokenizer, max_length)   # token cache hit: the whole split
    BucketBatchSampler(encoded.lengths, ...)                   # lengths read a chunk at a time
    collate(encoded.ready(indices), indices)                   # tokenises those rows first
    encoded.tokenise_rest()                                    # the rest: a thread, after training

Why: tokenising E2E's 41k completions is ~2.2 s of one core, more than SmolLM2's own load on a
busy machine, and step 1 needs only the rows of its batch's chunk (the sampler sorts one chunk of
`batch_size × bucket_factor` rows by length, 400 for a batch of 8: ~0.04 s). What must be known
before any batch, and is: the rows trained on. Held-out rows are drawn by a permutation of the
row count (`selection.split_holdout`), no length involved; for generation, the rows whose prompt
alone fills `max_length` are dropped, so every distinct prompt is tokenised first (E2E's 4.9k:
~0.4 s of the 2.6 s); classification rows are never dropped (they are truncated), so nothing is
tokenised before the first chunk.

Same result as tokenising at once, bit for bit: the rows are cut into parts and each part goes
through the very functions `encode_generation` / `encode_classification` compose
(`batching.generation_rows`, `classification_rows`), which tokenise each row independently of the
others; the sampler's random draws do not depend on the lengths (`BucketBatchSampler.plan`). When
the last row is tokenised, the whole `Encoded` is built as the eager functions build it and handed
to the token cache (`token_cache.keeper`), so the next job on the same data starts from it.

Where the rows are tokenised: a batch's chunk in the training thread, when the batch is first
drawn (~0.04 s a chunk); the rows no batch asked for in a thread of its own once training is over
(`recipe.finish_tokenising`), so that work competes with no step (beside step 1 it would take one
of the step's two cores for ~2 s, on E2E). Every call on the tokenizer holds the split's
turn, so two threads never use it at once (a call reconfigures its truncation); a thread asking
for rows goes first, waiting at most for the part of `PART_ROWS` being tokenised.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable, Sequence

import numpy as np

from lora_engine.data.batching import (
    Encoded,
    PromptMasked,
    classification_encoded,
    classification_rows,
    encode_examples,
    eos_id_of,
    generation_encoded,
    generation_prompts,
    generation_rows,
    pad_id_of,
)
from lora_engine.data.examples import GenerationExample

__all__ = ["PART_ROWS", "PendingEncoded", "pending_split"]

PART_ROWS = 512  # rows a background turn tokenises: ~0.03 s of E2E, what a chunk may wait for


def pending_split(examples: Sequence, tokenizer, max_length: int) -> Encoded | PendingEncoded:
    """The split of `examples` as the token cache remembers it (an `Encoded`), else a
    `PendingEncoded` that has tokenised only what decides the rows trained on; the cache gets the
    split when its last row is tokenised. Raises ValueError as `encode_examples` does."""
    from lora_engine.data import token_cache  # it imports batching, as this module does

    if max_length < 2:
        raise ValueError(f"max_length must be >= 2 (got {max_length})")
    key = token_cache.cache_key(examples, tokenizer, max_length)
    if key is None:  # nothing to remember it by: tokenised at once, as before
        return encode_examples(examples, tokenizer, max_length)
    known = token_cache.recall(key) or token_cache.in_progress(key)
    if known is not None:  # a split another job began is taken up where it is
        return known
    split = PendingEncoded(examples, tokenizer, max_length, on_complete=token_cache.keeper(key))
    token_cache.track(key, split)
    return split


class PendingEncoded:
    """A split whose rows are tokenised in parts, on demand or by `tokenise_rest()` in another
    thread. Reads like the `Encoded` it becomes: `len()`, `kind`, `pad_id`, `lengths` (a view
    that waits for the rows it is indexed with), `ready(indices)` for `collate`; the whole-split
    attributes (`input_ids`, `labels`, `token_type_ids`, `kept`, `dropped`) wait for every row."""

    def __init__(self, examples: Sequence, tokenizer, max_length: int, *,
                 on_complete: Callable[[Encoded], None] | None = None):
        self._tokenizer, self._max_length, self._on_complete = tokenizer, max_length, on_complete
        self._owned = False  # the tokenizer may be the caller's, used by it elsewhere
        self.pad_id = pad_id_of(tokenizer)
        generation = bool(examples) and isinstance(examples[0], GenerationExample)
        self.kind = "generation" if generation else "classification"
        if self.kind == "generation":
            self._eos = eos_id_of(tokenizer)
            prompts, kept = generation_prompts(examples, tokenizer, max_length)
            self._prompts = [prompts[i] for i in kept]
            self._starts = np.asarray([len(p) for p in self._prompts], dtype=np.int64)
            self._kept = kept
        else:
            self._kept = list(range(len(examples)))
            self._labels = [ex.label for ex in examples]
        self._examples, self._all = examples, len(examples)
        self._n = n = len(self._kept)
        self._rows: list[list[int] | None] = [None] * n
        self._types: list[list[int] | None] = [None] * n
        self._has_types = False
        self._lengths = np.full(n, -1, dtype=np.int64)  # -1: not tokenised yet
        self._left, self._scan = n, 0
        self._encoded: Encoded | None = None if n else self._build()
        self._cond = threading.Condition()
        self._busy, self._asking = False, 0
        self.lengths = PendingLengths(self)

    def __len__(self) -> int:
        return self._n

    def own(self, tokenizer) -> None:
        """Declare `tokenizer`, when it is the one this split tokenises with, used by nothing else
        (a cold setup's data thread loaded it for the split alone)."""
        self._owned = self._owned or self._tokenizer is tokenizer

    def owns_tokenizer(self) -> bool:
        return self._owned

    def own_copy(self) -> None:
        """Tokenise the rows still to do with a copy of the tokenizer that is the split's alone
        (~0.2 s for SmolLM2's), so a thread of its own may: the caller goes on using the first."""
        self._turn(asking=True)
        try:
            if self._encoded is None and not self._owned:
                self._tokenizer, self._owned = copy.deepcopy(self._tokenizer), True
        finally:
            self._end_turn()

    def rows_done(self) -> int:
        """Rows tokenised so far."""
        return self._n - self._left

    # --- rows on demand ---------------------------------------------------------------------------

    def ready(self, indices: Sequence[int]) -> Encoded | RowsSoFar:
        """What `collate` reads rows `indices` from, once they are tokenised."""
        self.ensure(indices)
        # The lists first: the last part done meanwhile sets `_encoded`, then drops (never empties)
        # them, so lists read before `_encoded` is seen unset hold every row asked for.
        rows, types = self._rows, self._types
        if self._encoded is not None:
            return self._encoded
        labels = PromptMasked(rows, self._starts) if self.kind == "generation" else self._labels
        return RowsSoFar(self.kind, rows, labels, self.pad_id, types if self._has_types else None)

    def ensure(self, indices: Sequence[int] | np.ndarray) -> None:
        """Tokenise rows `indices` now unless done (waiting for the background part under way)."""
        indices = np.asarray(indices, dtype=np.int64)
        if self._encoded is not None or not np.any(self._lengths[indices] < 0):
            return
        self._turn(asking=True)
        try:
            missing = np.unique(indices[self._lengths[indices] < 0])  # done meanwhile: not again
            self._tokenise(missing.tolist())
        finally:
            self._end_turn()

    def complete(self) -> Encoded:
        """The whole split (every row tokenised, here if no other thread does it)."""
        if self._encoded is None:
            self.ensure(np.arange(len(self)))
        return self._encoded

    def tokenise_rest(self) -> None:
        """Tokenise every row not yet done, `PART_ROWS` at a time, giving way to any thread that
        asks for rows. Meant for a thread of its own: it returns when the split is complete."""
        while self._encoded is None:
            self._turn(asking=False)
            try:
                while self._scan < len(self) and self._lengths[self._scan] >= 0:
                    self._scan += 1
                part = [i for i in range(self._scan, min(self._scan + PART_ROWS, len(self)))
                        if self._lengths[i] < 0]
                self._tokenise(part)
            finally:
                self._end_turn()

    # --- the whole split --------------------------------------------------------------------------

    @property
    def input_ids(self):
        return self.complete().input_ids

    @property
    def labels(self):
        return self.complete().labels

    @property
    def token_type_ids(self):
        return self.complete().token_type_ids

    @property
    def kept(self) -> list[int]:
        return self.complete().kept

    @property
    def dropped(self) -> int:
        return self.complete().dropped

    # --- inside a turn ----------------------------------------------------------------------------

    def _turn(self, *, asking: bool) -> None:
        with self._cond:
            self._asking += asking
            while self._busy or (not asking and self._asking):
                self._cond.wait()
            self._asking -= asking
            self._busy = True

    def _end_turn(self) -> None:
        with self._cond:
            self._busy = False
            self._cond.notify_all()

    def _tokenise(self, rows: list[int]) -> None:
        if not rows:
            return
        if self.kind == "generation":
            ids = generation_rows([self._examples[self._kept[r]].completion for r in rows],
                                  [self._prompts[r] for r in rows], self._tokenizer, self._max_length,
                                  self._eos)
            types, has_types = [None] * len(rows), False
        else:
            ids, types, has_types = classification_rows([self._examples[r] for r in rows], self._tokenizer,
                                                        self._max_length)
        self._has_types = self._has_types or has_types
        for r, row, row_types in zip(rows, ids, types, strict=True):
            self._rows[r], self._types[r] = row, row_types
            self._lengths[r] = len(row)  # last: a row shows as done once all of it is in place
        self._left -= len(rows)
        if self._left == 0:
            self._encoded = self._build()
            if self._on_complete is not None:
                self._on_complete(self._encoded)
            # What only the tokenising needed; the built split holds the rows now.
            self._rows, self._types, self._tokenizer = [], [], None

    def _build(self) -> Encoded:
        if self.kind == "generation":
            return generation_encoded(self._rows, self._starts, self._kept, self._all, self.pad_id)
        return classification_encoded(self._examples, self._rows, self._types, self._has_types, self.pad_id)


class PendingLengths:
    """The rows' lengths of a `PendingEncoded`, as `BucketBatchSampler` reads them: indexing with
    an array of row indices tokenises those rows first."""

    __slots__ = ("_split",)

    def __init__(self, split: PendingEncoded):
        self._split = split

    def __len__(self) -> int:
        return len(self._split)

    def __getitem__(self, indices) -> np.ndarray:
        self._split.ensure(np.atleast_1d(np.asarray(indices, dtype=np.int64)))
        return self._split._lengths[indices]


class RowsSoFar:
    """The rows of a `PendingEncoded` tokenised so far, as `collate` reads them (only the rows it
    was made ready for may be read)."""

    __slots__ = ("input_ids", "kind", "labels", "pad_id", "token_type_ids")

    def __init__(self, kind: str, input_ids: list, labels: Sequence, pad_id: int,
                 token_type_ids: list | None):
        self.kind, self.input_ids, self.labels, self.pad_id = kind, input_ids, labels, pad_id
        self.token_type_ids = token_type_ids
