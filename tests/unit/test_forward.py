"""lora_engine's own training forward equals Hugging Face's, and does less work.

Each case compares logits / loss and every parameter gradient against the model's Hugging Face
forward on padded batches (eval mode, so dropout draws do not differ), with LoRA B ≠ 0 so the
adapters take part. Then the work: which rows reach which layers.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lora_engine.errors import LoraConfigError
from lora_engine.forward import (
    causal_lm_loss,
    classification_logits,
    decoder,
    encoder,
    reference_causal_lm_loss,
    reference_classification_logits,
    training_loss,
)
from lora_engine.forward.packing import Packing
from lora_engine.inject import LoraSettings, head_module_names, inject_lora, mark_only_lora_as_trainable
from lora_engine.models import load_base_model

TEXTS = ["a short one", "a somewhat longer sentence with rather more words in it", "mid length text here"]
PAIRS = ["pair", "another pair text", "z"]


def adapted(arch: str, kind: str, method: str = "lora", labels: int | None = None):
    torch.manual_seed(0)
    model, tok = load_base_model(arch, kind, labels)
    inject_lora(model, LoraSettings(method=method, rank=4, alpha=8, targets=None))
    mark_only_lora_as_trainable(model, modules_to_save=head_module_names(model))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)  # B = 0 would hide the adapters from the comparison
    return model.eval(), tok


def grads_of(model, loss: torch.Tensor) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def assert_same_grads(a: dict, b: dict) -> None:
    assert a.keys() == b.keys() and a
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("arch", ["tiny-bert", "tiny-roberta"])
@pytest.mark.parametrize("method", ["lora", "dora"])
@pytest.mark.parametrize("padded", [True, False])
def test_classification_logits_and_grads_equal_hf(arch, method, padded):
    model, tok = adapted(arch, "classification", method, labels=3)
    if padded:
        enc = dict(tok(TEXTS, PAIRS, padding=True, return_tensors="pt"))
        assert not enc["attention_mask"].all()
    else:
        enc = dict(tok(["one two three four"] * 3, padding=True, return_tensors="pt"))
        assert enc["attention_mask"].all()
    assert encoder.supports(model, enc)
    torch.testing.assert_close(classification_logits(model, enc), model(**enc).logits, atol=1e-5, rtol=1e-5)
    labels = torch.tensor([0, 2, 1])
    ours = grads_of(model, training_loss(model, {**enc, "labels": labels}, "classification"))
    ref = grads_of(model, F.cross_entropy(model(**enc).logits, labels))
    assert_same_grads(ours, ref)


def test_regression_loss_equals_hf_mse():
    model, tok = adapted("tiny-bert", "regression", labels=1)
    enc = dict(tok(TEXTS, padding=True, return_tensors="pt"))
    target = torch.tensor([0.5, 3.0, 4.5])
    ours = training_loss(model, {**enc, "labels": target}, "regression")
    assert ours.item() == pytest.approx(F.mse_loss(model(**enc).logits.squeeze(-1), target).item(), rel=1e-5)


def test_left_padded_classification_takes_the_reference_forward():
    model, tok = adapted("tiny-bert", "classification", labels=2)
    tok.padding_side = "left"
    enc = dict(tok(TEXTS, padding=True, return_tensors="pt"))
    assert not encoder.supports(model, enc)  # position 0 of a row is padding
    torch.testing.assert_close(classification_logits(model, enc), model(**enc).logits)


@pytest.mark.parametrize("arch", ["tiny-bert", "tiny-roberta"])
@pytest.mark.parametrize("method", ["lora", "dora"])
def test_mean_pooled_logits_and_grads_equal_the_reference(arch, method):
    model, tok = adapted(arch, "classification", method, labels=3)
    enc = dict(tok(TEXTS, PAIRS, padding=True, return_tensors="pt"))
    assert not enc["attention_mask"].all()
    cls_logits = classification_logits(model, enc)
    encoder.set_pooling(model, "mean")
    assert encoder.supports(model, enc)
    ours = classification_logits(model, enc)
    torch.testing.assert_close(ours, reference_classification_logits(model, enc), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(ours, cls_logits, atol=1e-3)  # the head reads something else
    labels = torch.tensor([0, 2, 1])
    ours_grads = grads_of(model, training_loss(model, {**enc, "labels": labels}, "classification"))
    ref_grads = grads_of(model, F.cross_entropy(reference_classification_logits(model, enc), labels))
    assert_same_grads(ours_grads, ref_grads)
    # Every layer's LoRA, and the head, get a gradient: nothing pooled away.
    assert any(".0." in n and "lora_B" in n for n in ours_grads)
    assert any("classifier" in n for n in ours_grads)


def test_mean_pooling_reads_the_real_tokens_only():
    # The reference by hand: the body's last hidden states averaged over each row's own tokens; a
    # row's logits do not depend on how much padding its batch gives it.
    model, tok = adapted("tiny-bert", "classification", labels=2)
    encoder.set_pooling(model, "mean")
    enc = dict(tok(TEXTS, padding=True, return_tensors="pt"))
    hidden = model.bert(**enc).last_hidden_state
    n = int(enc["attention_mask"][0].sum())
    by_hand = model.classifier(model.bert.pooler(hidden[:1, :n].mean(dim=1, keepdim=True)))
    torch.testing.assert_close(classification_logits(model, enc)[:1], by_hand, atol=1e-5, rtol=1e-5)
    alone = dict(tok(TEXTS[:1], return_tensors="pt"))
    torch.testing.assert_close(classification_logits(model, alone), by_hand, atol=1e-5, rtol=1e-5)


def test_left_padded_mean_pooling_takes_the_reference_forward():
    model, tok = adapted("tiny-roberta", "regression", labels=1)
    encoder.set_pooling(model, "mean")
    right = dict(tok(TEXTS, padding=True, return_tensors="pt"))
    tok.padding_side = "left"
    left = dict(tok(TEXTS, padding=True, return_tensors="pt"))
    assert not encoder.supports(model, left)
    # Same rows, other padding side: the mean over real tokens is the same (positions count from
    # the first real token in RoBERTa's embeddings).
    torch.testing.assert_close(classification_logits(model, left), classification_logits(model, right),
                               atol=1e-5, rtol=1e-5)


def test_pooling_is_checked_when_set():
    model, _ = adapted("tiny-bert", "classification", labels=2)
    assert encoder.pooling_of(model) == "cls"  # what Hugging Face's head does, unset
    with pytest.raises(LoraConfigError, match="not one of cls, mean"):
        encoder.set_pooling(model, "max")
    gpt2, _ = load_base_model("tiny-gpt2", "classification", 2)
    with pytest.raises(LoraConfigError, match="BERT and RoBERTa"):
        encoder.set_pooling(gpt2, "mean")


def lm_batch(tok, *, prompt_tokens: int = 2):
    tok.padding_side = "right"
    enc = dict(tok(TEXTS, padding=True, return_tensors="pt"))
    labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
    labels[:, :prompt_tokens] = -100  # a prompt: no loss there
    return {**enc, "labels": labels}


@pytest.mark.parametrize("method", ["lora", "dora"])
def test_causal_lm_loss_and_grads_equal_hf(method):
    model, tok = adapted("tiny-llama", "generation", method)
    assert model.config.num_key_value_heads < model.config.num_attention_heads  # grouped-query attention
    batch = lm_batch(tok)
    assert decoder.supports(model, batch) and not batch["attention_mask"].all()
    ours = causal_lm_loss(model, batch)
    hf = model(**batch).loss  # shifted cross-entropy over labels != -100
    assert ours.item() == pytest.approx(hf.item(), rel=1e-6)
    ours_grads = grads_of(model, training_loss(model, batch, "generation"))
    assert_same_grads(ours_grads, grads_of(model, model(**batch).loss))


def test_causal_lm_falls_back_when_a_label_follows_padding():
    model, tok = adapted("tiny-llama", "generation")
    batch = lm_batch(tok)
    batch["labels"] = batch["input_ids"].clone()  # labels on padding too: HF predicts from pad states
    assert not decoder.supports(model, batch)
    assert causal_lm_loss(model, batch).item() == pytest.approx(reference_causal_lm_loss(model, batch).item())
    assert causal_lm_loss(model, batch).item() == pytest.approx(model(**batch).loss.item(), rel=1e-6)


def test_training_mode_applies_the_models_dropout():
    model, tok = adapted("tiny-bert", "classification", labels=2)
    enc = {**tok(TEXTS, padding=True, return_tensors="pt"), "labels": torch.tensor([0, 1, 0])}
    eval_loss = training_loss(model, enc, "classification").item()
    model.train()
    torch.manual_seed(1)
    a = training_loss(model, enc, "classification").item()
    torch.manual_seed(1)
    b = training_loss(model, enc, "classification").item()
    torch.manual_seed(2)
    c = training_loss(model, enc, "classification").item()
    assert a == b  # seeded: reproducible
    assert a != eval_loss and a != c  # hidden and attention dropout are live


def rows_seen(model, names: list[str], run) -> dict[str, int]:
    seen: dict[str, int] = {}
    modules = dict(model.named_modules())
    hooks = [modules[n].register_forward_hook(
        lambda m, args, out, n=n: seen.__setitem__(n, args[0].reshape(-1, args[0].shape[-1]).shape[0]))
        for n in names]
    try:
        run()
    finally:
        for h in hooks:
            h.remove()
    return seen


def test_encoder_runs_real_tokens_only_and_the_last_layer_on_first_tokens():
    model, tok = adapted("tiny-bert", "classification", labels=2)
    enc = dict(tok(TEXTS, padding=True, return_tensors="pt"))
    real, padded = int(enc["attention_mask"].sum()), enc["attention_mask"].numel()
    last = len(model.bert.encoder.layer) - 1
    names = ["bert.encoder.layer.0.intermediate.dense", f"bert.encoder.layer.{last}.attention.self.query",
             f"bert.encoder.layer.{last}.attention.self.key", f"bert.encoder.layer.{last}.intermediate.dense"]
    seen = rows_seen(model, names, lambda: classification_logits(model, enc))
    assert seen == {names[0]: real, names[1]: 3, names[2]: real, names[3]: 3}
    hf = rows_seen(model, names, lambda: model(**enc))
    assert set(hf.values()) == {padded}


def test_decoder_runs_real_tokens_and_the_lm_head_on_labelled_positions_only():
    model, tok = adapted("tiny-llama", "generation")
    batch = lm_batch(tok, prompt_tokens=2)
    real = int(batch["attention_mask"].sum())
    labelled = int((batch["labels"][:, 1:] != -100).sum())
    seen = rows_seen(model, ["model.layers.0.mlp.up_proj", "lm_head"], lambda: causal_lm_loss(model, batch))
    assert seen == {"model.layers.0.mlp.up_proj": real, "lm_head": labelled}
    assert labelled < real < batch["attention_mask"].numel()


def test_packing_round_trip_and_layout_errors():
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    packing = Packing.from_mask(mask)
    x = torch.arange(8.0).view(2, 4, 1)
    packed = packing.pack(x)
    assert packed.squeeze(1).tolist() == [0.0, 1.0, 2.0, 4.0, 5.0]
    assert packing.unpack(packed).squeeze(-1).tolist() == [[0, 1, 2, 0], [4, 5, 0, 0]]
    assert packing.compact_positions(torch.tensor([4, 5])).tolist() == [3, 4]
    q = torch.randn(5, 2, 8)
    with pytest.raises(ValueError, match="one position per row"):
        packing.attention(q, q, q, scale=1.0, causal=False, query_positions=torch.tensor([0]))
    left = Packing.from_mask(torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]]))
    q7 = torch.randn(7, 2, 8)
    with pytest.raises(ValueError, match="right-padded"):
        left.attention(q7, q7, q7, scale=1.0, causal=True)
    empty = Packing.from_mask(torch.tensor([[0, 0], [1, 1]]))
    q2 = torch.randn(2, 2, 8)
    with pytest.raises(ValueError, match="at least one real token"):
        empty.attention(q2, q2, q2, scale=1.0, causal=False)


@pytest.mark.parametrize("causal", [True, False])
def test_fused_sdpa_branch_equals_short_row_attention(monkeypatch, causal):
    # GPUs and long rows take scaled_dot_product_attention; CPU tests otherwise only see the
    # short-row path, so force the other branch and compare (grouped-query heads, padding).
    import lora_engine.forward.packing as packing_module

    torch.manual_seed(0)
    packing = Packing.from_mask(torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 0, 0, 0]]))
    n = int(packing.key_mask.sum())
    q, k, v = torch.randn(n, 4, 8), torch.randn(n, 2, 8), torch.randn(n, 2, 8)
    short = packing.attention(q, k, v, scale=0.3, causal=causal)
    monkeypatch.setattr(packing_module, "SHORT_ROWS", 0)
    fused = packing.attention(q, k, v, scale=0.3, causal=causal)
    torch.testing.assert_close(fused, short, atol=1e-5, rtol=1e-5)
    if not causal:
        first = packing.compact_positions(torch.arange(3) * packing.length)
        only = packing.attention(q[first], k, v, scale=0.3, causal=False, query_positions=first)
        torch.testing.assert_close(only, short[first], atol=1e-5, rtol=1e-5)
