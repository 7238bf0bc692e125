"""Gradient checkpointing (`gradient_checkpointing: true`): the same numbers, layers recomputed.

In training mode with dropout live, a step with checkpointing gives the loss and every gradient
of a step without (the dropout masks are replayed), on our forwards and on the models' own; and
each layer's forward really runs twice (once more in the backward pass), which is where the memory
goes away. A run switches it per spec, also on a cached base a previous run switched on.
"""

from __future__ import annotations

import pytest
import torch

from lora_engine.errors import SpecError
from lora_engine.forward import recompute, reference_classification_logits, training_loss
from lora_engine.inject import LoraSettings, head_module_names, inject_lora, mark_only_lora_as_trainable
from lora_engine.models import load_base_model
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


def same_step_with_and_without(model, layers, loss_of) -> None:
    recompute.set_enabled(model, False)
    plain_loss, plain_grads = step(model, loss_of)
    plain_calls = layer_calls(model, layers, loss_of)
    recompute.set_enabled(model, True)
    assert recompute.enabled(model)
    ckpt_loss, ckpt_grads = step(model, loss_of)
    assert layer_calls(model, layers, loss_of) == 2 * plain_calls  # every layer ran again in backward
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
