"""Gradient checkpointing (`gradient_checkpointing: true`): the same numbers, layers recomputed.

In training mode with dropout live, a step with checkpointing gives the loss and every gradient
of a step without (the dropout masks are replayed), on our forwards and on the models' own; and
what the plan recomputes really runs again in the backward pass, which is where the memory goes
away: on an 8-layer encoder with long rows (a plan mixing whole layers and attention cores) the
step keeps under half the bytes. A run switches it per spec, also on a cached base a previous run
switched on. The decoder's LM head and loss run in chunks of labelled rows under checkpointing,
each recomputed in the backward pass: the same loss and gradients (the tied embedding's included,
under full fine-tuning), and no vocabulary-wide tensor kept or computed for more than a chunk's rows.
"""

from __future__ import annotations

import pytest
import torch

from lora_engine.errors import SpecError
from lora_engine.forward import decoder, recompute, reference_classification_logits, training_loss
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


def generation_batch(tok) -> dict:
    tok.pad_token = tok.pad_token or tok.eos_token
    batch = dict(tok(TEXTS, padding=True, return_tensors="pt"))
    labels = batch["input_ids"].clone()
    labels[batch["attention_mask"] == 0] = -100
    return {**batch, "labels": labels}


def fully_trained_llama():
    """tiny-llama, every parameter trained (its LM head is the input embedding: tied), attention
    dropout live."""
    torch.manual_seed(0)
    model, tok = load_base_model("tiny-llama", "generation")
    model.config.attention_dropout = 0.1
    for layer in model.model.layers:
        layer.self_attn.attention_dropout = 0.1
    model.requires_grad_(True)
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    return model.train(), tok


def head_rows(model, loss_of) -> list[int]:
    """Rows of every LM head call (forward and recomputed) over one step."""
    rows: list[int] = []
    handle = model.get_output_embeddings().register_forward_hook(lambda m, a, out: rows.append(out.shape[0]))
    try:
        step(model, loss_of)
    finally:
        handle.remove()
    return rows


@pytest.mark.parametrize("training", ["lora", "full"])
def test_chunked_loss_is_the_same_step(training, monkeypatch):
    model, tok = adapted("tiny-llama", "generation") if training == "lora" else fully_trained_llama()
    batch = generation_batch(tok)
    labelled = int((batch["labels"][:, 1:] != -100).sum())
    vocab = model.config.vocab_size
    monkeypatch.setattr(decoder, "LOSS_CHUNK_BYTES", 4 * vocab * 4)  # 4 rows a chunk
    assert decoder.loss_chunk_rows(vocab) == 4 and labelled > 3 * 4
    loss_of = lambda: training_loss(model, batch, "generation")  # noqa: E731
    recompute.set_enabled(model, False)
    assert head_rows(model, loss_of) == [labelled]  # off: one head call, the path as before
    same_step_with_and_without(model, model.model.layers, loss_of)
    if training == "full":  # the tied embedding gets the head's gradient through the recomputes
        assert model.get_input_embeddings().weight.grad is not None
    chunks = -(-labelled // 4)
    rows = head_rows(model, loss_of)  # each chunk in the forward pass, then again in the backward
    assert len(rows) == 2 * chunks and max(rows) == 4 and sum(rows) == 2 * labelled


def test_chunked_loss_keeps_no_vocabulary_wide_tensor(monkeypatch):
    model, tok = adapted("tiny-llama", "generation")
    batch = generation_batch(tok)
    vocab = model.config.vocab_size
    monkeypatch.setattr(decoder, "LOSS_CHUNK_BYTES", 4 * vocab * 4)
    saved: list[torch.Size] = []

    def pack(t):
        saved.append(t.shape)
        return t

    def vocabulary_wide() -> int:
        saved.clear()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = training_loss(model, batch, "generation")
        del loss
        return sum(shape.numel() for shape in saved if shape and shape[-1] == vocab)

    recompute.set_enabled(model, False)
    labelled = int((batch["labels"][:, 1:] != -100).sum())
    assert vocabulary_wide() >= labelled * vocab  # without: the logits of every row are kept
    recompute.set_enabled(model, True)
    assert vocabulary_wide() == 0  # with: each chunk's are recomputed, none kept


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
