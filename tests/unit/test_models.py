"""Base model resolution and loading: real offline packages, seeded tiny models, the SmolLM2 cache."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from lora_engine.errors import LoraFleetInputError
from lora_engine.models import (
    ensure_smollm2_cached,
    gpt2_tokenizer,
    load_base_model,
    model_cache_dir,
    resolve_model,
)


def test_minilm_alias_loads_the_real_pretrained_weights():
    resolved = resolve_model("minilm-l6")
    assert resolved.arch == "bert" and Path(resolved.path, "model.safetensors").is_file()
    model, tok = load_base_model("minilm-l6", "classification", num_labels=2)
    assert model.config.num_hidden_layers == 6 and model.config.hidden_size == 384
    with safe_open(str(Path(resolved.path, "model.safetensors")), framework="pt") as f:
        key = next(k for k in f.keys() if k.endswith("encoder.layer.5.attention.self.query.weight"))  # noqa: SIM118
        stored = f.get_tensor(key)
    torch.testing.assert_close(model.bert.encoder.layer[5].attention.self.query.weight.detach(), stored)
    assert tok.pad_token is not None and model.config.pad_token_id == tok.pad_token_id
    assert tok("hello world")["input_ids"] == [101, 7592, 2088, 102]


@pytest.mark.parametrize(("alias", "kind"), [
    ("tiny-gpt2", "classification"), ("tiny-bert", "regression"),
    ("tiny-roberta", "classification"), ("tiny-llama", "generation")])
def test_tiny_models_are_identical_each_time_and_leave_rng_alone(alias, kind):
    torch.manual_seed(7)
    expected_next = torch.rand(1)
    torch.manual_seed(7)
    a, tok = load_base_model(alias, kind, num_labels=3)
    assert torch.equal(torch.rand(1), expected_next)  # global RNG untouched
    b, _ = load_base_model(alias, kind, num_labels=3)
    sa, sb = a.state_dict(), b.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert a.config.num_hidden_layers == 2 and tok.pad_token_id is not None
    assert a.config.pad_token_id == tok.pad_token_id
    if kind == "regression":
        assert a.config.num_labels == 1


def test_gpt2_tokenizer_is_the_real_bpe():
    tok = gpt2_tokenizer()
    assert len(tok) == 50257
    assert tok("Hello world")["input_ids"] == [15496, 995]


def test_bad_names_and_kinds():
    with pytest.raises(LoraFleetInputError, match="unknown model kind 'vision'"):
        load_base_model("tiny-bert", "vision")
    with pytest.raises(LoraFleetInputError, match="classification needs num_labels >= 2"):
        load_base_model("tiny-bert", "classification")
    with pytest.raises(LoraFleetInputError, match="generation needs a causal LM"):
        load_base_model("minilm-l6", "generation")


def test_local_folder_resolves_and_loads(tmp_path):
    model, _ = load_base_model("tiny-llama", "generation")
    model.save_pretrained(tmp_path / "m")
    gpt2_tokenizer().save_pretrained(tmp_path / "m")
    resolved = resolve_model(str(tmp_path / "m"))
    assert resolved.arch == "llama" and resolved.path == str(tmp_path / "m")
    loaded, tok = load_base_model(str(tmp_path / "m"), "generation")
    assert tok.pad_token == tok.eos_token and loaded.config.pad_token_id == tok.eos_token_id
    with pytest.raises(LoraFleetInputError, match=r"holds no config\.json"):
        resolve_model(str(tmp_path))


def test_smollm2_from_converted_cache(monkeypatch, tmp_path):
    # Converts the packaged GGUF once into the model cache (~20 s the first time, ever); later runs
    # load the cached HF folder in seconds. A second cache root pointing at the same folder shows
    # LORAFLEET_MODEL_CACHE is honoured and that nothing is converted again when cached.
    folder = ensure_smollm2_cached()
    assert (folder / "config.json").is_file() and folder.parent == model_cache_dir()
    (tmp_path / "smollm2-135m").symlink_to(folder)
    monkeypatch.setenv("LORAFLEET_MODEL_CACHE", str(tmp_path))
    start = time.perf_counter()
    model, tok = load_base_model("smollm2-135m", "generation")
    assert time.perf_counter() - start < 15
    assert resolve_model("smollm2-135m").path == str(tmp_path / "smollm2-135m")
    assert model.config.model_type == "llama" and model.config.num_hidden_layers == 30
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(134.5e6, rel=0.01)
    ids = tok("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=3, do_sample=False)
    assert "Paris" in tok.decode(out[0, ids["input_ids"].shape[1]:])  # a real pretrained model
