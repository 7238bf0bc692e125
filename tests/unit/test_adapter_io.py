"""Adapter files: PEFT layout, atomic writes, strict loading, and clear errors that leave the model alone."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from lora_engine.adapters.folder import AdapterMeta
from lora_engine.adapters.io import (
    adapter_files_digest,
    load_adapter,
    read_adapter_config,
    read_adapter_meta,
    save_adapter,
)
from lora_engine.errors import AdapterError
from lora_engine.inject import LoraSettings, head_module_names, inject_lora, mark_only_lora_as_trainable
from lora_engine.layers import LoRALinear
from tests.model_state import assert_unchanged, snapshot


def _trained_adapter(tiny_model, perturb_lora, folder, alias="tiny-gpt2", method="dora",
                     kind="classification"):
    model, tok = tiny_model(alias, kind)
    settings = LoraSettings(method=method, rank=4, alpha=8)
    inject_lora(model, settings)
    heads = head_module_names(model)
    mark_only_lora_as_trainable(model, modules_to_save=heads)
    perturb_lora(model)
    with torch.no_grad():
        for h in heads:  # a head that differs from a fresh random one
            for p in model.get_submodule(h).parameters():
                p.add_(1.0)
    save_adapter(model, folder, base_model_name=alias, settings=settings, task_type=kind,
                 meta=AdapterMeta(base_model=alias, kind=kind, method=method, task="sst2",
                                  label_names=("neg", "pos", "mid")))
    return model, tok


def test_files_config_and_keys_are_peft_format(tiny_model, perturb_lora, tmp_path):
    folder = tmp_path / "a"
    _trained_adapter(tiny_model, perturb_lora, folder)
    assert sorted(p.name for p in folder.iterdir()) == [
        "adapter_config.json", "adapter_model.safetensors", "lorafleet.json"]
    assert not list(tmp_path.glob(".a.*"))  # no temp folder left behind
    cfg = read_adapter_config(folder)
    assert cfg["peft_type"] == "LORA" and cfg["task_type"] == "SEQ_CLS" and cfg["use_dora"] is True
    assert (cfg["r"], cfg["lora_alpha"], cfg["target_modules"]) == (4, 8, ["c_attn"])
    assert cfg["fan_in_fan_out"] is True and cfg["modules_to_save"] == ["score"]
    assert cfg["base_model_name_or_path"] == "tiny-gpt2"
    keys = set(load_file(folder / "adapter_model.safetensors"))
    want = {f"base_model.model.transformer.h.{i}.attn.c_attn.{t}" for i in (0, 1)
            for t in ("lora_A.weight", "lora_B.weight", "lora_magnitude_vector")}
    assert keys == want | {"base_model.model.score.weight"}  # only LoRA + head tensors
    assert read_adapter_meta(folder).label_names == ("neg", "pos", "mid")


@pytest.mark.parametrize(("alias", "kind", "method"), [
    ("tiny-gpt2", "classification", "dora"), ("tiny-bert", "classification", "rslora"),
    ("tiny-llama", "generation", "lora")])
def test_round_trip_gives_same_outputs(tiny_model, tiny_inputs, perturb_lora, tmp_path, alias, kind, method):
    model, tok = _trained_adapter(tiny_model, perturb_lora, tmp_path / "a", alias, method, kind)
    batch = tiny_inputs(tok)
    fresh, _ = tiny_model(alias, kind)
    with torch.no_grad():
        want = model.eval()(**batch).logits
        base = fresh(**batch).logits
    cfg = load_adapter(fresh, tmp_path / "a")
    assert cfg["r"] == 4
    with torch.no_grad():
        got = fresh.eval()(**batch).logits
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(got, base, atol=1e-3)
    trainable = {n for n, p in fresh.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or n.startswith(tuple(head_module_names(fresh))) for n in trainable)


def test_overwrite_is_atomic_swap_and_digest(tiny_model, perturb_lora, tmp_path):
    folder = tmp_path / "a"
    model, _ = _trained_adapter(tiny_model, perturb_lora, folder)
    digest1, size1 = adapter_files_digest(folder)
    assert size1 == sum(p.stat().st_size for p in folder.iterdir())
    assert adapter_files_digest(folder) == (digest1, size1)
    perturb_lora(model, seed=5)
    settings = LoraSettings(method="dora", rank=4, alpha=8)
    save_adapter(model, folder, base_model_name="tiny-gpt2", settings=settings, task_type="classification")
    assert adapter_files_digest(folder)[0] != digest1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]


def test_a_failed_resave_keeps_the_old_adapter_whole(tiny_model, perturb_lora, tmp_path):
    folder = tmp_path / "a"
    model, _ = _trained_adapter(tiny_model, perturb_lora, folder)
    before = adapter_files_digest(folder)
    perturb_lora(model, seed=7)
    settings = LoraSettings(method="dora", rank=4, alpha=8)
    # Fails after the config and the tensors are written: lorafleet.json cannot hold a set.
    bad = AdapterMeta(base_model="tiny-gpt2", method="dora", metrics={"validation": {"labels": {1, 2}}})
    with pytest.raises(TypeError, match="not JSON serializable"):
        save_adapter(model, folder, base_model_name="tiny-gpt2", settings=settings,
                     task_type="classification", meta=bad)
    assert adapter_files_digest(folder) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]  # no temp or swapped-out folder


def test_the_record_must_agree_with_the_settings(tiny_model, perturb_lora, tmp_path):
    model, _ = _trained_adapter(tiny_model, perturb_lora, tmp_path / "a")
    with pytest.raises(AdapterError, match=r"says lora on .tiny-gpt2., but save_adapter was given dora"):
        save_adapter(model, tmp_path / "b", base_model_name="tiny-gpt2",
                     settings=LoraSettings(method="dora", rank=4, alpha=8),
                     meta=AdapterMeta(base_model="tiny-gpt2", method="lora"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]


def _bad(folder, what):
    weights = folder / "adapter_model.safetensors"
    if what == "truncated":
        data = weights.read_bytes()
        weights.write_bytes(data[: len(data) // 2])
    elif what == "corrupt":
        weights.write_bytes(b"\x07garbage" * 40)
    elif what == "missing-weights":
        weights.unlink()
    elif what == "missing-config":
        (folder / "adapter_config.json").unlink()
    elif what == "peft-type":
        cfg = json.loads((folder / "adapter_config.json").read_text())
        cfg["peft_type"] = "IA3"
        (folder / "adapter_config.json").write_text(json.dumps(cfg))
    elif what == "bad-json":
        (folder / "adapter_config.json").write_text("{not json")
    elif what == "extra-key":
        tensors = load_file(weights)
        tensors["base_model.model.transformer.h.0.attn.c_proj.lora_A.weight"] = torch.zeros(4, 64)
        save_file(tensors, weights)
    elif what == "missing-key":
        tensors = load_file(weights)
        del tensors["base_model.model.transformer.h.1.attn.c_attn.lora_B.weight"]
        save_file(tensors, weights)


@pytest.mark.parametrize(("what", "pattern"), [
    ("truncated", r"adapter_model\.safetensors is truncated or corrupt \(tensor '.*' lies outside"),
    ("corrupt", r"adapter_model\.safetensors is not a safetensors file \(bad header length"),
    ("missing-weights", r"adapter_model\.safetensors is missing"),
    ("missing-config", r"not an adapter folder: adapter_config\.json is missing"),
    ("peft-type", r"peft_type 'IA3' is not supported; allowed: LORA"),
    ("bad-json", r"not valid JSON"),
    ("extra-key", r"made for 'tiny-gpt2'.*unexpected tensor 'transformer\.h\.0\.attn\.c_proj\.lora_A\."),
    ("missing-key", r"made for 'tiny-gpt2'.*missing tensor 'transformer\.h\.1\.attn\.c_attn\.lora_B\."),
])
def test_broken_adapter_raises_and_leaves_model_unchanged(tiny_model, perturb_lora, tmp_path, what, pattern):
    folder = tmp_path / "a"
    _trained_adapter(tiny_model, perturb_lora, folder)
    _bad(folder, what)
    fresh, _ = tiny_model("tiny-gpt2")
    snap = snapshot(fresh)
    with pytest.raises(AdapterError, match=pattern) as err:
        load_adapter(fresh, folder)
    assert isinstance(err.value, ValueError)
    assert_unchanged(fresh, snap)


def test_adapter_for_other_base_is_refused(tiny_model, perturb_lora, tmp_path):
    folder = tmp_path / "a"
    _trained_adapter(tiny_model, perturb_lora, folder)  # tiny-gpt2, 3 labels, hidden 64
    other, _ = tiny_model("tiny-bert")  # no c_attn at all: names do not fit
    snap = snapshot(other)
    with pytest.raises(AdapterError, match=r"made for 'tiny-gpt2'.*match no layer of this bert model"):
        load_adapter(other, folder)
    assert_unchanged(other, snap)
    two_labels, _ = tiny_model("tiny-gpt2", num_labels=2)  # same names, head shape differs
    snap = snapshot(two_labels)
    with pytest.raises(AdapterError, match=r"'score\.weight' has shape \(3, 64\), this model has \(2, 64\)"):
        load_adapter(two_labels, folder)
    assert_unchanged(two_labels, snap)
    assert not any(isinstance(m, LoRALinear) for m in two_labels.modules())


def test_missing_folder_and_no_lora(tiny_model, tmp_path):
    model, _ = tiny_model("tiny-bert")
    with pytest.raises(AdapterError, match="does not exist"):
        load_adapter(model, tmp_path / "nope")
    with pytest.raises(AdapterError, match="no LoRA layers to save"):
        save_adapter(model, tmp_path / "x", base_model_name="tiny-bert", settings=LoraSettings())
    assert not (tmp_path / "x").exists()


def test_settings_that_contradict_the_layers_are_refused(tiny_model, tmp_path):
    model, _ = tiny_model("tiny-bert")
    inject_lora(model, LoraSettings(rank=4, alpha=8))
    with pytest.raises(AdapterError, match=r"is lora r=4 alpha=8.0, but the settings given .* say lora r=8"):
        save_adapter(model, tmp_path / "x", base_model_name="tiny-bert", settings=LoraSettings(rank=8),
                     )
    assert not (tmp_path / "x").exists()
