"""Serving many adapters from one resident base: a mixed batch gives every row what it gets alone.

Adapters are made from the tiny random-init models with every LoRA tensor (and head) perturbed, so
B ≠ 0 and each adapter's rows differ from the base's and from each other's. "Alone" is the same
engine serving that one row by itself; greedy output and classifier probabilities are also
compared with `adapter predict` (`load_for_inference`) on the adapter alone.
"""

from __future__ import annotations

import copy
import functools

import pytest
import torch

from lora_engine.adapters.folder import AdapterMeta
from lora_engine.adapters.io import save_adapter
from lora_engine.errors import AdapterError, LoraFleetInputError
from lora_engine.generate import DecodeSettings
from lora_engine.inject import LoraSettings, inject_lora
from lora_engine.models import load_base_model
from lora_engine.predict import load_for_inference
from lora_engine.serving import Sampling, ServedBase

ATOL = 1e-5
TEXTS = ["the quick brown fox jumps over the lazy dog", "hello world", "a"]
PROMPTS = ["name[N1] eatType[pub]", "hello", "a much longer prompt than the others, with commas"]


@functools.cache
def base_model(alias: str, kind: str, labels: int | None):
    return load_base_model(alias, kind, labels)[0]


def make_adapter(folder, alias: str, kind: str, seed: int, settings: LoraSettings, *, labels: int = 3,
                 pooling: str = "cls"):
    """An adapter folder whose LoRA tensors and head are perturbed away from their initial values."""
    model = copy.deepcopy(base_model(alias, kind, labels if kind == "classification" else None))
    inject_lora(model, settings)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name or name.startswith(("classifier", "bert.pooler")):
                p.add_(0.2 * torch.randn(p.shape, generator=gen))
    classifies = kind == "classification"
    meta = AdapterMeta(base_model=alias, kind=kind, method=settings.method,
                       num_labels=labels if classifies else None,
                       label_names=tuple(f"{folder.name}-{i}" for i in range(labels)) if classifies else (),
                       pooling=pooling, max_length=24 if classifies else None,
                       prompt_template=None if classifies else "Q: {prompt}\nA:")
    save_adapter(model, folder, base_model_name=alias, settings=settings, task_type=kind, meta=meta)
    return folder


@pytest.fixture(scope="module")
def classifiers(tmp_path_factory):
    """tiny-bert and tiny-roberta: a [CLS] LoRA adapter and a mean-pooled all-linear adapter with
    other labels; tiny-bert also a DoRA adapter."""
    out = {}
    for alias in ("tiny-bert", "tiny-roberta"):
        root = tmp_path_factory.mktemp(alias)
        out[alias] = {
            "cls": make_adapter(root / "cls", alias, "classification", 1, LoraSettings(rank=4)),
            "mean": make_adapter(root / "mean", alias, "classification", 2,
                                 LoraSettings(rank=2, targets="all-linear"), labels=2, pooling="mean"),
        }
    dora = tmp_path_factory.mktemp("bert-dora") / "dora"
    out["tiny-bert"]["dora"] = make_adapter(dora, "tiny-bert", "classification", 3,
                                            LoraSettings(method="dora", rank=4))
    return out


@pytest.fixture(scope="module")
def generators(tmp_path_factory):
    out = {}
    for alias in ("tiny-gpt2", "tiny-llama"):
        root = tmp_path_factory.mktemp(alias)
        out[alias] = {
            "a": make_adapter(root / "a", alias, "generation", 4, LoraSettings(rank=4)),
            "b": make_adapter(root / "b", alias, "generation", 5, LoraSettings(rank=2, targets="all-linear")),
        }
    return out


