"""The serving engine's batched paths: length-bucketed attention equals the trainer's padded
attention, a classify batch of very different lengths (padding inside buckets) gives each row its
solo logits, and the slotted LoRA stack keeps every row exact through DoRA neighbours, growth,
removals, slot reuse and a rank larger than any before."""

from __future__ import annotations

import pytest
import torch

from lora_engine.forward.packing import Packing
from lora_engine.inject import LoraSettings
from lora_engine.serving import Sampling, ServedBase, layer
from lora_engine.serving.attention import LengthBuckets, cut_by_length
from tests.unit.test_serving_engine import ATOL, make_adapter, run_alone

LENGTHS = [7, 3, 12, 1, 9, 9, 30, 4, 5, 28]


def packed_batch(lengths: list[int], heads: int = 2, size: int = 8):
    gen = torch.Generator().manual_seed(0)
    mask = torch.zeros(len(lengths), max(lengths), dtype=torch.long)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
    q, k, v = (torch.randn(sum(lengths), heads, size, generator=gen) for _ in range(3))
    return Packing.from_mask(mask), q, k, v


@pytest.mark.parametrize("lengths", [LENGTHS, [5], [4, 4, 4], [1, 40]])
def test_bucketed_attention_equals_padded_attention(lengths):
    packing, q, k, v = packed_batch(lengths)
    buckets = LengthBuckets(lengths, q.device, q.dtype)
    expected = packing.attention(q, k, v, scale=0.35, causal=False)
    got = buckets.attention(q, k, v, scale=0.35, causal=False)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
    # Queries at each row's first token only (the last layer of a [CLS] classifier).
    first = packing.compact_positions(torch.arange(len(lengths)) * packing.length)
    q1 = q.index_select(0, first)
    expected = packing.attention(q1, k, v, scale=0.35, causal=False, query_positions=first)
    got = buckets.attention(q1, k, v, scale=0.35, causal=False, query_positions=first)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)


def test_rows_are_cut_into_few_buckets_of_similar_length():
    assert cut_by_length([10, 10, 12]) == [[0, 1, 2]]  # 12 ≤ 1.3·10: one bucket, a little padding
    assert cut_by_length([10, 3, 4, 13, 14]) == [[1], [2], [0, 3], [4]]
    assert len(cut_by_length(list(range(1, 100)))) == 6  # at most 6: the last takes the rest
    assert sorted(i for b in cut_by_length(LENGTHS) for i in b) == list(range(len(LENGTHS)))


def test_classify_rows_of_very_different_lengths_get_their_solo_logits(tmp_path):
    served = ServedBase.load("tiny-bert", "classification")
    served.add_adapter("cls", make_adapter(tmp_path / "cls", "tiny-bert", "classification", 1,
                                           LoraSettings(rank=4)))
    served.add_adapter("dora", make_adapter(tmp_path / "dora", "tiny-bert", "classification", 3,
                                            LoraSettings(method="dora", rank=4)))
    texts = [" ".join(["word"] * n) for n in (1, 2, 3, 5, 6, 9, 10, 14, 15, 20)]
    items = [(key, t) for t in texts for key in ("cls", "dora", None)]
    assert len(cut_by_length([len(served.tokenizer(t)["input_ids"]) for _, t in items])) > 1
    mixed = served.classify(items)
    for item, m in zip(items, mixed, strict=True):
        torch.testing.assert_close(m.logits, served.classify([item])[0].logits, atol=ATOL, rtol=0)


def test_decode_rows_stay_exact_through_dora_removals_and_slot_reuse(tmp_path, monkeypatch):
    monkeypatch.setattr(layer, "INITIAL_SLOTS", 2)  # the stacks grow (and regrow) with three adapters
    served = ServedBase.load("tiny-llama", "generation")
    folders = {"a": make_adapter(tmp_path / "a", "tiny-llama", "generation", 4, LoraSettings(rank=2)),
               "d": make_adapter(tmp_path / "d", "tiny-llama", "generation", 5,
                                 LoraSettings(method="dora", rank=4)),
               "c": make_adapter(tmp_path / "c", "tiny-llama", "generation", 6, LoraSettings(rank=2)),
               "big": make_adapter(tmp_path / "big", "tiny-llama", "generation", 7, LoraSettings(rank=8))}
    for key in ("a", "d", "c"):
        served.add_adapter(key, folders[key])
    prompt = served.prompt_ids(None, "name[N1] eatType[pub]")
    greedy = Sampling(max_tokens=4, stop_ids=())

    def together(keys):
        handles = [served.start(k, prompt, greedy) for k in keys]
        steps = {h: [] for h in handles}
        while served.active:
            for h, token in served.step().items():
                steps[h].append(token.logits)
        return [torch.stack(steps[h]) for h in handles]

    def alone(key):
        return torch.stack([t.logits for t in run_alone(served, key, prompt, greedy)])

    solo = {k: alone(k) for k in ("a", "d", "c", None)}
    for key, got in zip(("a", "d", "c", None), together(["a", "d", "c", None]), strict=True):
        torch.testing.assert_close(got, solo[key], atol=ATOL, rtol=0)
    served.remove_adapter("a")  # its slot is freed, then taken by a rank larger than the stack's
    served.add_adapter("big", folders["big"])
    for key, got in zip(("big", "d", "c"), together(["big", "d", "c"]), strict=True):
        torch.testing.assert_close(got, alone(key), atol=ATOL, rtol=0)
    torch.testing.assert_close(alone("c"), solo["c"], atol=ATOL, rtol=0)
    served.add_adapter("a", folders["a"])  # back again: the same answers as before
    torch.testing.assert_close(together(["a", "big"])[0], solo["a"], atol=ATOL, rtol=0)
