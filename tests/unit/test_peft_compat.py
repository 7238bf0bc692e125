"""Interoperability with the real peft package, both ways, with B ≠ 0 (after a training step)."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, PeftModel, TaskType, get_peft_model

from lora_engine.adapters.io import load_adapter, save_adapter
from lora_engine.inject import LoraSettings, head_module_names, inject_lora, mark_only_lora_as_trainable

CASES = [("tiny-gpt2", "classification"), ("tiny-bert", "classification"),
         ("tiny-roberta", "classification"), ("tiny-llama", "generation")]
METHODS = ["lora", "rslora", "dora"]


def _train_step(model, batch, kind):
    """One AdamW step at a high rate, then a perturbation: every LoRA tensor and the head move."""
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-2)
    if kind == "generation":
        out = model(**batch, labels=batch["input_ids"])
    else:
        out = model(**batch, labels=torch.tensor([1, 0]))
    out.loss.backward()
    opt.step()
    model.eval()


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(("alias", "kind"), CASES)
def test_our_adapter_loads_in_peft_with_same_logits(tiny_model, tiny_inputs, perturb_lora, tmp_path,
                                                      alias, kind, method):
    model, tok = tiny_model(alias, kind)
    batch = tiny_inputs(tok)
    settings = LoraSettings(method=method, rank=4, alpha=8)
    inject_lora(model, settings)
    ours_trainable = mark_only_lora_as_trainable(model, modules_to_save=head_module_names(model))
    _train_step(model, batch, kind)
    perturb_lora(model)
    save_adapter(model, tmp_path / "a", base_model_name=alias, settings=settings, task_type=kind)

    base, _ = tiny_model(alias, kind)
    with torch.no_grad():
        ours = model(**batch).logits
        base_out = base(**batch).logits
    peft_model = PeftModel.from_pretrained(base, tmp_path / "a", is_trainable=True).eval()
    with torch.no_grad():
        theirs = peft_model(**batch).logits
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(ours, base_out, atol=1e-3)
    # PEFT trains exactly what we train.
    assert sum(p.numel() for p in peft_model.parameters() if p.requires_grad) == ours_trainable


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(("alias", "kind"), CASES)
def test_peft_adapter_loads_here_with_same_logits(tiny_model, tiny_inputs, perturb_lora, tmp_path,
                                                    alias, kind, method):
    model, tok = tiny_model(alias, kind)
    batch = tiny_inputs(tok)
    task = TaskType.CAUSAL_LM if kind == "generation" else TaskType.SEQ_CLS
    config = LoraConfig(task_type=task, r=4, lora_alpha=8, use_rslora=method == "rslora",
                        use_dora=method == "dora")  # default targets: PEFT's own per-architecture table
    peft_model = get_peft_model(model, config)
    _train_step(peft_model, batch, kind)
    perturb_lora(peft_model, seed=3)
    peft_model.save_pretrained(tmp_path / "p")
    with torch.no_grad():
        theirs = peft_model.eval()(**batch).logits

    fresh, _ = tiny_model(alias, kind)
    with torch.no_grad():
        base_out = fresh(**batch).logits
    cfg = load_adapter(fresh, tmp_path / "p")
    assert cfg["use_dora"] == (method == "dora")
    with torch.no_grad():
        ours = fresh.eval()(**batch).logits
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(ours, base_out, atol=1e-3)


@pytest.mark.parametrize("targets", [["all-linear"], ["dense"]])
def test_targets_peft_cannot_express_by_suffix_round_trip(tiny_model, tiny_inputs, perturb_lora, tmp_path,
                                                          targets):
    # RoBERTa's head has a `dense` too: we never adapt heads, so the file names modules exactly.
    model, tok = tiny_model("tiny-roberta")
    batch = tiny_inputs(tok)
    settings = LoraSettings(rank=2, targets=targets)
    names = inject_lora(model, settings)
    assert not any(n.startswith("classifier") for n in names)
    mark_only_lora_as_trainable(model, modules_to_save=["classifier"])
    perturb_lora(model)
    save_adapter(model, tmp_path / "a", base_model_name="tiny-roberta", settings=settings,
                 task_type="classification")
    base, _ = tiny_model("tiny-roberta")
    peft_model = PeftModel.from_pretrained(base, tmp_path / "a").eval()
    adapted = {n.removeprefix("base_model.model.") for n, m in peft_model.named_modules()
               if hasattr(m, "lora_A") and not n.endswith((".lora_A", ".lora_B"))}
    assert adapted == set(names)
    with torch.no_grad():
        torch.testing.assert_close(peft_model(**batch).logits, model.eval()(**batch).logits,
                                   atol=1e-5, rtol=1e-5)


def test_embedding_lora_both_ways(tiny_model, tiny_inputs, perturb_lora, tmp_path):
    model, tok = tiny_model("tiny-bert")
    batch = tiny_inputs(tok)
    settings = LoraSettings(rank=4, alpha=8, targets=["word_embeddings", "query"])
    inject_lora(model, settings)
    mark_only_lora_as_trainable(model, modules_to_save=["classifier"])
    perturb_lora(model)
    save_adapter(model, tmp_path / "a", base_model_name="tiny-bert", settings=settings,
                 task_type="classification")
    base, _ = tiny_model("tiny-bert")
    with torch.no_grad():
        ours = model.eval()(**batch).logits
        base_out = base(**batch).logits
    peft_model = PeftModel.from_pretrained(base, tmp_path / "a").eval()
    with torch.no_grad():
        torch.testing.assert_close(peft_model(**batch).logits, ours, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(ours, base_out, atol=1e-3)
    peft_model.save_pretrained(tmp_path / "p")  # and PEFT's own file of it loads back here
    fresh, _ = tiny_model("tiny-bert")
    load_adapter(fresh, tmp_path / "p")
    with torch.no_grad():
        torch.testing.assert_close(fresh.eval()(**batch).logits, ours, atol=1e-5, rtol=1e-5)
