"""Injection: targets, closed-form trainable counts, trainability, and clear errors on bad input."""

from __future__ import annotations

import pytest
import torch
from transformers import BertConfig, BertModel, GPT2Config, GPT2Model

from lora_engine.errors import LoraConfigError
from lora_engine.inject import (
    LoraSettings,
    default_targets,
    head_module_names,
    inject_lora,
    lora_state_dict,
    mark_only_lora_as_trainable,
)
from lora_engine.layers import LoRALinear
from tests.model_state import assert_unchanged, snapshot


@pytest.mark.parametrize(("alias", "kind", "targets", "head"), [
    ("tiny-gpt2", "classification", ["c_attn"], ["score"]),
    ("tiny-bert", "classification", ["query", "value"], ["classifier", "bert.pooler"]),
    ("tiny-roberta", "classification", ["query", "value"], ["classifier"]),
    ("tiny-llama", "generation", ["q_proj", "v_proj"], []),
])
def test_default_targets_and_heads(tiny_model, alias, kind, targets, head):
    model, _ = tiny_model(alias, kind)
    assert default_targets(model) == targets
    assert head_module_names(model) == head
    names = inject_lora(model, LoraSettings(rank=2))
    assert len(names) == 2 * len(targets)  # 2 layers
    assert all(name.rsplit(".", 1)[-1] in targets for name in names)
    assert all(isinstance(model.get_submodule(n), LoRALinear) for n in names)


def test_gpt2_size_trainable_count_closed_form():
    # gpt2-size widths (768 → 2304 c_attn), 2 layers, tiny vocab: the count depends on widths only.
    model = GPT2Model(GPT2Config(n_layer=2, vocab_size=16, n_positions=32))
    inject_lora(model, LoraSettings(rank=4, alpha=8))
    n = mark_only_lora_as_trainable(model)
    assert n == 2 * 4 * (768 + 2304)
    assert n == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert set(lora_state_dict(model)) == {
        f"h.{i}.attn.c_attn.lora_{ab}.weight" for i in (0, 1) for ab in "AB"}


def test_bert_base_size_dora_count_closed_form():
    cfg = BertConfig(num_hidden_layers=2, vocab_size=16, max_position_embeddings=32)
    model = BertModel(cfg)
    inject_lora(model, LoraSettings(method="dora", rank=8))
    # per layer, query and value: A (8×768) + B (768×8) + magnitude (768)
    assert mark_only_lora_as_trainable(model) == 2 * 2 * (8 * (768 + 768) + 768)


def test_all_linear_excludes_heads_and_lm_head(tiny_model):
    model, _ = tiny_model("tiny-roberta")
    names = inject_lora(model, LoraSettings(rank=2, targets=["all-linear"]))
    assert not any(n.startswith("classifier") for n in names)
    assert "roberta.encoder.layer.1.output.dense" in names
    llama, _ = tiny_model("tiny-llama", "generation")
    names = inject_lora(llama, LoraSettings(rank=2, targets="all-linear"))
    assert "lm_head" not in names and len(names) == 2 * 7


def test_targets_matching_nothing_lists_linear_layers_and_leaves_model(tiny_model):
    model, _ = tiny_model("tiny-llama", "generation")
    snap = snapshot(model)
    with pytest.raises(LoraConfigError, match=r"match no layer.*model\.layers\.0\.self_attn\.q_proj") as err:
        inject_lora(model, LoraSettings(rank=2, targets=["proj"]))  # suffix means a whole name part
    assert isinstance(err.value, ValueError)
    assert_unchanged(model, snap)


@pytest.mark.parametrize(("settings", "pattern"), [
    (LoraSettings(rank=0), r"rank must be a positive integer, got 0"),
    (LoraSettings(rank=-3), r"rank must be a positive integer, got -3"),
    (LoraSettings(rank=65), r"rank 65 is too large for layer 'transformer\.h\.0\.attn\.c_attn'.*1\.\.64"),
    (LoraSettings(method="qlora"),
     r"unknown LoRA method 'qlora'; allowed: lora, rslora, dora, loraplus, pissa, olora"),
    (LoraSettings(method="full"), r"method 'full' is full fine-tuning.*injects no LoRA"),
    (LoraSettings(dropout=1.0), r"dropout must be in \[0, 1\)"),
    (LoraSettings(targets=["ln_1"]), r"'transformer\.h\.0\.ln_1' is a LayerNorm, not a Linear"),
])
def test_bad_settings_raise_clear_error_and_leave_model_unchanged(tiny_model, settings, pattern):
    model, _ = tiny_model("tiny-gpt2")
    snap = snapshot(model)
    with pytest.raises(LoraConfigError, match=pattern):
        inject_lora(model, settings)
    assert_unchanged(model, snap)


def test_second_injection_is_refused(tiny_model):
    model, _ = tiny_model("tiny-bert")
    inject_lora(model, LoraSettings(rank=2))
    with pytest.raises(LoraConfigError, match="already has LoRA layers"):
        inject_lora(model, LoraSettings(rank=2))


def test_bias_modes_and_modules_to_save(tiny_model):
    model, _ = tiny_model("tiny-bert")
    inject_lora(model, LoraSettings(rank=2))
    lora_only = {n for n, p in model.named_parameters() if "lora_" in n}
    mark_only_lora_as_trainable(model)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == lora_only
    mark_only_lora_as_trainable(model, bias="lora_only", modules_to_save=["classifier"])
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == lora_only | {"classifier.weight", "classifier.bias",
                                     *(f"bert.encoder.layer.{i}.attention.self.{t}.bias"
                                       for i in (0, 1) for t in ("query", "value"))}
    mark_only_lora_as_trainable(model, bias="all")
    assert "bert.encoder.layer.0.output.LayerNorm.bias" in {
        n for n, p in model.named_parameters() if p.requires_grad}
    with pytest.raises(LoraConfigError, match="bias must be one of none, all, lora_only"):
        mark_only_lora_as_trainable(model, bias="some")
    with pytest.raises(LoraConfigError, match="modules_to_save entry 'head' matches no module"):
        mark_only_lora_as_trainable(model, modules_to_save=["head"])


@pytest.mark.parametrize("method", ["lora", "dora"])
def test_one_optimizer_step_changes_only_lora_and_head(tiny_model, tiny_inputs, method):
    model, tok = tiny_model("tiny-gpt2")
    inject_lora(model, LoraSettings(method=method, rank=4))
    mark_only_lora_as_trainable(model, modules_to_save=head_module_names(model))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    out = model(**tiny_inputs(tok), labels=torch.tensor([0, 2]))
    out.loss.backward()
    opt.step()
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == set(lora_state_dict(model, modules_to_save=["score"]))
    assert "score.weight" in changed and any(".lora_B." in k for k in changed)
