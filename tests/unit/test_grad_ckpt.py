"""Gradient checkpointing (`gradient_checkpointing: true`): the same numbers, layers recomputed.

In training mode with dropout live, a step with checkpointing gives the loss and every gradient
of a step without (the dropout masks are replayed), on our forwards and on the models' own; and
what the plan recomputes really runs again in the backward pass, which is where the memory goes
away: on an 8-layer encoder with long rows (a plan mixing whole layers and attention cores) the
step keeps under half the bytes. A run switches it per spec, also on a cached base a previous run
switched on.
"""

from __future__ import annotations

import pytest
import torch

from lora_engine.errors import SpecError
from lora_engine.forward import recompute, reference_classification_logits, training_loss
from lora_engine.forward.recompute import ATTENTION, KEEP, LAYER, LayerBytes
from lora_engine.inject import LoraSettings, head_module_names, inject_lora, mark_only_lora_as_trainable
from lora_engine.models import load_base_model, tiny_config
from lora_engine.packing import refusal
from lora_engine.spec import validate_spec

TEXTS = ["a short one", "a somewhat longer sentence with rather more words in it", "mid length text here"]


def adapted(arch: str, kind: str, labels: int | None = None):
    torch.manual_seed(0)
    model, tok = load_base_model(arch, kind, labels)
    model.config.hidden_dropout_prob = getattr(model.config, "hidden_dropout_prob", 0.0)
    inject_lora(model, LoraSettings(method="lora", rank=4, alpha=8, dropout=0.1, targets=None))
    mark_only_lora_as_trainable(model, modules_to_save=head_module_names(model))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    return model.train(), tok