@pytest.mark.parametrize("alias", ["tiny-bert", "tiny-roberta"])
def test_mixed_classify_batch_gives_each_row_its_solo_logits(classifiers, alias):
    served = ServedBase.load(alias, "classification")
    for key, folder in classifiers[alias].items():
        served.add_adapter(key, folder)
    items = [(key, text) for text in TEXTS for key in (*classifiers[alias], None)]
    mixed = served.classify(items)
    alone = [served.classify([item])[0] for item in items]
    for (key, _), m, a in zip(items, mixed, alone, strict=True):
        assert m.logits.shape == a.logits.shape == (2 if key == "mean" else 3 if key else 2,)
        torch.testing.assert_close(m.logits, a.logits, atol=ATOL, rtol=0)
        assert m.label == a.label and (key is None or m.label.startswith(key))
    # Every adapter's rows differ from the bare base's, and from each other's.
    by_key = {key: m.logits for (key, text), m in zip(items, mixed, strict=True) if text == TEXTS[0]}
    if alias == "tiny-bert":
        assert not torch.allclose(by_key["cls"], by_key["dora"], atol=1e-3)
    assert not torch.allclose(by_key["mean"], by_key[None], atol=1e-3)
    # What `adapter predict` answers for the adapter alone (its pooling, head and labels included).
    for key, folder in classifiers[alias].items():
        reference = load_for_inference(folder).classify(TEXTS)
        served_rows = served.classify([(key, t) for t in TEXTS])
        for ref, got in zip(reference, served_rows, strict=True):
            assert got.label == ref.label and got.label_index == ref.label_id
            assert got.probs == pytest.approx(ref.probabilities, abs=ATOL)


def run_alone(served, key, prompt_ids, sampling):
    handle = served.start(key, prompt_ids, sampling)
    steps = []
    while served.active:
        steps.append(served.step()[handle])
    return steps


@pytest.mark.parametrize("alias", ["tiny-gpt2", "tiny-llama"])
def test_mixed_decode_batch_gives_each_row_its_solo_logits_at_every_step(generators, alias):
    served = ServedBase.load(alias, "generation")
    for key, folder in generators[alias].items():
        served.add_adapter(key, folder)
    ids = [served.tokenizer(p, add_special_tokens=False)["input_ids"] for p in PROMPTS]
    # (key, prompt, settings, the step at which it joins); no stop ids: lengths are as planned,
    # so rows finish early (b after 2 tokens) and one joins mid-decode (after the batch's 2nd step).
    plan = [("a", ids[0], Sampling(max_tokens=6, stop_ids=()), 0),
            ("b", ids[1], Sampling(max_tokens=2, stop_ids=()), 0),
            (None, ids[2], Sampling(max_tokens=5, stop_ids=()), 0),
            ("b", ids[2], Sampling(max_tokens=5, temperature=1.0, top_p=0.9, seed=7, stop_ids=()), 0),
            ("a", ids[2], Sampling(max_tokens=4, stop_ids=()), 2),
            ("b", ids[0], Sampling(max_tokens=3, temperature=0.8, seed=3, stop_ids=()), 2)]
    solo = [run_alone(served, key, p, s) for key, p, s, _ in plan]
    mixed: dict[int, list] = {}
    handles: dict[int, int] = {}
    step = 0
    while step == 0 or served.active:
        for i, (key, p, s, joins) in enumerate(plan):
            if joins == step:
                handles[i] = served.start(key, p, s)
        for handle, token in served.step().items():
            mixed.setdefault(handle, []).append(token)
        step += 1
    for i, steps in enumerate(solo):
        got = mixed[handles[i]]
        assert len(got) == len(steps) == plan[i][2].max_tokens
        for alone, together in zip(steps, got, strict=True):
            torch.testing.assert_close(together.logits, alone.logits, atol=ATOL, rtol=0)
            assert together.token_id == alone.token_id  # sampled rows too: own seed, own logits
        assert got[-1].finished and got[-1].reason == "length"
    # The adapters change the model's answer: their first logits differ from the base's.
    first = {plan[i][0]: mixed[handles[i]][0].logits for i in (0, 1, 2)}
    assert not torch.allclose(first["a"], first["b"], atol=1e-3)


@pytest.mark.parametrize("alias", ["tiny-gpt2", "tiny-llama"])
def test_served_greedy_output_equals_adapter_predict(generators, alias):
    served = ServedBase.load(alias, "generation")
    for key, folder in generators[alias].items():
        served.add_adapter(key, folder)
    items = [(key, prompt) for prompt in PROMPTS for key in ("a", "b")]
    got = served.generate(items, Sampling(max_tokens=12))
    for key, folder in generators[alias].items():
        reference = load_for_inference(folder).generate(
            PROMPTS, decode=DecodeSettings(num_beams=1, no_repeat_ngram_size=0, max_new_tokens=12))
        assert [g for (k, _), g in zip(items, got, strict=True) if k == key] == reference
    assert got[0] != got[1]


