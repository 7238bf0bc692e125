"""Tokenise once, batch by length, pad each batch only to its longest row.

Why it is fast: padding everything to a fixed length (64, 128) spends most of the compute on pad
tokens, since GLUE/E2E rows are mostly short. Here a split is tokenised once with the fast
tokenizer's batch call, and batches are drawn from length-sorted buckets: indices are shuffled,
cut into chunks of `bucket_factor × batch_size`, each chunk is sorted by length and cut into
batches, and the batch order is shuffled. Rows in a batch then have similar lengths, so padding to
the batch's longest row wastes little, while the chunking keeps batches random across epochs.

Generation rows: the prompt and the completion are tokenised SEPARATELY and concatenated,
``prompt_ids + completion_ids + [eos]``, because at generation time the model sees exactly the
prompt's ids and must continue from that boundary; tokenising the joined text could merge the
last prompt token with the first completion token. Labels are -100 (`IGNORE_INDEX`) on the prompt
and on padding, so the loss is the completion's (and eos's) negative log-likelihood only.

Padding side: training batches pad on the RIGHT (positions then start at 0 for every row, and the
causal mask never lets a real token attend to a pad). Prompts for batched generation pad on the
LEFT (`lora_engine.generate.left_pad`), so every row's next token is at the last position.

The sampler is deterministic and resumable: the batches of an epoch are a pure function of
(seed, epoch, lengths, batch_size, bucket_factor), and its state is (epoch, position), so a run
restored from `state_dict()` continues with exactly the batches it had not yet seen.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from lora_engine.data.examples import ClassificationExample, GenerationExample

IGNORE_INDEX = -100


class Ragged(Sequence):
    """Rows of ints of different lengths, stored flat: row i is `flat[offsets[i]:offsets[i + 1]]`.

    A tokenised split lives in two numpy arrays instead of one Python list per row: E2E's 42k rows
    (1M ids) read back from the token cache in milliseconds instead of ~0.7 s of list building,
    and take 8 bytes an id instead of ~36. Indexing gives a row as a list of Python ints, as the
    tokenizer returned it; rows are read-only.
    """

    __slots__ = ("flat", "offsets")

    def __init__(self, flat: np.ndarray, offsets: np.ndarray):
        self.flat, self.offsets = flat, offsets

    @classmethod
    def of(cls, rows: Sequence[Sequence[int]]) -> Ragged:
        offsets = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows)), out=offsets[1:])
        flat = np.fromiter((t for r in rows for t in r), dtype=np.int64, count=int(offsets[-1]))
        return cls(flat, offsets)

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(len(self))[i]]
        i = range(len(self))[i]  # negative indices, IndexError past the end
        return self.flat[self.offsets[i]:self.offsets[i + 1]].tolist()

    def __eq__(self, other) -> bool:
        if isinstance(other, Ragged):
            return np.array_equal(self.offsets, other.offsets) and np.array_equal(self.flat, other.flat)
        if isinstance(other, Sequence) and not isinstance(other, str):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other, strict=True))
        return NotImplemented


class PromptMasked(Sequence):
    """Generation labels without storing them: row i is the ids of row i with its first `starts[i]`
    positions (the prompt) replaced by `IGNORE_INDEX`."""

    __slots__ = ("ids", "starts")

    def __init__(self, ids: Ragged, starts: np.ndarray):
        self.ids, self.starts = ids, starts

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(len(self))[i]]
        i = range(len(self))[i]
        start = int(self.starts[i])
        return [IGNORE_INDEX] * start + self.ids[i][start:]

    def __eq__(self, other) -> bool:
        if isinstance(other, PromptMasked):
            return self.ids == other.ids and np.array_equal(self.starts, other.starts)
        if isinstance(other, Sequence) and not isinstance(other, str):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other, strict=True))
        return NotImplemented


@dataclass
class Encoded:
    """One split, tokenised once. For generation, `labels[i]` is a list of label ids per token."""

    kind: str  # "classification" | "generation"
    input_ids: Ragged
    labels: Sequence  # a label per row (classification), `PromptMasked` rows (generation)
    pad_id: int
    token_type_ids: Ragged | None = None
    dropped: int = 0  # generation rows dropped because the prompt alone filled max_length
    kept: list[int] = field(default_factory=list)  # index into the examples of each encoded row

    @property
    def lengths(self) -> np.ndarray:
        return self.input_ids.lengths()

    def __len__(self) -> int:
        return len(self.input_ids)

    def ready(self, indices: Sequence[int]) -> Encoded:
        """What `collate` reads rows `indices` from: every row of a whole split is ready (a split
        still being tokenised, `streaming.PendingEncoded`, waits for those rows first)."""
        return self


def pad_id_of(tokenizer) -> int:
    # GPT-2 has no pad token; any id works for padding because padding is masked out everywhere.
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise ValueError("the tokenizer has neither a pad nor an eos token; cannot pad batches")
    return int(pad)


def classification_rows(examples: Sequence[ClassificationExample], tokenizer,
                        max_length: int) -> tuple[list[list[int]], list[list[int] | None], bool]:
    """(input ids, token type ids, whether the tokenizer gave type ids) of `examples`, truncated to
    `max_length`; single texts and pairs in one batch call each (the batch API wants one or the
    other). Rows are tokenised independently: any cut of a split into parts gives the same rows."""
    n = len(examples)
    input_ids: list[list[int] | None] = [None] * n
    type_ids: list[list[int] | None] = [None] * n
    has_types = False
    for paired in (False, True):
        idx = [i for i, ex in enumerate(examples) if (ex.text_pair is not None) == paired]
        if not idx:
            continue
        texts = [examples[i].text for i in idx]
        pairs = [examples[i].text_pair for i in idx] if paired else None
        enc = tokenizer(texts, pairs, truncation=True, max_length=max_length)
        types = enc.get("token_type_ids")
        has_types = has_types or types is not None
        for j, i in enumerate(idx):
            input_ids[i] = enc["input_ids"][j]
            type_ids[i] = types[j] if types is not None else None
    return input_ids, type_ids, has_types


def classification_encoded(examples: Sequence[ClassificationExample], input_ids: Sequence[list[int]],
                           type_ids: Sequence[list[int] | None], has_types: bool, pad_id: int) -> Encoded:
    """The `Encoded` of a classification split from its rows' ids (`classification_rows`)."""
    return Encoded(
        kind="classification",
        input_ids=Ragged.of(input_ids),
        labels=[ex.label for ex in examples],
        pad_id=pad_id,
        token_type_ids=Ragged.of(type_ids) if has_types else None,
        kept=list(range(len(examples))),
    )


