"""The training recipe on tiny models: schedule, parameter groups, outputs, hooks, cache, init_from."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

os.environ.setdefault("HF_HUB_OFFLINE", "1")
DATA = Path(os.environ["LORAFLEET_DATA_DIR"])

from lora_engine.cache import BaseModelCache  # noqa: E402
from lora_engine.catalog import ARCH_DEFAULTS  # noqa: E402
from lora_engine.errors import LoraConfigError, SpecError, TrainingStopped  # noqa: E402
from lora_engine.generate import GREEDY  # noqa: E402
from lora_engine.models import load_base_model  # noqa: E402
from lora_engine.recipe import (  # noqa: E402
    TrainHooks,
    param_groups,
    train,
)
from lora_engine.schedule import lr_factor, total_optimizer_steps, warmup_steps  # noqa: E402

SST2 = {"task": "sst2", "base_model": "tiny-bert", "max_steps": 3, "batch_size": 8, "eval_size": 32,
        "max_length": 64}


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def gen_rows(n: int = 24) -> list[dict]:
    names = ["Alimentum", "Aromi", "Bibimbap House", "Blue Spice", "Clowns", "Cocum"]
    foods = ["French", "Italian", "Chinese", "English"]
    return [{"prompt": f"name[{names[i % 6]}], food[{foods[i % 4]}]\n",
             "completion": f"{names[i % 6]} serves {foods[i % 4]} food."} for i in range(n)]


# --- the schedule: pure functions, hand tables -----------------------------------------------------


@pytest.mark.parametrize(("step", "total", "warmup", "expected"), [
    (0, 10, 0, 1.0),        # no warm-up: full rate on the first step
    (9, 10, 0, 0.1),        # last step: 1/(T-W), never 0
    (0, 10, 3, 0.25),       # warm-up (s+1)/(W+1)
    (1, 10, 3, 0.5),
    (2, 10, 3, 0.75),
    (3, 10, 3, 1.0),        # peak at s = W
    (4, 10, 3, 6 / 7),      # decay (T-s)/(T-W)
    (9, 10, 3, 1 / 7),
    (0, 1, 0, 1.0),         # a one-step run
])
def test_lr_factor_table(step, total, warmup, expected):
    assert lr_factor(step, total, warmup) == pytest.approx(expected)


@pytest.mark.parametrize(("step", "total", "warmup"), [(10, 10, 0), (-1, 10, 0), (0, 10, 10), (0, 0, 0)])
def test_lr_factor_rejects_out_of_range(step, total, warmup):
    with pytest.raises(ValueError, match="must be in"):
        lr_factor(step, total, warmup)


@pytest.mark.parametrize(("total", "ratio", "expected"),
                         [(100, 0.06, 6), (10, 0.06, 0), (1, 0.5, 0), (195, 0.1, 19)])
def test_warmup_steps(total, ratio, expected):
    assert warmup_steps(total, ratio) == expected


def test_total_steps():
    assert total_optimizer_steps(195, epochs=1.0, max_steps=None, grad_accum=1) == 195
    assert total_optimizer_steps(195, epochs=1.0, max_steps=None, grad_accum=2) == 98  # ceil
    assert total_optimizer_steps(195, epochs=0.5, max_steps=None, grad_accum=1) == 98
    assert total_optimizer_steps(195, epochs=None, max_steps=7, grad_accum=4) == 7
    with pytest.raises(ValueError, match="no batches"):
        total_optimizer_steps(0, epochs=1.0, max_steps=None, grad_accum=1)


# --- setup pieces ---------------------------------------------------------------------------------


def test_param_groups_split_decay_and_head_lr():
    from lora_engine.inject import LoraSettings, inject_lora, mark_only_lora_as_trainable

    model, _ = load_base_model("tiny-bert", "classification", 2)
    inject_lora(model, LoraSettings(rank=4))
    mark_only_lora_as_trainable(model, modules_to_save=["classifier"])
    groups = {g["name"]: g for g in param_groups(model, ["classifier"], lr=1e-3, head_lr=5e-3,
                                                 weight_decay=0.1)}
    assert set(groups) == {"body", "head", "head/no_decay"}  # LoRA has no 1-D tensors
    assert groups["head"]["lr"] == 5e-3 and groups["body"]["lr"] == 1e-3
    assert groups["head/no_decay"]["weight_decay"] == 0.0 and groups["body"]["weight_decay"] == 0.1
    names = {id(p): n for n, p in model.named_parameters()}
    assert {names[id(p)] for p in groups["head/no_decay"]["params"]} == {"classifier.bias"}
    counted = sum(p.numel() for g in groups.values() for p in g["params"])
    assert counted == sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_full_method_groups_keep_layernorm_out_of_decay():
    model, _ = load_base_model("tiny-bert", "classification", 2)
    groups = {g["name"]: g for g in param_groups(model, ["classifier"], lr=1e-4, head_lr=None,
                                                 weight_decay=0.01)}
    names = {id(p): n for n, p in model.named_parameters()}
    no_decay = {names[id(p)] for p in groups["body/no_decay"]["params"]}
    assert "bert.embeddings.LayerNorm.weight" in no_decay
    assert all(n.endswith(("bias", "weight")) for n in no_decay)
    assert not any("LayerNorm" in names[id(p)] for p in groups["body"]["params"])
    assert groups["head"]["lr"] == 1e-4  # no head lr: the body's


# --- whole runs -----------------------------------------------------------------------------------


def test_spec_is_validated_before_any_model_is_loaded(tmp_path):
    loads = []
    cache = BaseModelCache(loader=lambda *a: loads.append(a) or load_base_model(*a))
    with pytest.raises(SpecError) as err:
        train({"task": "sst2", "rank": 0, "lr": -1, "batch_size": 0}, tmp_path / "out", data_dir=DATA,
              cache=cache)
    assert len(err.value.problems) == 3
    assert loads == [] and not (tmp_path / "out").exists()


def test_lora_run_writes_peft_adapter_card_and_stats(tmp_path):
    progress = []
    res = train(SST2, tmp_path / "a", data_dir=DATA, hooks=TrainHooks(on_progress=progress.append))
    files = {p.name for p in res.adapter_dir.iterdir()}
    assert files == {"adapter_config.json", "adapter_model.safetensors", "lorafleet.json", "README.md"}
    meta = json.loads((res.adapter_dir / "lorafleet.json").read_text())
    assert meta["task"] == "sst2" and meta["label_names"] == ["negative", "positive"]
    assert meta["base_model"] == "tiny-bert" and meta["max_length"] == 64 and meta["method"] == "lora"
    assert meta["metrics"] == res.metrics and set(res.metrics["validation"]) == {"accuracy"}
    assert meta["spec"]["lr"] == ARCH_DEFAULTS["bert"].lora_lr  # resolved: the default filled in
    card = (res.adapter_dir / "README.md").read_text()
    assert "| validation |" in card and '"task": "sst2"' in card
    tensors = load_file(str(res.adapter_dir / "adapter_model.safetensors"))
    assert "base_model.model.classifier.weight" in tensors  # the head travels with the adapter
    assert any(k.endswith("query.lora_A.weight") for k in tensors)

    assert [p.step for p in progress] == [1, 2, 3] and all(p.total == 3 for p in progress)
    assert [p.loss for p in progress] == res.losses
    assert progress[-1].tokens == res.stats.tokens > 0
    s = res.stats
    assert 0 < s.trainable_params < s.total_params
    assert s.examples == 3 * 8 and s.device == "cpu" and s.peak_mem_bytes > 100 * 2**20  # torch alone
    assert s.adapter_bytes == sum(p.stat().st_size for p in res.adapter_dir.iterdir())
    assert 0 < s.device_s <= s.wall_s
    assert s.activation_mem_bytes is not None and 0 <= s.activation_mem_bytes <= s.peak_mem_bytes
    assert 0 < 3 * s.step_s <= s.device_s  # the mean of the three steps' device time


def test_gradient_checkpointing_trains_the_same_numbers(tmp_path):
    spec = {**SST2, "dropout": 0.1}
    plain = train(spec, tmp_path / "a", data_dir=DATA)
    recomputed = train({**spec, "gradient_checkpointing": True}, tmp_path / "b", data_dir=DATA)
    assert recomputed.losses == pytest.approx(plain.losses, rel=1e-5)
    meta = json.loads((recomputed.adapter_dir / "lorafleet.json").read_text())
    assert meta["spec"]["gradient_checkpointing"] is True


def test_warmup_and_decay_reach_the_optimizer(tmp_path):
    lrs = []
    spec = {**SST2, "max_steps": 4, "warmup_ratio": 0.5, "lr": 1e-3}
    train(spec, tmp_path / "a", data_dir=DATA, hooks=TrainHooks(on_progress=lambda p: lrs.append(p.lr)))
    assert lrs == pytest.approx([1e-3 / 3, 2e-3 / 3, 1e-3, 5e-4])  # W=2: 1/3, 2/3, then 2/2, 1/2


def test_should_stop_checkpoints_then_raises(tmp_path):
    calls = []

    def stop():
        calls.append(1)
        return len(calls) == 2

    with pytest.raises(TrainingStopped) as err:
        train(SST2, tmp_path / "a", data_dir=DATA,
              hooks=TrainHooks(should_stop=stop, checkpoint_dir=tmp_path / "ck"))
    assert err.value.step == 2
    assert [p.name for p in (tmp_path / "ck").iterdir()] == ["step-00000002"]
    assert not (tmp_path / "a").exists()


def test_a_huge_grad_accum_obeys_stop_between_micro_batches(tmp_path):
    calls = []

    def stop():
        calls.append(1)
        return len(calls) == 3

    with pytest.raises(TrainingStopped) as err:
        train({**SST2, "max_steps": 1, "grad_accum": 1024}, tmp_path / "a", data_dir=DATA,
              hooks=TrainHooks(should_stop=stop, checkpoint_dir=tmp_path / "ck"))
    assert err.value.step == 0 and len(calls) == 3  # after 3 of 1024 micro-batches, not 1024
    assert [p.name for p in (tmp_path / "ck").iterdir()] == ["step-00000000"]


def test_full_method_saves_a_whole_model(tmp_path):
    from transformers import AutoModelForSequenceClassification

    res = train({**SST2, "method": "full", "max_steps": 2}, tmp_path / "f", data_dir=DATA)
    files = {p.name for p in res.adapter_dir.iterdir()}
    assert {"config.json", "model.safetensors", "lorafleet.json", "README.md"} <= files
    assert not any(f.endswith((".bin", ".pt", ".pkl")) for f in files)
    assert res.stats.trainable_params == res.stats.total_params
    reloaded = AutoModelForSequenceClassification.from_pretrained(res.adapter_dir)
    assert reloaded.config.num_labels == 2
    assert json.loads((res.adapter_dir / "lorafleet.json").read_text())["method"] == "full"


@pytest.mark.parametrize("method", ["rslora", "dora"])
def test_other_methods_train(tmp_path, method):
    res = train({**SST2, "method": method, "max_steps": 2}, tmp_path / method, data_dir=DATA)
    cfg = json.loads((res.adapter_dir / "adapter_config.json").read_text())
    assert cfg["use_rslora"] == (method == "rslora") and cfg["use_dora"] == (method == "dora")
    assert all(math.isfinite(x) for x in res.losses)


def test_regression_task_stsb(tmp_path):
    res = train({**SST2, "task": "stsb", "max_steps": 2}, tmp_path / "s", data_dir=DATA)
    assert set(res.metrics["validation"]) == {"pearson", "spearman"}
    assert json.loads((res.adapter_dir / "lorafleet.json").read_text())["num_labels"] == 1


def test_custom_classification_uses_the_data_sets_labels(tmp_path):
    rows = [{"text": f"text number {i}", "label": ["spam", "ham", "eggs"][i % 3]} for i in range(30)]
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    res = train({"task": "custom-classification", "dataset": str(data), "base_model": "tiny-bert",
                 "max_steps": 2, "batch_size": 4}, tmp_path / "c", data_dir=DATA)
    meta = json.loads((res.adapter_dir / "lorafleet.json").read_text())
    assert meta["label_names"] == ["eggs", "ham", "spam"] and meta["num_labels"] == 3
    assert set(res.metrics["validation"]) == {"accuracy", "f1_macro"}


def test_custom_generation_with_grad_accum(tmp_path):
    data = write_jsonl(tmp_path / "g.jsonl", gen_rows(40))  # 36 train rows: 9 full batches of 4
    spec = {"task": "custom-generation", "dataset": str(data), "base_model": "tiny-llama", "max_steps": 2,
            "batch_size": 4, "grad_accum": 2, "max_length": 64}
    res = train(spec, tmp_path / "g", data_dir=DATA, decode=GREEDY)
    assert res.stats.examples == 2 * 2 * 4  # steps × accum × batch
    assert set(res.metrics["validation"]) == {"bleu", "rouge_l"}
    meta = json.loads((res.adapter_dir / "lorafleet.json").read_text())
    assert meta["prompt_template"] == "{prompt}" and meta["kind"] == "generation"


def test_init_from_continues_an_adapter(tmp_path):
    first = train(SST2, tmp_path / "a", data_dir=DATA)
    # A vanishing lr: the continued adapter must still be the first one (its LoRA and head loaded).
    second = train({**SST2, "init_from": str(first.adapter_dir), "lr": 1e-12, "head_lr": 1e-12,
                    "max_steps": 1}, tmp_path / "b", data_dir=DATA)
    a = load_file(str(first.adapter_dir / "adapter_model.safetensors"))
    b = load_file(str(second.adapter_dir / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)
    assert any(a[k].abs().sum() > 0 for k in a if "lora_B" in k)  # trained, not the zero init
    with pytest.raises(LoraConfigError, match="r=8"):
        train({**SST2, "init_from": str(first.adapter_dir), "rank": 4}, tmp_path / "c", data_dir=DATA)


# --- the warm-worker cache --------------------------------------------------------------------------


def test_cached_base_gives_the_cold_result(tmp_path):
    cache = BaseModelCache()
    cold = train(SST2, tmp_path / "cold", data_dir=DATA)
    warm1 = train({**SST2, "seed": 7}, tmp_path / "w1", data_dir=DATA, cache=cache)  # another tenant
    warm2 = train(SST2, tmp_path / "w2", data_dir=DATA, cache=cache)
    assert cache.loads == 1 and cache.hits == 1
    assert warm2.losses == cold.losses
    a = load_file(str(cold.adapter_dir / "adapter_model.safetensors"))
    b = load_file(str(warm2.adapter_dir / "adapter_model.safetensors"))
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert warm1.losses != cold.losses
    model, _ = cache.checkout("tiny-bert", "classification", 2)  # pristine: no LoRA left behind
    assert not any("lora" in n for n, _ in model.named_parameters())
    cache.checkin()


def test_a_mean_pooled_job_leaves_the_cached_base_as_loaded(tmp_path):
    from lora_engine.forward.encoder import pooling_of

    cache = BaseModelCache()
    res = train({**SST2, "pooling": "mean"}, tmp_path / "mean", data_dir=DATA, cache=cache)
    meta = json.loads((res.adapter_dir / "lorafleet.json").read_text())
    assert meta["pooling"] == meta["spec"]["pooling"] == "mean"
    model, _ = cache.checkout("tiny-bert", "classification", 2)
    assert pooling_of(model) == "cls" and cache.hits == 1  # the next job starts from the base as loaded
    cache.checkin()
    cold = train(SST2, tmp_path / "cls", data_dir=DATA)
    warm = train(SST2, tmp_path / "warm", data_dir=DATA, cache=cache)
    assert warm.losses == cold.losses and warm.losses != res.losses


def test_a_cold_setup_tokenises_meanwhile_in_a_thread_what_a_warm_one_tokenises_alone(monkeypatch):
    """Loading the base, the data are read and tokenised in a second thread with a tokenizer of
    their own; on a resident base, in the caller's thread with the base's. Same rows, same ids,
    same held-out rows, same losses."""
    import threading

    from lora_engine import recipe
    from lora_engine.data import token_cache
    from lora_engine.device import pick_device

    calls = []
    real = recipe.training_data

    def watched(spec, examples, tokenizer):
        calls.append((threading.current_thread(), tokenizer))
        return real(spec, examples, tokenizer)

    monkeypatch.setattr(recipe, "training_data", watched)
    monkeypatch.setenv("LORAFLEET_DATA_CACHE", "")  # in memory only, and forgotten below
    token_cache.forget()
    spec = recipe.resolve_spec({**SST2, "eval_every": 2, "eval_holdout": 16}, data_dir=DATA)
    cache, device = BaseModelCache(), pick_device()
    runs = []
    for _ in range(2):  # cold: the cache loads the base; warm: it is resident
        run = recipe.setup(spec, data_dir=DATA, cache=cache, device=device)
        recipe.fit(run, TrainHooks())
        runs.append(run)
        cache.checkin()
        token_cache.forget()  # the warm setup tokenises again, with the resident tokenizer
    (cold_thread, cold_tok), (warm_thread, warm_tok) = calls
    assert cold_thread.name.startswith("training-data") and cold_tok is not runs[0].tokenizer
    assert warm_thread is threading.current_thread() and warm_tok is runs[1].tokenizer
    cold, warm = runs
    assert cache.loads == 1 and cache.hits == 1
    assert warm.encoded.input_ids == cold.encoded.input_ids and warm.encoded.labels == cold.encoded.labels
    assert warm.holdout == cold.holdout and len(cold.holdout) == 16
    assert warm.losses == cold.losses and len(cold.losses) == 3


def test_a_one_ulp_write_into_a_frozen_weight_evicts_the_cached_base(tmp_path):
    """The fingerprint sums each tensor's bit patterns exactly: the smallest write shows."""
    cache = BaseModelCache()
    model, _ = cache.checkout("tiny-llama", "generation")
    weight = model.get_submodule("model.layers.0.mlp.down_proj").weight
    with torch.no_grad():
        weight[3, 5] = torch.nextafter(weight[3, 5], torch.tensor(math.inf))
    assert cache.checkin() is False and cache.evictions == 1
    model, _ = cache.checkout("tiny-llama", "generation")
    assert cache.loads == 2 and cache.checkin() is True  # untouched: kept


