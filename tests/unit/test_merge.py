"""Merge equivalence with B ≠ 0 (peft's _test_merge_layers pattern): unmerged = merged =
unmerged-again = a plain model loaded strictly from the merged weights, all different from the base."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from lora_engine.inject import (
    LoraSettings,
    export_merged,
    inject_lora,
    lora_modules,
    merge_lora,
    unmerge_lora,
)
from lora_engine.layers import LORA_LAYERS

CASES = [("tiny-gpt2", "classification"), ("tiny-bert", "classification"),
         ("tiny-roberta", "classification"), ("tiny-llama", "generation")]


@pytest.mark.parametrize("method", ["lora", "rslora", "dora"])
@pytest.mark.parametrize(("alias", "kind"), CASES)
def test_merge_equivalence(tiny_model, tiny_inputs, perturb_lora, tmp_path, alias, kind, method):
    # LoRA's A (and DoRA's magnitude) start from the global generator: seeded, so how far the
    # adapted model is from the base does not depend on which tests ran before this one.
    torch.manual_seed(0)
    model, tok = tiny_model(alias, kind)
    batch = tiny_inputs(tok)
    with torch.no_grad():
        base_out = model(**batch).logits
    inject_lora(model, LoraSettings(method=method, rank=4, alpha=8, dropout=0.1))
    perturb_lora(model)
    model.eval()
    with torch.no_grad():
        unmerged = model(**batch).logits
        merge_lora(model)
        weights = {n: m.weight.detach().clone() for n, m in lora_modules(model)}
        merge_lora(model)  # twice: a no-op
        assert all(torch.equal(m.weight, weights[n]) for n, m in lora_modules(model))
        merged = model(**batch).logits
        unmerge_lora(model)
        again = model(**batch).logits

    plain = export_merged(model)
    assert not any(isinstance(m, LORA_LAYERS) for m in plain.modules())
    assert any(isinstance(m, LORA_LAYERS) for m in model.modules())  # the LoRA model is kept
    plain.save_pretrained(tmp_path)
    auto = AutoModelForCausalLM if kind == "generation" else AutoModelForSequenceClassification
    loaded, info = auto.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    with torch.no_grad():
        reloaded = loaded.eval()(**batch).logits

    assert not torch.allclose(unmerged, base_out, atol=1e-3)
    for out in (merged, again, reloaded):
        torch.testing.assert_close(out, unmerged, atol=1e-5, rtol=1e-5)


def test_export_inplace_gives_plain_model(tiny_model, tiny_inputs, perturb_lora):
    model, tok = tiny_model("tiny-gpt2")
    inject_lora(model, LoraSettings(rank=2, targets=["c_attn", "c_proj", "c_fc"]))
    perturb_lora(model)
    batch = tiny_inputs(tok)
    with torch.no_grad():
        want = model(**batch).logits
    reference = copy.deepcopy(model)
    plain = export_merged(model, inplace=True)
    assert plain is model and not lora_modules(plain)
    with torch.no_grad():
        torch.testing.assert_close(plain(**batch).logits, want, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(reference(**batch).logits, want, atol=0, rtol=0)
