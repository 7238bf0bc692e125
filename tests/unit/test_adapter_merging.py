"""Merging adapters (lora_engine.adapter_merging) against PEFT's own `add_weighted_adapter`.

Not test_merge.py (LoRA merged into the base). Parents are real lorafleet adapters of tiny models
with B ≠ 0, of different seeds. PEFT refuses to merge adapters that both save a head
(modules_to_save), so its side loads copies of the parents without their heads; the heads are
checked against the weighted average the docs promise.

DARE is random: PEFT draws its masks with `torch.bernoulli` from the global generator, after the
new adapter's injection has drawn its initial A from it. The test replays that injection on the
same model with the same config (`add_adapter`) after the same seed, and hands our merge a
generator in the resulting state: from there both draw the same masks in the same order, so the
DARE results are compared exactly too, not just in distribution.
"""

from __future__ import annotations

import shutil

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file, save_file

from lora_engine.adapter_merging import HOWS, RANDOM, merge_options_problems
from lora_engine.adapter_merging.folders import merge_adapter_folders, merged_tensors, read_parents
from lora_engine.adapters.folder import read_adapter_config, write_json
from lora_engine.adapters.io import load_adapter, save_adapter
from lora_engine.errors import AdapterError
from lora_engine.inject import LoraSettings, head_module_names, inject_lora, mark_only_lora_as_trainable

CASES = [("tiny-bert", "classification"), ("tiny-llama", "generation"), ("tiny-gpt2", "classification")]
WEIGHTS = [0.7, -0.4]  # one negative: PEFT puts its sign on A only


def _parent(tiny_model, perturb_lora, folder, alias, kind, seed, *, rank=4, method="lora", alpha=8):
    torch.manual_seed(seed)
    model, _ = tiny_model(alias, kind)
    settings = LoraSettings(method=method, rank=rank, alpha=alpha)
    inject_lora(model, settings)
    mark_only_lora_as_trainable(model, modules_to_save=head_module_names(model))
    perturb_lora(model, seed=seed)
    if kind == "classification":  # a head of its own per parent
        with torch.no_grad():
            for name in head_module_names(model):
                for p in model.get_submodule(name).parameters():
                    p.add_(torch.randn_like(p))
    return save_adapter(model, folder, base_model_name=alias, settings=settings, task_type=kind)


def _headless(folder, dest):
    """A copy of an adapter without its saved modules (what PEFT agrees to merge)."""
    shutil.copytree(folder, dest)
    config = read_adapter_config(dest)
    write_json(dest / "adapter_config.json", {**config, "modules_to_save": None, "task_type": None})
    weights = load_file(dest / "adapter_model.safetensors")
    save_file({k: v for k, v in weights.items() if "lora_" in k}, dest / "adapter_model.safetensors")
    return dest


def _peft_merge(tiny_model, alias, kind, folders, how, density, seed):
    base, _ = tiny_model(alias, kind)
    model = PeftModel.from_pretrained(base, folders[0], adapter_name="p0")
    for i, f in enumerate(folders[1:], 1):
        model.load_adapter(f, adapter_name=f"p{i}")
    torch.manual_seed(seed)
    model.add_weighted_adapter([f"p{i}" for i in range(len(folders))], WEIGHTS, "m",
                               combination_type=how, density=density if how != "linear" else None)
    generator = None
    if how in RANDOM:  # replay the injection that drew from the global generator before the masks
        torch.manual_seed(seed)
        model.add_adapter("replay", model.peft_config["m"])
        generator = torch.Generator().manual_seed(0)
        generator.set_state(torch.get_rng_state())
    merged = {n: m for n, m in model.named_modules() if hasattr(m, "lora_A") and "m" in m.lora_A}
    return model, merged, generator


