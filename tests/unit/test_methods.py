"""The method table and the packability rule: one entry per method, consulted everywhere.

- the table keeps the method lists and their order, refuses an entry that contradicts itself, and
  is torch-free (with the packability rule), so the CLI and the worker may read it;
- the packability rule against a hand-made table of jobs, edges included;
- one entry's `changes_base` is what the base cache, the pack and re-evaluation obey: PiSSA and
  OLoRA get their base evicted after training and are refused by a pack; a LoRA method whose
  adapter needed the changed base (a hypothetical entry) is re-evaluated on a base of its own
  (PiSSA's and OLoRA's are stored converted to plain LoRA: tests/unit/test_method_variants.py).
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest

DATA = Path(os.environ["LORAFLEET_DATA_DIR"])
ROOT = Path(__file__).resolve().parents[2]

from lora_engine import methods  # noqa: E402
from lora_engine.catalog import LORA_METHODS, METHODS  # noqa: E402
from lora_engine.errors import LoraConfigError  # noqa: E402
from lora_engine.packing import pack_family, packable, refusal  # noqa: E402


def test_the_table_keeps_the_method_lists_in_order():
    assert METHODS == methods.NAMES == (*LORA_METHODS, "full", "none")
    assert LORA_METHODS == methods.ADAPTER_METHODS == ("lora", "rslora", "dora", "loraplus", "pissa", "olora")
    assert methods.PACKABLE_METHODS == ("lora", "rslora", "dora", "loraplus")
    assert [n for n, m in methods.BY_NAME.items() if m.changes_base] == ["pissa", "olora", "full"]
    assert [methods.method(n).scale(16, 4) for n in LORA_METHODS] == [4.0, 8.0, 4.0, 4.0, 4.0, 4.0]
    # The default lr over LoRA's (rsLoRA's 1/sqrt(r) comes from its scaling, in catalog.method_defaults).
    assert [methods.method(n).lr_factor for n in METHODS] == [1.0, 1.0, 1.0, 0.25, 0.4, 0.4, 1.0, 1.0]
    assert methods.method_of_peft_config({"use_dora": True, "r": 8}) == "dora"
    assert methods.method_of_peft_config({"init_lora_weights": "pissa"}) == "pissa"
    # LoRA+ trains a LoRA at other rates: its files are a LoRA's; PiSSA's and OLoRA's a LoRA of rank 2r.
    assert methods.method_of_peft_config({"r": 8}) == "lora"
    assert [(methods.method(n).stored_method, methods.method(n).stored_rank(8)) for n in LORA_METHODS] == [
        ("lora", 8), ("rslora", 8), ("dora", 8), ("lora", 8), ("lora", 16), ("lora", 16)]
    with pytest.raises(ValueError, match="unknown method 'qlora'; allowed: lora, rslora, dora, loraplus, "
                                         "pissa, olora, full, none"):
        methods.method("qlora")


@pytest.mark.parametrize(("change", "message"), [
    ({"changes_base": True}, "only an adapter over an unchanged base can be packed"),
    ({"scaling": "alpha*r"}, "needs its PEFT flags and one of the scalings"),
    ({"trains": False, "packable": False}, "trains nothing"),
    ({"lr_factor": 0.0}, "lr_factor must be > 0"),
    ({"adapter": False, "packable": False, "peft_flags": {}, "lr_factor": 0.5}, "and 1 for a method without"),
])
def test_an_entry_that_contradicts_itself_is_refused(change, message):
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(methods.method("lora"), **change)


def test_the_table_and_the_rule_import_no_torch():
    probe = ("import sys, lora_engine.methods, lora_engine.packing, lora_engine.catalog; "
             "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize(("job", "family", "why"), [
    ({"method": "lora", "arch": "bert", "kind": "classification"}, "encoder", None),
    ({"method": "dora", "arch": "roberta", "kind": "regression"}, "encoder", None),
    ({"method": "rslora", "arch": "llama", "kind": "generation"}, "decoder", None),
    ({"method": "full", "arch": "bert", "kind": "classification"}, None,
     "method 'full' cannot be packed (it changes the shared base weights); "
     "packable methods: lora, rslora, dora, loraplus"),
    ({"method": "pissa", "arch": "bert", "kind": "classification"}, None,
     "method 'pissa' cannot be packed (it changes the shared base weights)"),
    ({"method": "loraplus", "arch": "llama", "kind": "generation"}, "decoder", None),
    ({"method": "none", "arch": "bert", "kind": "classification"}, None, "(it trains nothing)"),
    ({"method": "qlora", "arch": "bert", "kind": "classification"}, None, "unknown method 'qlora'"),
    ({"method": "lora", "arch": "gpt2", "kind": "generation"}, None, "a generation job on a gpt2 base"),
    ({"method": "lora", "arch": "llama", "kind": "classification"}, None, "a classification job on a llama"),
    ({"method": "lora", "arch": "bert", "kind": "generation"}, None, "a generation job on a bert base"),
    ({"method": "lora", "arch": None, "kind": "classification"}, None, "on a unknown base"),
    ({"method": "lora", "arch": "bert", "kind": "classification", "evaluates": True}, None,
     "evaluates during training"),
    ({"method": "lora", "arch": "bert", "kind": "classification", "continues_adapter": True}, None,
     "continues an adapter (init_from)"),
])
def test_the_packability_rule(job, family, why):
    assert packable(**job) == family
    got = refusal(**job)
    assert (got is None) == (why is None) and (why is None or why in got)
    if family is not None:
        assert pack_family(job["arch"], job["kind"]) == family


# --- a method that changes the base (PiSSA, OLoRA; a hypothetical LoRA that did) ----------------

SST2 = {"task": "sst2", "base_model": "tiny-bert", "max_steps": 1, "batch_size": 8, "eval_size": 8,
        "max_length": 32}


@pytest.fixture
def lora_changes_the_base(monkeypatch):
    """The table as if LoRA's initialisation rewrote W0 (PiSSA's residual): one entry changed."""
    monkeypatch.setitem(methods.BY_NAME, "lora",
                        dataclasses.replace(methods.method("lora"), changes_base=True, packable=False))


def _train_twice_on_one_cache(tmp_path: Path, method: str = "lora"):
    from lora_engine.cache import BaseModelCache
    from lora_engine.recipe import train

    cache = BaseModelCache()
    for seed in (1, 2):
        train({**SST2, "seed": seed, "method": method}, tmp_path / f"a{seed}", data_dir=DATA, cache=cache)
    return cache


@pytest.mark.parametrize("method", ["pissa", "olora"])
def test_the_base_cache_evicts_a_base_whose_method_changes_it(tmp_path, method):
    cache = _train_twice_on_one_cache(tmp_path, method)
    assert (cache.loads, cache.hits, cache.evictions) == (2, 0, 2)


def test_the_base_cache_serves_a_base_lora_leaves_as_loaded(tmp_path):
    cache = _train_twice_on_one_cache(tmp_path)
    assert (cache.loads, cache.hits, cache.evictions) == (1, 1, 0)


def test_a_pack_refuses_a_method_that_changes_the_base(tmp_path):
    from lora_engine.models import load_base_model
    from lora_engine.packed import Pack

    model, tok = load_base_model("tiny-bert", "classification", 2)
    pack = Pack(model, tok, data_dir=DATA, base_model="tiny-bert")
    before = {n for n, _ in model.named_modules()}
    with pytest.raises(LoraConfigError, match=r"method 'pissa' cannot be packed \(it changes the shared"):
        pack.add({**SST2, "method": "pissa"}, tmp_path / "refused")
    assert not pack.jobs and {n for n, _ in model.named_modules()} == before


@pytest.mark.parametrize("changes_base", [False, True])
def test_reevaluation_scores_a_base_changing_adapter_on_a_base_of_its_own(tmp_path, request, changes_base):
    from lora_engine.cache import BaseModelCache
    from lora_engine.recipe import train
    from lora_engine.reevaluation import AdapterToScore, reevaluate

    folders = [train({**SST2, "seed": s}, tmp_path / f"a{s}", data_dir=DATA).adapter_dir for s in (1, 2)]
    if changes_base:
        request.getfixturevalue("lora_changes_the_base")
    cache = BaseModelCache()
    res = reevaluate([AdapterToScore(f"a{i}", f, "sst2", "tiny-bert") for i, f in enumerate(folders)],
                     data_dir=DATA, cache=cache, eval_size=8)
    assert res.skipped == {} and set(res.scores) == {"a0", "a1"}
    # Alone: one base per adapter, each evicted after it; otherwise one base, the second swapped in.
    assert (res.base_loads, res.injections, res.swaps, cache.evictions) == (
        (2, 2, 0, 2) if changes_base else (1, 1, 1, 0))


# --- a method is one entry: a new row (and its initialiser) is all the adapter files need ---------

def test_a_new_entry_and_its_initialiser_save_and_load_through_the_table(tiny_model, perturb_lora, tmp_path,
                                                                         monkeypatch):
    import json

    import torch

    from lora_engine import layers
    from lora_engine.adapters.io import load_adapter, read_adapter_files, save_adapter
    from lora_engine.inject import LoraSettings, inject_lora, lora_modules

    started = []

    def ones_init(layer):  # a start of its own, so the test sees the layer used it
        started.append(layer)
        torch.nn.init.ones_(layer.lora_A.weight)
        torch.nn.init.zeros_(layer.lora_B.weight)

    # A copy of LoRA that PEFT knows by its own init_lora_weights: one row, one initialiser.
    monkeypatch.setitem(methods.BY_NAME, "lora-ones", dataclasses.replace(
        methods.method("lora"), name="lora-ones", init="ones",
        peft_flags={"use_rslora": False, "use_dora": False, "init_lora_weights": "ones"}))
    monkeypatch.setitem(layers.INITIALISERS, "ones", ones_init)
    with pytest.raises(ValueError, match="use_ones is no PEFT flag the table reads"):
        dataclasses.replace(methods.method("lora"), peft_flags={"use_ones": True})

    def save(method: str, folder: Path) -> dict:
        model, _ = tiny_model("tiny-bert")
        settings = LoraSettings(method=method, rank=4, alpha=8)
        inject_lora(model, settings)
        ones = [bool((m.lora_A.weight == 1).all()) for _, m in lora_modules(model)]
        assert ones and all(ones) == (method == "lora-ones")  # the entry's initialiser, and only its
        perturb_lora(model)
        save_adapter(model, folder, base_model_name="tiny-bert", settings=settings,
                     task_type="classification")
        return {n: t.clone() for n, t in model.state_dict().items() if "lora_" in n}

    saved = save("lora-ones", tmp_path / "ones")
    config = json.loads((tmp_path / "ones" / "adapter_config.json").read_text())
    save("lora", tmp_path / "lora")
    plain = json.loads((tmp_path / "lora" / "adapter_config.json").read_text())
    # The entry's flags are in the file; all else is LoRA's (whose init_lora_weights stays PEFT's True).
    assert (config["init_lora_weights"], config["use_rslora"], config["use_dora"]) == ("ones", False, False)
    assert plain["init_lora_weights"] is True
    assert {k: v for k, v in config.items() if k != "init_lora_weights"} == {
        k: v for k, v in plain.items() if k != "init_lora_weights"}

    files = read_adapter_files(tmp_path / "ones")
    assert files.settings.method == "lora-ones"
    model, _ = tiny_model("tiny-bert")
    started.clear()
    load_adapter(model, files)
    loaded = lora_modules(model)
    assert len(started) == len(loaded) and {m.method for _, m in loaded} == {"lora-ones"}
    state = model.state_dict()
    assert saved.keys() <= state.keys() and all(torch.equal(state[n], t) for n, t in saved.items())