def test_cache_evicts_after_full_finetune(tmp_path):
    cache = BaseModelCache()
    train({**SST2, "method": "full", "max_steps": 1}, tmp_path / "f", data_dir=DATA, cache=cache)
    assert cache.key is None and cache.evictions == 1
    train({**SST2, "max_steps": 1}, tmp_path / "l", data_dir=DATA, cache=cache)
    assert cache.loads == 2


@pytest.mark.parametrize(
    ("losses", "factor", "patience", "diverged"),
    [
        ([], 10.0, 2, False),
        ([0.7, 0.6], None, 2, False),
        ([0.7, float("nan")], None, 2, True),  # non-finite: always, even without a factor
        ([0.7, float("inf")], 10.0, 2, True),
        ([0.7, 8.0], 10.0, 1, True),  # 8.0 > 10 x 0.7 for 1 step
        ([0.7, 8.0, 0.6], 10.0, 1, False),  # a spike that came back down
        ([0.7, 8.0, 9.0], 10.0, 2, True),
        ([0.7, 8.0, 6.9], 10.0, 2, False),  # 6.9 < 10 x 0.7
        ([0.7, 8.0], 10.0, 2, False),  # not yet `patience` steps after the first
        ([0.0, 5.0, 5.0], 10.0, 1, False),  # a zero first loss sets no scale
    ],
)
def test_divergence(losses, factor, patience, diverged):
    from lora_engine.recipe import divergence

    assert (divergence(losses, factor, patience) is not None) is diverged


