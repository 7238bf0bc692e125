"""QLoRA (`quantize: nf4`) on the engine: bitsandbytes' NF4 has a CPU path, so the whole run is real
here: a Llama base loaded 4-bit, our LoRA layers around its `Linear4bit`s, two optimizer steps, the
exported adapter. It is a plain LoRA adapter of the unquantised base (as PEFT saves QLoRA adapters):
PEFT loads it on the full-precision base, and on a 4-bit base PEFT's own QLoRA layers give the
logits ours give. The CUDA numerics (bf16 compute, memory) are bench/check_qlora_cuda.py's."""

from __future__ import annotations

import json
import os

import bitsandbytes as bnb
import pytest
import torch
from peft import PeftModel

from lora_engine.adapters.io import load_adapter
from lora_engine.cache import BaseModelCache
from lora_engine.errors import LoraConfigError
from lora_engine.inject import (
    LoraSettings,
    inject_lora,
    lora_modules,
    mark_only_lora_as_trainable,
    merge_lora,
)
from lora_engine.layers import LoRALinear
from lora_engine.models import load_base_model
from lora_engine.recipe import train

DATA = os.environ["LORAFLEET_DATA_DIR"]
SPEC = {"task": "e2e", "base_model": "tiny-llama", "method": "lora", "quantize": "nf4", "max_steps": 2,
        "batch_size": 2, "eval_size": 2, "max_length": 48, "lr": 1e-2,
        "targets": ["q_proj", "v_proj", "down_proj"]}


def logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    cache = BaseModelCache()
    res = train(SPEC, tmp_path_factory.mktemp("qlora") / "adapter", data_dir=DATA, cache=cache, meteor=False)
    return res, cache


def test_an_nf4_run_trains_lora_over_4bit_layers(trained):
    res, cache = trained
    assert len(res.losses) == 2 and all(torch.isfinite(torch.tensor(res.losses)))
    # Checked back in without LoRA, under the quantisation's key. (Whether it stayed resident is the
    # fingerprint's call: bitsandbytes repacks 4-bit weights for its CPU inference kernel when the
    # run's evaluation generates, which the fingerprint sees as a change, so it may be a fresh load.)
    model, _ = cache.checkout("tiny-llama", "generation", None, quantize="nf4")
    try:
        assert cache.key == ("tiny-llama", "generation", None, "nf4")
        q = model.model.layers[0].self_attn.q_proj
        assert isinstance(q, bnb.nn.Linear4bit) and q.weight.dtype == torch.uint8
        assert q.weight.quant_state.quant_type == "nf4"
        assert not lora_modules(model)
    finally:
        cache.checkin()
    # A full-precision job on the same base is another cache entry: a fresh load, no 4-bit layers.
    loads = cache.loads
    fp, _ = cache.checkout("tiny-llama", "generation", None)
    try:
        assert cache.loads == loads + 1 and type(fp.model.layers[0].self_attn.q_proj) is torch.nn.Linear
    finally:
        cache.checkin()


def test_a_cached_4bit_base_gets_its_own_layers_back():
    cache = BaseModelCache()
    model, _ = cache.checkout("tiny-llama", "generation", None, quantize="nf4")
    q = model.model.layers[1].self_attn.q_proj
    assert q.weight.quant_state.nested  # double quantisation
    inject_lora(model, LoraSettings(rank=4, targets=["q_proj"]))
    mark_only_lora_as_trainable(model)
    model.train()(input_ids=torch.tensor([[3, 4, 5, 6]]), labels=torch.tensor([[3, 4, 5, 6]])).loss.backward()
    assert model.model.layers[1].self_attn.q_proj.lora_B.weight.grad is not None
    assert cache.checkin()  # kept: the 4-bit base is as loaded
    again, _ = cache.checkout("tiny-llama", "generation", None, quantize="nf4")
    assert cache.hits == 1 and again.model.layers[1].self_attn.q_proj is q
    cache.checkin()


def test_the_adapter_is_a_plain_lora_adapter_of_the_unquantised_base(trained):
    res, _ = trained
    folder = res.adapter_dir
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["base_model_name_or_path"] == "tiny-llama"
    assert not any("quant" in k or "bnb" in k for k in config)
    assert sorted(config["target_modules"]) == ["down_proj", "q_proj", "v_proj"]
    card = (folder / "README.md").read_text()
    assert "nf4" in card and "unquantised base" in card
    ids = torch.tensor([[5, 17, 300, 42, 9, 1000]])

    # PEFT on the full-precision base: every tensor loads, and the update is there.
    base_fp, _ = load_base_model("tiny-llama", "generation")
    before = logits(base_fp, ids)
    peft_fp = PeftModel.from_pretrained(base_fp, str(folder)).eval()
    after = logits(peft_fp, ids)
    assert torch.isfinite(after).all() and not torch.allclose(before, after, atol=1e-4)

    # On a 4-bit base, PEFT's QLoRA layers and ours compute the same thing.
    ours, _ = load_base_model("tiny-llama", "generation", quantize="nf4")
    load_adapter(ours, folder)
    assert all(m.quantized_base is not None for _, m in lora_modules(ours))
    theirs, _ = load_base_model("tiny-llama", "generation", quantize="nf4")
    theirs = PeftModel.from_pretrained(theirs, str(folder)).eval()
    torch.testing.assert_close(logits(ours.eval(), ids), logits(theirs, ids), atol=2e-3, rtol=1e-3)


def test_nothing_merges_into_a_4bit_weight_and_dora_is_refused():
    model, _ = load_base_model("tiny-llama", "generation", quantize="nf4")
    with pytest.raises(LoraConfigError, match="whole base weight"):
        inject_lora(model, LoraSettings(method="dora", rank=4, targets=["q_proj"]))
    inject_lora(model, LoraSettings(method="lora", rank=4, targets=["q_proj"]))
    layer = model.model.layers[0].self_attn.q_proj
    assert isinstance(layer, LoRALinear) and layer.in_features == layer.out_features == 64
    with pytest.raises(LoraConfigError, match="unquantised base"):
        merge_lora(model)
    assert not layer.merged