@pytest.mark.parametrize("how", HOWS)
@pytest.mark.parametrize(("alias", "kind"), CASES)
def test_lora_matrices_are_peft_add_weighted_adapter(tiny_model, perturb_lora, tmp_path, alias, kind, how):
    ranks = (4, 2) if how == "cat" else (4, 4)
    folders = [_parent(tiny_model, perturb_lora, tmp_path / f"p{i}", alias, kind, seed=i + 1, rank=r)
               for i, r in enumerate(ranks)]
    headless = [_headless(f, tmp_path / f"h{i}") for i, f in enumerate(folders)]
    _, peft_modules, generator = _peft_merge(tiny_model, alias, kind, headless, how, 0.5, seed=11)

    ours, rank = merged_tensors(read_parents(folders), WEIGHTS, how, 0.5, generator)
    assert rank == sum(ranks) if how == "cat" else rank == 4
    assert len(peft_modules) == sum(k.endswith(".lora_A.weight") for k in ours) > 0
    for name, module in peft_modules.items():
        name = name.removeprefix("base_model.model.")
        torch.testing.assert_close(ours[f"{name}.lora_A.weight"], module.lora_A["m"].weight, rtol=0, atol=0)
        torch.testing.assert_close(ours[f"{name}.lora_B.weight"], module.lora_B["m"].weight, rtol=0, atol=0)
        assert module.lora_B["m"].weight.abs().sum() > 0  # B ≠ 0: nothing passes on zeros
    if how in RANDOM:  # structurally too: about `density` of A survives, rescaled by 1/density
        a = torch.cat([t.flatten() for k, t in ours.items() if k.endswith("lora_A.weight")])
        kept = (a != 0).float().mean().item()
        assert 0.5 <= kept <= 0.9  # two parents' masks of density 0.5: 1 - 0.5² = 0.75 expected


@pytest.mark.parametrize(("alias", "kind"), CASES[:2])
def test_merged_folder_loads_in_peft_and_here_with_same_outputs(tiny_model, tiny_inputs, perturb_lora,
                                                                 tmp_path, alias, kind):
    folders = [_parent(tiny_model, perturb_lora, tmp_path / f"p{i}", alias, kind, seed=i + 1)
               for i in range(2)]
    merged = merge_adapter_folders(folders, tmp_path / "m", how="ties", weights=[0.6, 0.4], density=0.5,
                                   parent_ids=["a", "b"])
    assert merged.rank == 4
    model, tok = tiny_model(alias, kind)
    batch = tiny_inputs(tok)
    load_adapter(model, merged.folder)
    base, _ = tiny_model(alias, kind)
    peft_model = PeftModel.from_pretrained(base, merged.folder).eval()
    outs = {}
    with torch.no_grad():
        ours = model.eval()(**batch).logits
        theirs = peft_model(**batch).logits
        for i, f in enumerate(folders):
            parent, _ = tiny_model(alias, kind)
            load_adapter(parent, f)
            outs[i] = parent.eval()(**batch).logits
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    assert all(not torch.allclose(ours, o, atol=1e-4) for o in outs.values())
    weights = load_file(merged.folder / "adapter_model.safetensors")
    heads = [k for k in weights if "lora_" not in k]
    assert bool(heads) == (kind == "classification")
    for key in heads:  # the heads: Σ wᵢ·hᵢ / Σ wᵢ
        parents = [load_file(f / "adapter_model.safetensors")[key] for f in folders]
        torch.testing.assert_close(weights[key], 0.6 * parents[0] + 0.4 * parents[1])
    meta = (merged.folder / "lorafleet.json").read_text()
    assert '"how": "ties"' in meta and '"a"' in meta


