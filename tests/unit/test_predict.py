"""Inference from an adapter folder: classify and generate, unmerged and merged, and full models."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
DATA = Path(os.environ["LORAFLEET_DATA_DIR"])

from lora_engine.data import load_examples  # noqa: E402
from lora_engine.errors import AdapterError  # noqa: E402
from lora_engine.evaluate import generation_inputs  # noqa: E402
from lora_engine.generate import DecodeSettings, left_pad  # noqa: E402
from lora_engine.metrics import generation_metrics  # noqa: E402
from lora_engine.predict import load_for_inference  # noqa: E402
from lora_engine.recipe import train  # noqa: E402

SHORT = DecodeSettings(num_beams=1, no_repeat_ngram_size=0, max_new_tokens=12)
BEAM = DecodeSettings(num_beams=3, length_penalty=0.8, no_repeat_ngram_size=2, max_new_tokens=12)


@pytest.fixture(scope="module")
def sst2_adapter(tmp_path_factory):
    out = tmp_path_factory.mktemp("sst2") / "adapter"
    # A high lr so the adapter clearly moves the predictions away from the base model's.
    res = train({"task": "sst2", "base_model": "tiny-bert", "max_steps": 6, "batch_size": 16, "lr": 5e-3,
                 "eval_size": 64, "max_length": 64}, out, data_dir=DATA)
    return res


@pytest.fixture(scope="module")
def gen_adapter(tmp_path_factory):
    root = tmp_path_factory.mktemp("gen")
    rows = [{"prompt": f"name[N{i % 5}]\n", "completion": f"N{i % 5} is nice."} for i in range(40)]
    data = root / "g.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    res = train({"task": "custom-generation", "dataset": str(data), "base_model": "tiny-llama",
                 "max_steps": 8, "batch_size": 8, "lr": 1e-2, "max_length": 32}, root / "adapter",
                data_dir=DATA, decode=SHORT)
    return res, data


def test_classify_reproduces_the_evaluation(sst2_adapter):
    examples = load_examples("sst2", "validation", data_dir=DATA, limit=64)
    pred = load_for_inference(sst2_adapter.adapter_dir)
    out = pred.classify([e.text for e in examples])
    accuracy = sum(p.label_id == e.label for p, e in zip(out, examples, strict=True)) / len(examples)
    assert accuracy == pytest.approx(sst2_adapter.metrics["validation"]["accuracy"])
    assert {p.label for p in out} <= {"negative", "positive"}
    assert all(abs(sum(p.probabilities) - 1) < 1e-5 and p.score == max(p.probabilities) for p in out)


def test_merged_equals_unmerged_and_differs_from_base(sst2_adapter):
    texts = ["a gripping, funny film", "dull and far too long", "it was fine"]
    unmerged = load_for_inference(sst2_adapter.adapter_dir).classify(texts)
    merged_pred = load_for_inference(sst2_adapter.adapter_dir, merged=True)
    merged = merged_pred.classify(texts)
    for a, b in zip(unmerged, merged, strict=True):
        assert a.label_id == b.label_id
        torch.testing.assert_close(torch.tensor(a.probabilities), torch.tensor(b.probabilities),
                                   atol=1e-5, rtol=1e-5)
    assert merged_pred.merged and all(m.merged for m in merged_pred.model.modules() if hasattr(m, "merged"))
    # Without the adapter's LoRA (B zeroed), the probabilities change: the adapter is really applied.
    with torch.no_grad():
        for m in merged_pred.model.modules():
            if hasattr(m, "lora_B"):
                m.unmerge()
                m.lora_B.weight.zero_()
    bare = merged_pred.classify(texts)
    moved = [abs(a.probabilities[0] - b.probabilities[0]) for a, b in zip(unmerged, bare, strict=True)]
    assert max(moved) > 1e-4


def test_text_pairs_and_bad_inputs(sst2_adapter):
    pred = load_for_inference(sst2_adapter.adapter_dir)
    assert len(pred.classify([("first", "second"), "single"])) == 2
    with pytest.raises(ValueError, match="text pair"):
        pred.classify([("only one",)])
    with pytest.raises(ValueError, match="classifies"):
        pred.generate(["x"])


def test_generate_matches_evaluation_prompts_and_merging(gen_adapter):
    res, data = gen_adapter
    pred = load_for_inference(res.adapter_dir)
    prompts, refs = generation_inputs(load_examples("custom-generation", "validation", data_dir=DATA,
                                                    dataset=data), None)
    outs = pred.generate(prompts, decode=SHORT, as_prompts=True)
    # Same prompts, tokenisation and decoding as the run's evaluation: the same scores.
    assert generation_metrics(outs, refs) == pytest.approx(res.metrics["validation"])
    merged = load_for_inference(res.adapter_dir, merged=True).generate(prompts, decode=SHORT, as_prompts=True)
    assert merged == outs
    beams = pred.generate(prompts, decode=BEAM, as_prompts=True)
    assert len(beams) == len(prompts) and all(isinstance(b, str) for b in beams)
    with pytest.raises(ValueError, match="generates"):
        pred.classify(["x"])


def test_e2e_prompt_template_from_the_folder(gen_adapter, tmp_path):
    res, _ = gen_adapter
    folder = tmp_path / "copy"
    shutil.copytree(res.adapter_dir, folder)
    meta = json.loads((folder / "lorafleet.json").read_text())
    meta["prompt_template"] = "MR: {mr}\n"
    (folder / "lorafleet.json").write_text(json.dumps(meta))
    pred = load_for_inference(folder)
    assert pred.prompt_for("name[X]") == "MR: name[X]\n"


def test_full_model_folder_predicts(tmp_path):
    res = train({"task": "sst2", "base_model": "tiny-bert", "method": "full", "max_steps": 2, "batch_size": 8,
                 "eval_size": 16, "max_length": 64}, tmp_path / "full", data_dir=DATA)
    examples = load_examples("sst2", "validation", data_dir=DATA, limit=16)
    out = load_for_inference(res.adapter_dir).classify([e.text for e in examples])
    acc = sum(p.label_id == e.label for p, e in zip(out, examples, strict=True)) / len(examples)
    assert acc == pytest.approx(res.metrics["validation"]["accuracy"])


def test_missing_or_foreign_folder_is_a_clear_error(tmp_path):
    with pytest.raises(AdapterError, match="does not exist"):
        load_for_inference(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(AdapterError, match="not an adapter"):
        load_for_inference(tmp_path / "empty")


def test_left_pad():
    ids, mask = left_pad([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]


def _card_snippet(folder: Path) -> str:
    """The model card's code block that feeds a mean-pooled head outside lorafleet."""
    card = (folder / "README.md").read_text()
    return next(b.split("\n", 1)[1] for b in card.split("```python")[1:] if "mean = " in b).split("```")[0]


