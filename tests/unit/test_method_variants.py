"""LoRA+, PiSSA and OLoRA against the real peft package.

- PiSSA and OLoRA start exactly where PEFT's `init_lora_weights="pissa"` / `"olora"` start (A0, B0
  and the residual base), and the adapter lorafleet stores is PEFT's own conversion
  (`save_pretrained(..., path_initial_model_for_weight_conversion=...)`): the same plain LoRA of
  rank 2r, tensor for tensor, which PEFT alone and lorafleet's loader use on the untouched base
  to give the trained model's outputs (B ≠ B0 after a perturbation, so the update is not zero).
- LoRA+ gives every LoRA tensor the learning rate PEFT's `create_loraplus_optimizer` gives it
  (A at lr, B at lr × ratio, an embedding's A and B at PEFT's embedding rate).
- A PEFT PiSSA adapter saved as trained (it needs its residual base) is refused, naming the fix.
- A whole run (recipe.train, MiniLM-L6, 2 steps): the stored PiSSA adapter, loaded by PEFT on a
  fresh base, scores what the run measured; the warm base cache is not handed out again.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, PeftModel, TaskType, get_peft_model
from peft.optimizers import create_loraplus_optimizer

from lora_engine.adapters.io import load_adapter, save_adapter, settings_from_config
from lora_engine.errors import AdapterError
from lora_engine.forward.encoder import set_pooling
from lora_engine.inject import (
    LoraSettings,
    head_module_names,
    inject_lora,
    lora_modules,
    mark_only_lora_as_trainable,
)
from lora_engine.recipe import LORAPLUS_LR_EMBEDDING, param_groups

DATA = Path(os.environ["LORAFLEET_DATA_DIR"])
TARGETS = {"tiny-bert": ["query", "value"], "tiny-llama": ["q_proj", "v_proj"]}
CASES = [("tiny-bert", "classification"), ("tiny-llama", "generation")]


def _peft_task(kind: str) -> TaskType:
    return TaskType.CAUSAL_LM if kind == "generation" else TaskType.SEQ_CLS


def _logits(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(**batch).logits


@pytest.mark.parametrize("method", ["pissa", "olora"])
@pytest.mark.parametrize(("alias", "kind"), CASES)
def test_pissa_and_olora_start_and_store_as_peft_does(tiny_model, tiny_inputs, perturb_lora, tmp_path,
                                                       alias, kind, method):
    fresh, tok = tiny_model(alias, kind)
    batch = tiny_inputs(tok)
    base_out = _logits(fresh, batch)
    ours, theirs_base = copy.deepcopy(fresh), copy.deepcopy(fresh)
    settings = LoraSettings(method=method, rank=4, alpha=8, targets=TARGETS[alias])
    inject_lora(ours, settings)
    mark_only_lora_as_trainable(ours, modules_to_save=head_module_names(ours))
    config = LoraConfig(task_type=_peft_task(kind), r=4, lora_alpha=8, target_modules=TARGETS[alias],
                        init_lora_weights=method)
    peft_model = get_peft_model(theirs_base, config)
    layers = lora_modules(ours)
    assert len(layers) == 4
    for name, layer in layers:  # the same start, to float rounding
        theirs = peft_model.base_model.model.get_submodule(name)
        torch.testing.assert_close(layer.lora_A.weight, theirs.lora_A["default"].weight)
        torch.testing.assert_close(layer.lora_B.weight, theirs.lora_B["default"].weight)
        torch.testing.assert_close(layer.weight, theirs.base_layer.weight)
        assert not torch.allclose(layer.weight, fresh.get_submodule(name).weight, atol=1e-3)  # a residual
    torch.testing.assert_close(_logits(ours, batch), base_out, atol=1e-5, rtol=1e-4)

    # PEFT's documented recipe: the initial adapter saved as plain LoRA, then the trained one converted.
    peft_model.peft_config["default"].init_lora_weights = True
    peft_model.save_pretrained(tmp_path / "initial")
    perturb_lora(ours)  # "training": every A and B moves away from A0, B0
    for name, layer in layers:
        theirs = peft_model.base_model.model.get_submodule(name)
        theirs.lora_A["default"].weight.data.copy_(layer.lora_A.weight)
        theirs.lora_B["default"].weight.data.copy_(layer.lora_B.weight)
    trained = _logits(ours, batch)
    assert not torch.allclose(trained, base_out, atol=1e-3)
    save_adapter(ours, tmp_path / "ours", base_model_name=alias, settings=settings, task_type=kind)
    peft_model.save_pretrained(tmp_path / "peft",
                               path_initial_model_for_weight_conversion=str(tmp_path / "initial"))

    ours_cfg = json.loads((tmp_path / "ours" / "adapter_config.json").read_text())
    peft_cfg = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    for key in ("r", "lora_alpha", "init_lora_weights", "use_rslora", "use_dora"):
        assert ours_cfg[key] == peft_cfg[key], key
    assert (ours_cfg["r"], ours_cfg["lora_alpha"], ours_cfg["init_lora_weights"]) == (8, 16, True)
    from safetensors.torch import load_file

    ours_t = load_file(tmp_path / "ours" / "adapter_model.safetensors")
    peft_t = load_file(tmp_path / "peft" / "adapter_model.safetensors")
    lora_keys = sorted(k for k in peft_t if "lora_" in k)
    assert len(lora_keys) == 8 and all(k in ours_t for k in lora_keys)
    for key in lora_keys:
        torch.testing.assert_close(ours_t[key], peft_t[key])

    # On the untouched base: PEFT alone and lorafleet's loader give the trained model's outputs.
    by_peft = PeftModel.from_pretrained(copy.deepcopy(fresh), tmp_path / "ours")
    torch.testing.assert_close(_logits(by_peft, batch), trained, atol=1e-5, rtol=1e-4)
    here = copy.deepcopy(fresh)
    assert settings_from_config(load_adapter(here, tmp_path / "ours")).method == "lora"
    torch.testing.assert_close(_logits(here, batch), trained, atol=1e-5, rtol=1e-4)


def test_loraplus_rates_are_pefts(tiny_model):
    model, _ = tiny_model("tiny-bert", "classification")
    targets = ["query", "value", "word_embeddings"]
    theirs = get_peft_model(copy.deepcopy(model), LoraConfig(task_type=TaskType.SEQ_CLS, r=4, lora_alpha=8,
                                                             target_modules=targets))
    optimizer = create_loraplus_optimizer(theirs, torch.optim.AdamW, lr=1e-3, loraplus_lr_ratio=16)
    names = {id(p): n for n, p in theirs.named_parameters()}
    peft_lr = {names[id(p)].removeprefix("base_model.model.").replace(".default", ""): g["lr"]
               for g in optimizer.param_groups for p in g["params"]}

    inject_lora(model, LoraSettings(method="loraplus", rank=4, alpha=8, targets=targets))
    mark_only_lora_as_trainable(model, modules_to_save=head_module_names(model))
    names = {id(p): n for n, p in model.named_parameters()}
    groups = param_groups(model, head_module_names(model), lr=1e-3, head_lr=2e-3, weight_decay=0.01,
                          lr_rule="loraplus", lr_ratio=16.0)
    ours_lr = {names[id(p)]: g["lr"] for g in groups for p in g["params"]}
    lora = sorted(n for n in ours_lr if "lora_" in n)
    assert len(lora) == 10  # 2 layers × (query, value) × (A, B) + the embedding's A and B
    assert {n: ours_lr[n] for n in lora} == {n: peft_lr[n] for n in lora}
    assert sorted(set(ours_lr[n] for n in lora)) == [LORAPLUS_LR_EMBEDDING, 1e-3, 1.6e-2]
    # lorafleet's head keeps its own rate (PEFT's function knows no head rate).
    assert {ours_lr[n] for n in ours_lr if n.startswith("classifier.")} == {2e-3}


def test_a_pissa_adapter_saved_as_trained_is_refused(tiny_model, perturb_lora, tmp_path):
    model, _ = tiny_model("tiny-bert", "classification")
    peft_model = get_peft_model(model, LoraConfig(task_type=TaskType.SEQ_CLS, r=4, lora_alpha=8,
                                                  target_modules=["query"], init_lora_weights="pissa"))
    perturb_lora(peft_model)
    peft_model.save_pretrained(tmp_path / "raw")
    fresh, _ = tiny_model("tiny-bert", "classification")
    with pytest.raises(AdapterError, match=r"needs the residual base it ran on.*path_initial_model_for_"):
        load_adapter(fresh, tmp_path / "raw")


def test_a_pissa_run_stores_an_adapter_peft_scores_alike(tmp_path):
    from lora_engine.cache import BaseModelCache
    from lora_engine.device import pick_device
    from lora_engine.evaluate import EvalTarget, score_validation, validation_examples
    from lora_engine.models import load_base_model
    from lora_engine.recipe import train

    cache = BaseModelCache()
    spec = {"task": "sst2", "method": "pissa", "rank": 4, "max_steps": 2, "batch_size": 8, "eval_size": 32}
    res = train(spec, tmp_path / "a", data_dir=DATA, cache=cache)
    assert cache.key is None  # the base it ran on is a residual: not handed out again
    meta = json.loads((res.adapter_dir / "lorafleet.json").read_text())
    config = json.loads((res.adapter_dir / "adapter_config.json").read_text())
    stored = (meta["method"], meta["spec"]["rank"], config["r"], config["init_lora_weights"])
    assert stored == ("pissa", 4, 8, True)
    card = (res.adapter_dir / "README.md").read_text()
    assert "Trained as pissa r=4 on the base model's residual" in card and "adapter of rank 8" in card

    # PEFT's loader (and its merge) on a fresh, untouched base, scored by lorafleet's evaluation.
    base, tokenizer = load_base_model("minilm-l6", "classification", 2)
    model = PeftModel.from_pretrained(base, res.adapter_dir).merge_and_unload()
    set_pooling(model, meta["pooling"])
    target = EvalTarget(task="sst2", max_length=meta["max_length"], eval_size=32)
    scores = score_validation(model, tokenizer, target, validation_examples(target, data_dir=DATA),
                              device=pick_device())
    assert scores == res.metrics


def test_the_spec_takes_the_new_methods_and_refuses_what_they_do_not_read(tmp_path):
    from lora_engine.errors import SpecError
    from lora_engine.spec import LORAPLUS_LR_RATIO, validate_spec

    assert LORAPLUS_LR_RATIO == 16
    assert validate_spec({"task": "sst2", "method": "loraplus"}).resolved().loraplus_lr_ratio == 16
    assert validate_spec({"task": "sst2", "method": "loraplus", "loraplus_lr_ratio": 4.0}).resolved(
    ).loraplus_lr_ratio == 4.0
    assert validate_spec({"task": "sst2", "method": "pissa"}).resolved().loraplus_lr_ratio is None
    (tmp_path / "adapter_config.json").write_text("{}")
    with pytest.raises(SpecError) as err:
        validate_spec({"task": "sst2", "method": "lora", "loraplus_lr_ratio": 0.5})
    assert err.value.problems == ["loraplus_lr_ratio: must be between 1 and 1024 (got 0.5)",
                                  "loraplus_lr_ratio: only method 'loraplus' reads it (got method 'lora')"]
    with pytest.raises(SpecError, match="init_from: method 'olora' starts from the base model's own weights; "
                                        "its adapters are stored as lora of rank 2r"):
        validate_spec({"task": "sst2", "method": "olora", "init_from": str(tmp_path)})


def test_a_packed_loraplus_job_trains_as_alone(tmp_path):
    import numpy as np

    from lora_engine.models import load_base_model
    from lora_engine.packed import Pack
    from lora_engine.recipe import train

    rows = "".join(json.dumps({"text": f"row {i} is {['good', 'bad', 'dull'][i % 3]} " + "x " * (i % 5),
                               "label": i % 2}) + "\n" for i in range(40))
    (tmp_path / "d.jsonl").write_text(rows)
    base = {"task": "custom-classification", "base_model": "tiny-bert", "dataset": str(tmp_path / "d.jsonl"),
            "batch_size": 4, "max_length": 32, "max_steps": 4, "rank": 4}
    jobs = {"plus": {**base, "method": "loraplus", "seed": 1}, "lora": {**base, "seed": 2}}
    solo = {k: train(s, tmp_path / f"solo-{k}", data_dir=DATA) for k, s in jobs.items()}
    model, tok = load_base_model("tiny-bert", "classification", 2)
    pack = Pack(model, tok, data_dir=DATA, base_model="tiny-bert")
    for k, s in jobs.items():
        pack.add(s, tmp_path / f"pack-{k}", key=k)
    out = pack.run()
    for k in jobs:
        np.testing.assert_allclose(out[k].result.losses, solo[k].losses, rtol=0, atol=1e-5)
    # LoRA+'s rates are not LoRA's: the same job at ratio 1 (plain LoRA rates) takes another path.
    same = train({**jobs["plus"], "loraplus_lr_ratio": 1.0}, tmp_path / "ratio-1", data_dir=DATA)
    assert not np.allclose(same.losses[1:], solo["plus"].losses[1:], rtol=0, atol=1e-6)


def test_reevaluation_swaps_a_stored_pissa_adapter_onto_the_shared_base(tmp_path):
    from lora_engine.cache import BaseModelCache
    from lora_engine.recipe import train
    from lora_engine.reevaluation import AdapterToScore, reevaluate

    spec = {"task": "sst2", "base_model": "tiny-bert", "max_steps": 2, "batch_size": 8, "eval_size": 16,
            "max_length": 32, "rank": 4}
    runs = {m: train({**spec, "method": m, "rank": 8 if m == "lora" else 4}, tmp_path / m, data_dir=DATA)
            for m in ("lora", "pissa")}
    res = reevaluate([AdapterToScore(m, r.adapter_dir, "sst2", "tiny-bert") for m, r in runs.items()],
                     data_dir=DATA, cache=BaseModelCache(), eval_size=16)
    # Stored as a LoRA of rank 8 on the untouched base: one base, the second adapter swapped in.
    assert (res.skipped, res.base_loads, res.injections, res.swaps) == ({}, 1, 1, 1)
    assert res.scores["pissa"] == runs["pissa"].metrics


@pytest.mark.parametrize("method", ["pissa", "olora"])
@pytest.mark.parametrize(("layer_type", "dtype"), [("linear", torch.float32), ("linear", torch.bfloat16),
                                                   ("conv1d", torch.float32)])
def test_the_residual_and_the_start_add_up_to_w0(method, layer_type, dtype):
    from transformers.pytorch_utils import Conv1D

    from lora_engine.layers import LoRALinear

    torch.manual_seed(0)
    base = (torch.nn.Linear(32, 24) if layer_type == "linear" else Conv1D(24, 32)).to(dtype)
    w0 = (base.weight.t() if layer_type == "conv1d" else base.weight).detach().float().clone()
    layer = LoRALinear(base, 4, 8.0, method=method)
    assert layer.lora_A.weight.dtype == dtype and layer.lora_A.weight.shape == (4, 32)
    residual = layer.base_weight_oi().float()
    assert (residual - w0).abs().max() > 0.1 * w0.abs().max()  # the start was taken out of W0 ...
    rebuilt = residual + layer.scaling * layer.initial_B.float() @ layer.initial_A.float()
    tol = 1e-5 if dtype == torch.float32 else 1e-2  # ... and adds back to it (bf16: one rounding)
    torch.testing.assert_close(rebuilt, w0, atol=tol * w0.abs().max().item(), rtol=0)
    x = torch.randn(5, 32, dtype=dtype)
    # The layer computes the untouched base (base's own weight is the residual now: shared).
    expected = x.float() @ w0.t() + base.bias.float()
    atol = 1e-4 if dtype == torch.float32 else 0.1
    torch.testing.assert_close(layer(x).float(), expected, atol=atol, rtol=0)


def test_loraplus_continues_a_lora_adapter_and_pissa_is_continued_as_its_stored_lora(tmp_path):
    from lora_engine.errors import LoraConfigError
    from lora_engine.recipe import train

    spec = {"task": "sst2", "base_model": "tiny-bert", "max_steps": 1, "batch_size": 8, "eval_size": 8,
            "max_length": 32, "rank": 4}
    lora = train(spec, tmp_path / "lora", data_dir=DATA).adapter_dir
    plus = train({**spec, "method": "loraplus", "init_from": str(lora)}, tmp_path / "plus", data_dir=DATA)
    assert json.loads((plus.adapter_dir / "lorafleet.json").read_text())["method"] == "loraplus"
    pissa = train({**spec, "method": "pissa"}, tmp_path / "pissa", data_dir=DATA).adapter_dir
    more = train({**spec, "rank": 8, "init_from": str(pissa)}, tmp_path / "more", data_dir=DATA)
    assert json.loads((more.adapter_dir / "adapter_config.json").read_text())["r"] == 8
    with pytest.raises(LoraConfigError, match="init_from adapter is lora r=8, the spec asks for dora r=8"):
        train({**spec, "rank": 8, "method": "dora", "init_from": str(pissa)}, tmp_path / "no", data_dir=DATA)