def test_an_adapter_holds_only_its_lora_tensors_and_head(classifiers):
    served = ServedBase.load("tiny-bert", "classification")
    base_bytes = sum(p.numel() * p.element_size() for p in served.model.parameters())
    pointers = {p.data_ptr() for p in served.model.parameters()}
    sizes = {key: served.add_adapter(key, folder) for key, folder in classifiers["tiny-bert"].items()}
    # cls, fp32: rank 4 on query and value of 2 layers (A 4×64, B 64×4), classifier 3×64+3, pooler 64×64+64
    assert sizes["cls"] == 4 * (2 * 2 * (4 * 64 + 64 * 4) + 3 * 64 + 3 + 64 * 64 + 64)
    assert sizes["dora"] == sizes["cls"] + 4 * (2 * 2 * 64)  # DoRA's magnitude per output row
    assert served.adapter_bytes("mean") == sizes["mean"]
    # The base is shared, not copied: same tensors, same storage.
    assert sum(p.numel() * p.element_size() for p in served.model.parameters()) == base_bytes
    assert {p.data_ptr() for p in served.model.parameters()} == pointers
    assert served.adapter_meta("cls").label_names[0] == "cls-0"
    before = served.classify([("cls", TEXTS[0])])[0].logits
    served.remove_adapter("cls")
    with pytest.raises(LoraFleetInputError, match="no adapter 'cls'"):
        served.classify([("cls", TEXTS[0])])
    served.add_adapter("cls", classifiers["tiny-bert"]["cls"])  # reloads to the same answers
    torch.testing.assert_close(served.classify([("cls", TEXTS[0])])[0].logits, before, atol=ATOL, rtol=0)


def test_refusals_are_specific(classifiers, generators):
    served = ServedBase.load("tiny-bert", "classification")
    with pytest.raises(AdapterError, match="trained on 'tiny-roberta'"):
        served.add_adapter("r", classifiers["tiny-roberta"]["cls"])
    with pytest.raises(AdapterError, match="generation adapter"):
        served.add_adapter("g", generators["tiny-llama"]["a"])
    with pytest.raises(LoraFleetInputError, match="temperature"):
        Sampling(temperature=-1)
    gen = ServedBase.load("tiny-gpt2", "generation")
    with pytest.raises(LoraFleetInputError, match="512 positions"):
        gen.start(None, [1] * 500, Sampling(max_tokens=20))
    with pytest.raises(LoraFleetInputError, match="non-empty list of token ids"):
        gen.start(None, [], Sampling())
    with pytest.raises(LoraFleetInputError, match="does not classify"):
        gen.classify([(None, "x")])


def test_stop_ids_end_a_row_and_a_cancelled_row_leaves_the_others_untouched(generators):
    served = ServedBase.load("tiny-llama", "generation")
    served.add_adapter("a", generators["tiny-llama"]["a"])
    ids = served.prompt_ids("a", PROMPTS[0])
    free = run_alone(served, "a", ids, Sampling(max_tokens=5, stop_ids=()))
    stop = free[2].token_id
    stopped = run_alone(served, "a", ids, Sampling(max_tokens=5, stop_ids=(stop,)))
    first_stop = next(i for i, t in enumerate(free) if t.token_id == stop)
    assert len(stopped) == first_stop + 1 and stopped[-1].reason == "stop" and stopped[-1].token_id == stop
    keep = served.start("a", ids, Sampling(max_tokens=5, stop_ids=()))
    gone = served.start(None, served.prompt_ids(None, PROMPTS[2]), Sampling(max_tokens=5, stop_ids=()))
    got = [served.step()]
    served.cancel(gone)
    while served.active:
        got.append(served.step())
    assert all(gone not in step for step in got[1:])
    assert [s[keep].token_id for s in got] == [t.token_id for t in free]
    with pytest.raises(LoraFleetInputError, match="no generating row"):
        served.output_ids(keep)