def test_cat_is_the_exact_weighted_sum_of_updates(tiny_model, perturb_lora, tmp_path):
    folders = [_parent(tiny_model, perturb_lora, tmp_path / f"p{i}", "tiny-llama", "generation", seed=i + 1,
                       rank=r, method=m) for i, (r, m) in enumerate([(4, "lora"), (2, "rslora")])]
    parents = read_parents(folders)
    ours, rank = merged_tensors(parents, WEIGHTS, "cat", 0.5)
    assert rank == 6
    key = next(k for k in ours if k.endswith("lora_A.weight")).removesuffix(".lora_A.weight")
    w_of = lambda p, factor: p.files.weights[f"{key}.lora_{factor}.weight"]  # noqa: E731
    expected = sum(w * p.scaling * w_of(p, "B") @ w_of(p, "A") for p, w in zip(parents, WEIGHTS, strict=True))
    torch.testing.assert_close(ours[f"{key}.lora_B.weight"] @ ours[f"{key}.lora_A.weight"], expected)


def test_refused_before_writing(tiny_model, perturb_lora, tmp_path):
    lora4 = _parent(tiny_model, perturb_lora, tmp_path / "a", "tiny-bert", "classification", seed=1)
    lora2 = _parent(tiny_model, perturb_lora, tmp_path / "b", "tiny-bert", "classification", seed=2, rank=2)
    dora = _parent(tiny_model, perturb_lora, tmp_path / "c", "tiny-bert", "classification", seed=3,
                   method="dora")
    two_labels = tmp_path / "d"
    torch.manual_seed(4)
    model, _ = tiny_model("tiny-bert", "classification", num_labels=2)
    inject_lora(model, LoraSettings(rank=4, alpha=8))
    save_adapter(model, two_labels, base_model_name="tiny-bert", settings=LoraSettings(rank=4, alpha=8),
                 task_type="classification")
    cases = {(lora4, lora2): "ranks 2, 4", (lora4, dora): "dora adapter cannot be merged",
             (lora4, two_labels): "different modules"}
    for (a, b), words in cases.items():
        with pytest.raises(AdapterError, match=words):
            merge_adapter_folders([a, b], tmp_path / "out", how="linear", weights=[0.5, 0.5])
        assert not (tmp_path / "out").exists()
    merge_adapter_folders([lora4, lora2], tmp_path / "cat", how="cat", weights=[0.5, 0.5])  # cat may
    with pytest.raises(AdapterError, match="sum to more than 0"):
        merge_adapter_folders([lora4, lora4], tmp_path / "out", how="linear", weights=[0.5, -0.5])


@pytest.mark.parametrize(("how", "weights", "density", "n", "words"), [
    ("svd", None, None, 2, "unknown merge method"),
    ("linear", [1.0], None, 2, "1 weight"),
    ("linear", [float("nan"), 1.0], None, 2, "finite"),
    ("linear", [True, 1.0], None, 2, "finite"),
    ("ties", None, 0.0, 2, r"density must be a number in \(0, 1\]"),
    ("linear", None, 0.5, 2, "density applies to"),
    ("linear", None, None, 1, "2 to 16"),
    ("linear", [0.0, 0.0], None, 2, "non-zero"),
])
def test_option_problems(how, weights, density, n, words):
    problems = merge_options_problems(how, weights, density, n)
    assert any(__import__("re").search(words, p) for p in problems), problems
    assert merge_options_problems("dare_ties", [0.5, 0.5], 0.3, 2) == []


def test_dare_is_reproducible_from_its_seed(tiny_model, perturb_lora, tmp_path):
    folders = [_parent(tiny_model, perturb_lora, tmp_path / f"p{i}", "tiny-llama", "generation", seed=i + 1)
               for i in range(2)]
    runs = {}
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        torch.manual_seed(name == "b")  # the global generator's state does not matter
        merge_adapter_folders(folders, tmp_path / name, how="dare_ties", weights=[0.5, 0.5], seed=seed)
        runs[name] = load_file(tmp_path / name / "adapter_model.safetensors")
    assert all(torch.equal(runs["a"][k], runs["b"][k]) for k in runs["a"])
    assert not all(torch.equal(runs["a"][k], runs["c"][k]) for k in runs["a"])