def step(model, loss_of) -> tuple[float, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    torch.manual_seed(7)  # the same dropout draws for both runs
    loss = loss_of()
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def layer_calls(model, layers, loss_of) -> int:
    calls = []
    handles = [layer.attention.self.query.register_forward_hook(lambda *a: calls.append(1))
               if hasattr(layer, "attention") else
               layer.self_attn.q_proj.register_forward_hook(lambda *a: calls.append(1)) for layer in layers]
    try:
        step(model, loss_of)
    finally:
        for h in handles:
            h.remove()
    return len(calls)


def same_step_with_and_without(model, layers, loss_of, recomputed_layers: int | None = None) -> None:
    """Equal loss and gradients; `recomputed_layers` (default: all) layers' forwards ran again."""
    recompute.set_enabled(model, False)
    plain_loss, plain_grads = step(model, loss_of)
    plain_calls = layer_calls(model, layers, loss_of)
    recompute.set_enabled(model, True)
    assert recompute.enabled(model)
    ckpt_loss, ckpt_grads = step(model, loss_of)
    again = len(layers) if recomputed_layers is None else recomputed_layers
    assert layer_calls(model, layers, loss_of) == plain_calls + again  # ran again in the backward pass
    assert ckpt_loss == pytest.approx(plain_loss, rel=1e-6)
    assert ckpt_grads.keys() == plain_grads.keys() and plain_grads
    for name in plain_grads:
        torch.testing.assert_close(ckpt_grads[name], plain_grads[name], atol=1e-6, rtol=1e-5, msg=name)


@pytest.mark.parametrize("arch", ["tiny-bert", "tiny-roberta"])
def test_encoder_step_is_the_same_with_checkpointing(arch):
    model, tok = adapted(arch, "classification", labels=3)
    batch = {**tok(TEXTS, padding=True, return_tensors="pt"), "labels": torch.tensor([0, 2, 1])}
    layers = getattr(model, model.base_model_prefix).encoder.layer
    same_step_with_and_without(model, layers, lambda: training_loss(model, batch, "classification"))


def test_encoder_reference_forward_obeys_the_same_switch():
    model, tok = adapted("tiny-bert", "classification", labels=3)
    batch = dict(tok(TEXTS, padding=True, return_tensors="pt"))
    layers = model.bert.encoder.layer
    same_step_with_and_without(model, layers,
                               lambda: reference_classification_logits(model, batch).square().sum())


def test_decoder_step_is_the_same_with_checkpointing():
    model, tok = adapted("tiny-llama", "generation")
    tok.pad_token = tok.pad_token or tok.eos_token
    batch = dict(tok(TEXTS, padding=True, return_tensors="pt"))
    labels = batch["input_ids"].clone()
    labels[batch["attention_mask"] == 0] = -100
    batch["labels"] = labels
    same_step_with_and_without(model, model.model.layers, lambda: training_loss(model, batch, "generation"))


def test_off_in_evaluation_and_switched_off_again():
    model, _ = adapted("tiny-bert", "classification", labels=2)
    recompute.set_enabled(model, True)
    model.eval()
    assert not recompute.enabled(model)  # nothing to recompute for: no backward pass
    model.train()
    with torch.no_grad():
        assert not recompute.enabled(model)
    recompute.set_enabled(model, False)  # the next run on a cached base does not inherit it
    assert not recompute.enabled(model) and not model.is_activation_checkpointing


def test_spec_field_is_a_strict_bool_and_keeps_a_job_out_of_packs():
    assert validate_spec({"task": "sst2", "gradient_checkpointing": True}).gradient_checkpointing
    with pytest.raises(SpecError, match="gradient_checkpointing"):
        validate_spec({"task": "sst2", "gradient_checkpointing": "yes"})
    with pytest.raises(SpecError, match="gradient_checkpointing: not used by method 'none'"):
        validate_spec({"task": "sst2", "method": "none", "rank": 0, "gradient_checkpointing": True})
    assert validate_spec({"task": "sst2", "method": "none", "rank": 0, "gradient_checkpointing": False})
    why = refusal(method="lora", arch="bert", kind="classification", recomputes=True)
    assert why is not None and "gradient_checkpointing" in why


def test_plan_recomputes_attention_cores_then_the_fewest_bottom_layers():
    def plan(layers, outside=0):
        model = torch.nn.Linear(1, 1)
        model.is_activation_checkpointing = True
        return recompute.plan(model, layers, outside)

    long_rows = [LayerBytes(core=60, rest=10, inputs=1)] * 6  # the L² tensors dominate: cores suffice
    assert plan(long_rows) == [ATTENTION] * 6
    short_rows = [LayerBytes(core=10, rest=60, inputs=1)] * 6
    # Without: 420 bytes. Cores recomputed: 360 kept + 70 for the layer being differentiated; each
    # layer recomputed whole keeps 59 fewer: four bring it to 124 + 70 <= 210.
    assert plan(short_rows) == [LAYER] * 4 + [ATTENTION] * 2  # bottom first, then no more
    assert plan(short_rows, outside=1000) == [LAYER] * 6  # a big loss leaves no layer kept whole
    off = torch.nn.Linear(1, 1)
    assert recompute.plan(off, short_rows, 0) == [KEEP] * 6


def deep_encoder():
    """An 8-layer BERT classifier (hidden 64) with rows of 64 tokens: its plan mixes whole layers
    (bottom) and attention cores."""
    from transformers import BertForSequenceClassification

    torch.manual_seed(0)
    model = BertForSequenceClassification(tiny_config("bert", 500, 0, num_hidden_layers=8, num_labels=3))
    inject_lora(model, LoraSettings(method="lora", rank=4, alpha=8, dropout=0.1, targets=None))
    mark_only_lora_as_trainable(model, modules_to_save=head_module_names(model))
    ids = torch.randint(5, 500, (4, 64))
    mask = torch.ones_like(ids)
    mask[1, 40:] = 0
    mask[3, 50:] = 0
    batch = {"input_ids": ids * mask, "attention_mask": mask, "labels": torch.tensor([0, 2, 1, 0])}
    return model.train(), batch


def saved_bytes(model, batch) -> int:
    """Bytes of the distinct tensors autograd keeps for the backward pass of one forward."""
    storages: dict[int, int] = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = training_loss(model, batch, "classification")
    del loss
    return sum(n for ptr, n in storages.items() if ptr not in params)


def test_mixed_plan_is_the_same_step_and_keeps_under_half():
    model, batch = deep_encoder()
    layers = model.bert.encoder.layer
    recompute.set_enabled(model, True)
    # Hidden 64, intermediate 128, 4 heads, 64 tokens: per token a layer keeps 3·4·64 elements in
    # its attention core and 7·64 + 128 + 2·2·64 (adapters) elsewhere; the plan recomputes three
    # whole layers and the other layers' cores.
    same_step_with_and_without(model, layers, lambda: training_loss(model, batch, "classification"),
                               recomputed_layers=3)
    recompute.set_enabled(model, False)
    plain = saved_bytes(model, batch)
    recompute.set_enabled(model, True)
    kept = saved_bytes(model, batch)
    # The checkpoints hold their inputs (hidden states, q, k, v) beside what autograd saves.
    inputs = 4 * 64 * 64 * 4 * (3 + 3 * 5)
    assert kept + inputs <= 0.5 * plain, (kept, inputs, plain)