def encode_classification(
    examples: Sequence[ClassificationExample], tokenizer, max_length: int
) -> Encoded:
    """Tokenise (text[, text_pair]) with truncation to `max_length`; one batch call per shape."""
    input_ids, type_ids, has_types = classification_rows(examples, tokenizer, max_length)
    return classification_encoded(examples, input_ids, type_ids, has_types, pad_id_of(tokenizer))


def encode_prompts(tokenizer, prompts: Sequence[str]) -> list[list[int]]:
    """Prompt ids exactly as training saw them (no special tokens added): use for generation too."""
    return tokenizer(list(prompts), add_special_tokens=False)["input_ids"]


def eos_id_of(tokenizer) -> int:
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("the tokenizer has no eos token; generation training needs one to learn to stop")
    return int(eos)


def generation_prompts(examples: Sequence[GenerationExample], tokenizer,
                       max_length: int) -> tuple[list[list[int]], list[int]]:
    """(each row's prompt ids, the rows kept): a row whose prompt alone fills `max_length` has no
    completion token left to learn from and is dropped. Each distinct prompt is tokenised once
    (E2E repeats every MR for each of its references: 4.9k of 42k)."""
    distinct = list(dict.fromkeys(ex.prompt for ex in examples))
    by_prompt = dict(zip(distinct, encode_prompts(tokenizer, distinct), strict=True))
    prompts = [by_prompt[ex.prompt] for ex in examples]
    return prompts, [i for i, p in enumerate(prompts) if len(p) < max_length]


def generation_rows(completions: Sequence[str], prompts: Sequence[list[int]], tokenizer, max_length: int,
                    eos: int) -> list[list[int]]:
    """``prompt_ids + completion_ids + [eos]`` cut to `max_length`, row by row (a cut row loses its
    tail and its eos, never its prompt); rows are tokenised independently of each other."""
    ids = tokenizer(list(completions), add_special_tokens=False)["input_ids"]
    return [(p + c + [eos])[:max_length] for p, c in zip(prompts, ids, strict=True)]


def generation_encoded(rows: Sequence[list[int]], starts: Sequence[int], kept: list[int], examples: int,
                       pad_id: int) -> Encoded:
    """The `Encoded` of a generation split from its kept rows' ids and prompt lengths."""
    ids = Ragged.of(rows)
    return Encoded(
        kind="generation",
        input_ids=ids,
        labels=PromptMasked(ids, np.asarray(starts, dtype=np.int64)),
        pad_id=pad_id,
        dropped=examples - len(kept),
        kept=kept,
    )