@pytest.mark.parametrize("method", ["lora", "full"])
def test_a_mean_pooled_classifier_predicts_as_it_evaluated(tmp_path, method):
    from lora_engine.forward.encoder import pooling_of, set_pooling
    from lora_engine.model_ref import base_pooling

    res = train({"task": "sst2", "base_model": "tiny-bert", "method": method, "pooling": "mean",
                 "max_steps": 4, "batch_size": 16, "lr": 5e-3 if method == "lora" else 1e-3, "eval_size": 48,
                 "max_length": 64}, tmp_path / "m", data_dir=DATA)
    folder = res.adapter_dir
    assert json.loads((folder / "lorafleet.json").read_text())["pooling"] == "mean"
    examples = load_examples("sst2", "validation", data_dir=DATA, limit=48)
    texts = [e.text for e in examples]
    pred = load_for_inference(folder)
    assert pooling_of(pred.model) == "mean"
    out = pred.classify(texts)
    accuracy = sum(p.label_id == e.label for p, e in zip(out, examples, strict=True)) / len(examples)
    assert accuracy == pytest.approx(res.metrics["validation"]["accuracy"])
    set_pooling(pred.model, "cls")  # the same weights read through [CLS]: other outputs
    assert [p.probabilities for p in pred.classify(texts)] != [p.probabilities for p in out]
    if method == "full":
        # The saved config carries it: a base of a later job, or from_pretrained, reads mean.
        assert json.loads((folder / "config.json").read_text())["classifier_pooling"] == "mean"
        assert base_pooling(str(folder)) == "mean"
        # The model card's recipe for Hugging Face users gives lorafleet's outputs.
        scope = {"texts": texts[:8]}
        exec(_card_snippet(folder).replace("<this folder>", str(folder)), scope)
        torch.testing.assert_close(scope["logits"].softmax(-1),
                                   torch.tensor([p.probabilities for p in out[:8]]), atol=1e-5, rtol=1e-4)
    else:
        assert "Pooling: **mean**" in (folder / "README.md").read_text()