def test_a_diverging_run_stops_before_writing_anything(tmp_path):
    from lora_engine.errors import TrainingDiverged

    steps = []
    with pytest.raises(TrainingDiverged, match=r"diverged at step \d+ \(loss") as info:
        train({**SST2, "max_steps": 30, "lr": 1.0, "head_lr": 1.0}, tmp_path / "out", data_dir=DATA,
              hooks=TrainHooks(on_progress=lambda p: steps.append(p.loss), divergence_factor=1.5,
                               divergence_patience=2))
    assert info.value.step <= 30 and info.value.step == len(steps) + 1
    assert not (tmp_path / "out").exists()


def test_step_one_comes_before_the_split_is_tokenised_and_trains_as_a_pretokenised_run(tmp_path,
                                                                                         monkeypatch):
    """A cold setup hands the split over once the rows trained on are known: each batch tokenises
    its chunk when first drawn, and the rows no batch asked for are tokenised in a "training-data"
    thread once training is over. The losses, rows and ids are those of a run whose split was
    tokenised before it began (the token cache's, filled by that thread)."""
    from lora_engine import recipe
    from lora_engine.data import token_cache
    from lora_engine.data.batching import Encoded
    from lora_engine.data.streaming import PendingEncoded
    from lora_engine.device import pick_device

    monkeypatch.setenv("LORAFLEET_DATA_CACHE", "")  # in memory only, and forgotten below
    token_cache.forget()
    data = write_jsonl(tmp_path / "g.jsonl", gen_rows(600))
    spec = recipe.resolve_spec({"task": "custom-generation", "dataset": str(data), "base_model": "tiny-llama",
                                "max_steps": 4, "batch_size": 2, "max_length": 24}, data_dir=DATA)
    device = pick_device()
    streamed = recipe.setup(spec, data_dir=DATA, device=device)
    done_at = []
    recipe.fit(streamed, TrainHooks(on_progress=lambda p: done_at.append(streamed.encoded.rows_done())))
    assert type(streamed.encoded) is PendingEncoded and streamed.encoded.owns_tokenizer()
    rows = len(streamed.encoded)
    # A chunk is 100 rows (batch 2 x 50): step 1 tokenised one, four steps at most four, of ~540.
    assert 0 < done_at[0] <= 100 and done_at[-1] <= 400 < rows
    # The next job on the same data, meanwhile, takes the split up where it is.
    assert recipe.setup(spec, data_dir=DATA, device=device).encoded is streamed.encoded
    thread = recipe.finish_tokenising(streamed)
    assert thread.name == "training-data"
    thread.join(120)
    assert streamed.encoded.rows_done() == rows
    pretokenised = recipe.setup(spec, data_dir=DATA, device=device)  # the split from the token cache
    token_cache.forget()
    whole = pretokenised.encoded
    assert type(whole) is Encoded and whole is streamed.encoded.complete()
    assert recipe.finish_tokenising(pretokenised) is None
    recipe.fit(pretokenised, TrainHooks())
    assert pretokenised.losses == streamed.losses and len(streamed.losses) == 4
    assert streamed.encoded.input_ids == whole.input_ids and streamed.encoded.labels == whole.labels