def encode_generation(examples: Sequence[GenerationExample], tokenizer, max_length: int) -> Encoded:
    """``prompt_ids + completion_ids + [eos]``, cut to `max_length`; labels -100 on the prompt.

    A row whose prompt alone fills `max_length` has no completion token left to learn from and is
    dropped (counted in `dropped`). A cut row loses its tail (and its eos), never its prompt.
    """
    eos = eos_id_of(tokenizer)
    prompts, kept = generation_prompts(examples, tokenizer, max_length)
    rows = generation_rows([examples[i].completion for i in kept], [prompts[i] for i in kept], tokenizer,
                           max_length, eos)
    starts = [len(prompts[i]) for i in kept]
    return generation_encoded(rows, starts, kept, len(examples), pad_id_of(tokenizer))


def encode_examples(examples: Sequence, tokenizer, max_length: int) -> Encoded:
    """A training split tokenised, or the same split remembered from an earlier job (keyed by the
    rows' content, the tokenizer and `max_length`; see `token_cache`). Treat the result as
    read-only: the next job on the same data may be handed the same object."""
    from lora_engine.data.token_cache import cached_encode  # it imports this module

    if max_length < 2:
        raise ValueError(f"max_length must be >= 2 (got {max_length})")
    if examples and isinstance(examples[0], GenerationExample):
        return cached_encode(examples, tokenizer, max_length,
                             lambda: encode_generation(examples, tokenizer, max_length))
    return cached_encode(examples, tokenizer, max_length,
                         lambda: encode_classification(examples, tokenizer, max_length))


@dataclass
class Batch:
    inputs: dict[str, torch.Tensor]  # input_ids, attention_mask[, token_type_ids], labels
    indices: list[int]  # rows of the Encoded split, in batch order
    examples: int
    tokens: int  # non-pad tokens (what "tokens trained" counts)
    target_tokens: int  # tokens that carry a loss (all rows for classification: one label each)
    # What turns this batch's mean loss into its part of the mean over the whole batch: 1 for a
    # whole batch; a data-parallel rank's slice gets its share (lora_engine.multidevice.parallel).
    share: float = 1.0


def _pad_rows(rows: list[list[int]], width: int, value: int) -> np.ndarray:
    out = np.full((len(rows), width), value, dtype=np.int64)
    for r, ids in enumerate(rows):
        out[r, : len(ids)] = ids
    return out


def collate(encoded: Encoded, indices: Sequence[int]) -> Batch:
    """Right-padded tensors for rows `indices`, padded to the longest of them only."""
    indices = [int(i) for i in indices]
    rows = [encoded.input_ids[i] for i in indices]
    width = max(len(r) for r in rows)
    ids = _pad_rows(rows, width, encoded.pad_id)
    mask = _pad_rows([[1] * len(r) for r in rows], width, 0)
    inputs = {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask)}
    if encoded.token_type_ids is not None:
        inputs["token_type_ids"] = torch.from_numpy(
            _pad_rows([encoded.token_type_ids[i] for i in indices], width, 0)
        )
    if encoded.kind == "generation":
        labels = torch.from_numpy(_pad_rows([encoded.labels[i] for i in indices], width, IGNORE_INDEX))
        target = int((labels != IGNORE_INDEX).sum())
    else:
        values = [encoded.labels[i] for i in indices]
        dtype = torch.float32 if isinstance(values[0], float) else torch.long
        labels = torch.tensor(values, dtype=dtype)
        target = len(indices)
    inputs["labels"] = labels
    return Batch(inputs, indices, len(indices), int(mask.sum()), target)


def sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Evaluation order: longest rows first (a memory problem shows at once), no shuffling.

    Callers map outputs back through each batch's indices.
    """
    order = np.argsort(-np.asarray(lengths), kind="stable")
    return [order[i : i + batch_size].tolist() for i in range(0, len(order), batch_size)]


class BucketBatchSampler:
    """Length-bucketed random batches; deterministic in (seed, epoch) and resumable by position.

    `position` counts the batches of the current epoch already handed out, so a `state_dict()`
    taken after training on a batch resumes at the next one. Iterating yields the rest of the
    current epoch (rolling over to the next epoch first if this one is used up); `forever()`
    chains epochs for step-budgeted loops.
    """

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        *,
        seed: int = 0,
        shuffle: bool = True,
        bucket_factor: int = 50,
        drop_last: bool = False,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1 (got {batch_size})")
        if bucket_factor < 1:
            raise ValueError(f"bucket_factor must be >= 1 (got {bucket_factor})")
        # The lengths of a split still being tokenised (`streaming.PendingEncoded.lengths`) are
        # read a chunk at a time, when a batch of that chunk is first handed out: the first
        # batch needs one chunk's rows tokenised, not the whole split's.
        self.lengths = (np.asarray(lengths, dtype=np.int64)
                        if isinstance(lengths, Sequence | np.ndarray) else lengths)
        if len(self.lengths) == 0:
            raise ValueError("no rows to batch")
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.bucket_factor = bucket_factor
        self.drop_last = drop_last
        self.epoch = 0
        self.position = 0
        # epoch -> (row order, each batch's (chunk, start in the chunk), the chunks sorted so far)
        self._plan: tuple[int, np.ndarray, list[tuple[int, int]], dict[int, np.ndarray]] | None = None

    def plan(self, epoch: int) -> tuple[np.ndarray, list[tuple[int, int]], dict[int, np.ndarray]]:
        """The batches of `epoch` without the rows' lengths: the row order, then where each batch
        lies, (chunk, start within the chunk after sorting it by length), in batch order. The
        draws are the same whatever the lengths: `permutation(rows)`, then `permutation(batches)`
        (how many batches a chunk gives depends only on its size)."""
        if self._plan is not None and self._plan[0] == epoch:
            return self._plan[1:]
        n, bs = len(self.lengths), self.batch_size
        rng = np.random.Generator(np.random.PCG64([self.seed, epoch]))
        order = rng.permutation(n) if self.shuffle else np.arange(n)
        chunk = bs * self.bucket_factor
        spans: list[tuple[int, int]] = []
        for c, start in enumerate(range(0, n, chunk)):
            size = min(chunk, n - start)
            spans.extend((c, i) for i in range(0, size, bs) if not (self.drop_last and size - i < bs))
        if self.shuffle:
            spans = [spans[i] for i in rng.permutation(len(spans))]
        self._plan = (epoch, order, spans, {})
        return self._plan[1:]

    def batch(self, epoch: int, k: int) -> np.ndarray:
        """Batch `k` of `epoch` (an index array): its chunk sorted by length (stable), then cut."""
        order, spans, sorted_chunks = self.plan(epoch)
        c, start = spans[k]
        part = sorted_chunks.get(c)
        if part is None:
            chunk = self.batch_size * self.bucket_factor
            part = order[c * chunk:(c + 1) * chunk]
            part = sorted_chunks[c] = part[np.argsort(self.lengths[part], kind="stable")]
        return part[start:start + self.batch_size]

    def epoch_batches(self, epoch: int) -> list[np.ndarray]:
        """All batches of `epoch` (index arrays), a pure function of the settings and `epoch`."""
        return [self.batch(epoch, k) for k in range(len(self.plan(epoch)[1]))]

    def __len__(self) -> int:
        """Batches per epoch."""
        return len(self.plan(self.epoch)[1])

    def __iter__(self) -> Iterator[list[int]]:
        if self.position >= len(self):
            self.epoch, self.position = self.epoch + 1, 0
        while self.position < len(self):
            batch = self.batch(self.epoch, self.position)
            self.position += 1  # counted when handed out: a checkpoint taken now resumes after it
            yield batch.tolist()

    def forever(self) -> Iterator[list[int]]:
        while True:
            yield from self

    def state_dict(self) -> dict:
        return {
            "seed": self.seed,
            "epoch": self.epoch,
            "position": self.position,
            "batch_size": self.batch_size,
            "bucket_factor": self.bucket_factor,
            "shuffle": self.shuffle,
            "drop_last": self.drop_last,
            "num_rows": len(self.lengths),
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore (epoch, position); the data and batching settings must be the ones saved."""
        mine = self.state_dict()
        fixed = ("seed", "batch_size", "bucket_factor", "shuffle", "drop_last", "num_rows")
        diff = [f"{k}: saved {state.get(k)!r}, now {mine[k]!r}" for k in fixed if state.get(k) != mine[k]]
        if diff:
            raise ValueError("sampler state does not match this data/batching: " + "; ".join(diff))
        epoch, position = int(state["epoch"]), int(state["position"])
        if epoch < 0 or not 0 <= position <= len(self.plan(epoch)[1]):
            raise ValueError(f"sampler state out of range: epoch {epoch}, position {position}")
        self.epoch, self.position = epoch, position
