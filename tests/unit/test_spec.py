"""The training spec: every problem of a submission in one error, task defaults filled in."""

import json
import os
import subprocess
import sys

import pytest

from lora_engine.catalog import ARCH_DEFAULTS, GLUE_TASKS, TASKS
from lora_engine.errors import SpecError
from lora_engine.spec import TrainingSpec, validate_spec


def test_minimal_spec_resolves_task_defaults():
    spec = validate_spec({"task": "sst2"}).resolved()
    assert spec.base_model == "minilm-l6"
    assert spec.alpha == 16.0  # 2 * rank
    assert spec.lr == ARCH_DEFAULTS["bert"].lora_lr and spec.head_lr == ARCH_DEFAULTS["bert"].head_lr
    # The budget waits for the data's size: "auto" until the row count is known.
    assert spec.epochs == "auto" and spec.batch_size == "auto" and spec.max_steps is None
    assert spec.needs_train_rows
    spec = spec.resolved(train_rows=6227)
    # 5727 rows train (500 held out): 179 steps an epoch, 2 epochs = 358 steps, evaluated every
    # ceil(358/4) = 90 steps and after the last.
    assert (spec.epochs, spec.batch_size, spec.eval_every, spec.eval_holdout, spec.patience) == (
        2.0, 32, 90, 500, 3)
    assert not spec.needs_train_rows and spec.resolved(train_rows=10) == spec  # idempotent


def test_full_finetuning_uses_full_lr_and_no_head_lr():
    spec = validate_spec({"task": "mrpc", "method": "full"}).resolved()
    assert spec.lr == ARCH_DEFAULTS["bert"].full_lr
    assert spec.head_lr is None


def test_method_aware_defaults():
    e2e = validate_spec({"task": "e2e"}).resolved()
    assert e2e.lr == TASKS["e2e"].lora_lr and e2e.targets == ["all-linear"] and e2e.head_lr is None
    # BERT (MiniLM-L6) LoRA goes on every linear layer; RoBERTa keeps query+value (the injector's).
    assert validate_spec({"task": "rte"}).resolved().targets == ["all-linear"]
    assert validate_spec({"task": "rte", "base_model": "tiny-roberta"}).resolved().targets is None
    rs = validate_spec({"task": "sst2", "method": "rslora", "rank": 16}).resolved()
    assert rs.lr == pytest.approx(ARCH_DEFAULTS["bert"].lora_lr / 4)  # alpha/sqrt(r): sqrt(16)x LoRA's
    # At LoRA's lr, LoRA+, PiSSA and OLoRA stayed at CoLA's majority class (bench/RESULTS.md): their
    # defaults are a factor of LoRA's (methods.LR_FACTORS), of a task's own LoRA lr too (E2E's).
    expected = {"lora": 1e-3, "dora": 1e-3, "loraplus": 2.5e-4, "pissa": 4e-4, "olora": 4e-4}
    for task in ("cola", "e2e"):
        resolved = {m: validate_spec({"task": task, "method": m}).resolved().lr for m in expected}
        assert resolved == pytest.approx(expected), task
    assert (ARCH_DEFAULTS["bert"].lora_lr, TASKS["e2e"].lora_lr) == (1e-3, 1e-3)  # what the pins above read
    assert validate_spec({"task": "sst2", "method": "pissa", "lr": 1e-3}).resolved().lr == 1e-3  # given: kept
    given = validate_spec({"task": "sst2", "lr": 1e-4, "batch_size": 8, "epochs": 2}).resolved(100)
    assert (given.lr, given.batch_size, given.epochs) == (1e-4, 8, 2)
    assert given.eval_every == 0 and given.patience == 0  # an explicit budget is followed exactly


def test_max_steps_budget_leaves_epochs_unset():
    spec = validate_spec({"task": "e2e", "max_steps": 300}).resolved()
    assert spec.epochs is None and spec.max_steps == 300
    assert spec.base_model == "smollm2-135m"
    spec = spec.resolved(train_rows=42061)
    assert (spec.epochs, spec.max_steps, spec.batch_size, spec.eval_every) == (None, 300, 8, 0)


def test_every_problem_is_reported_at_once():
    with pytest.raises(SpecError) as info:
        validate_spec(
            {"task": "sst3", "method": "qlora", "rank": 0, "lr": -1.0, "dropout": 1.5,
             "epochs": 1, "max_steps": 10, "colour": "blue"}
        )
    problems = "\n".join(info.value.problems)
    for needle in ("colour: unknown field", "unknown task 'sst3'", "unknown method 'qlora'",
                   "rank: must be between 1", "lr: must be > 0", "dropout: must be in [0, 1)",
                   "give one budget"):
        assert needle in problems
    assert len(info.value.problems) == 7
    assert isinstance(info.value, ValueError)


def test_custom_task_needs_an_existing_dataset(tmp_path):
    with pytest.raises(SpecError, match="needs a JSONL data set"):
        validate_spec({"task": "custom-classification"})
    with pytest.raises(SpecError, match="no such file"):
        validate_spec({"task": "custom-classification", "dataset": str(tmp_path / "missing.jsonl")})
    data = tmp_path / "d.jsonl"
    data.write_text('{"text": "a", "label": 0}\n')
    assert validate_spec({"task": "custom-classification", "dataset": str(data)}).dataset == str(data)


@pytest.mark.parametrize("task", GLUE_TASKS)
def test_glue_task_rejects_a_dataset(task, tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text("{}\n")
    with pytest.raises(SpecError, match="uses its own data"):
        validate_spec({"task": task, "dataset": str(data)})


def test_generation_needs_a_causal_model_and_base_model_must_resolve():
    with pytest.raises(SpecError, match="needs a causal LM"):
        validate_spec({"task": "e2e", "base_model": "minilm-l6"})
    with pytest.raises(SpecError, match="neither a known alias"):
        validate_spec({"task": "sst2", "base_model": "no such/model/x"})
    with pytest.raises(SpecError, match=r"no such folder '\.\./\.\./etc passwd'; use an alias"):
        validate_spec({"task": "sst2", "base_model": "../../etc passwd"})


def test_base_model_resolves_at_submit_offline_only_from_the_hub_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(SpecError) as info:
        validate_spec({"task": "sst2", "base_model": "no-such-model-xyz"})
    assert "hub is offline" in str(info.value) and "minilm-l6, smollm2-135m, tiny-gpt2" in str(info.value)
    snapshot = tmp_path / "hub" / "models--FacebookAI--roberta-base" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text('{"model_type": "roberta"}')
    assert validate_spec({"task": "sst2", "base_model": "FacebookAI/roberta-base"}).base_model
    with pytest.raises(SpecError, match="needs a causal LM"):  # the cached config says encoder
        validate_spec({"task": "e2e", "base_model": "FacebookAI/roberta-base"})
    folder = tmp_path / "model"
    folder.mkdir()
    with pytest.raises(SpecError, match=r"holds no config\.json"):
        validate_spec({"task": "sst2", "base_model": str(folder)})
    (folder / "config.json").write_text('{"model_type": "gpt2"}')
    assert validate_spec({"task": "e2e", "base_model": str(folder)}).base_model == str(folder)


def test_base_model_online_is_checked_on_the_hub_unless_cached(tmp_path):
    """Online, a hub id outside the local cache is looked up on the hub (HF_ENDPOINT): here a
    port nothing listens on, so the submission is refused saying the hub could not be reached;
    a cached one needs no request. In a fresh process: huggingface_hub reads its offline flag at
    import, and this test process runs offline."""
    snapshot = tmp_path / "hub" / "models--FacebookAI--roberta-base" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text('{"model_type": "roberta"}')
    probe = ("import json; from lora_engine.model_ref import base_model_problem as p; "
             "print(json.dumps([p('org/not-cached'), p('FacebookAI/roberta-base')]))")
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env.update(HF_HUB_CACHE=str(tmp_path / "hub"), HF_ENDPOINT="http://127.0.0.1:1")
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
    uncached, cached = json.loads(out.stdout)
    assert "could not check 'org/not-cached' on the Hugging Face hub" in uncached
    assert "HF_HUB_OFFLINE=1" in uncached and "minilm-l6, smollm2-135m" in uncached
    assert cached is None


def test_full_method_rejects_targets_and_init_from_must_be_an_adapter(tmp_path):
    with pytest.raises(SpecError) as info:
        validate_spec({"task": "rte", "method": "full", "targets": ["query"], "init_from": str(tmp_path)})
    assert any("not used by method 'full'" in p for p in info.value.problems)
    assert any("not an adapter folder" in p for p in info.value.problems)


def test_spec_round_trips_through_json():
    spec = validate_spec({"task": "qnli", "rank": 4, "targets": ["query", "key", "value"]})
    again = TrainingSpec.model_validate_json(spec.model_dump_json())
    assert again == spec


@pytest.mark.parametrize(
    ("field", "value", "needle"),
    [
        ("lr", float("inf"), "lr: must be a finite number > 0 and <= 1"),
        ("lr", "inf", "lr: must be a finite number"),
        ("alpha", float("nan"), "alpha: must be a finite number > 0 and <= 65536"),
        ("epochs", float("nan"), "epochs: must be a finite number > 0 and <= 1000"),
        ("dropout", float("nan"), "dropout: must be a finite number in [0, 1)"),
        ("max_steps", 3e9, "max_steps: must be between 1 and 10000000"),
        ("grad_accum", 1_000_000_000, "grad_accum: must be between 1 and 1024"),
        ("batch_size", 0, "batch_size: must be between 1 and 4096"),
        ("max_length", 10**6, "max_length: must be between 1 and 32768"),
        ("seed", -1, "seed: must be between 0 and 2147483647"),
        ("weight_decay", -0.1, "weight_decay: must be between 0 and 10"),
        ("warmup_ratio", 1.0, "warmup_ratio: must be in [0, 1)"),
        ("eval_size", 0, "eval_size: must be between 1 and 10000000"),
    ],
)
def test_every_number_is_finite_and_bounded_with_the_bounds_in_the_message(field, value, needle):
    with pytest.raises(SpecError) as info:
        validate_spec({"task": "sst2", field: value})
    assert any(needle in p for p in info.value.problems), info.value.problems
    assert len(info.value.problems) == 1


def test_the_bounds_themselves_are_accepted():
    spec = validate_spec({"task": "sst2", "lr": 1.0, "max_steps": 10_000_000, "grad_accum": 1024,
                          "batch_size": 4096, "seed": 0, "rank": 1024, "dropout": 0.0})
    assert spec.max_steps == 10_000_000


def _sentence_transformers_folder(root, *, mean: bool, model_type: str = "bert", **config):
    """A model folder as sentence-transformers saves one: config.json, modules.json, 1_Pooling/."""
    root.mkdir()
    (root / "config.json").write_text(json.dumps({"model_type": model_type, **config}))
    (root / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]))
    (root / "1_Pooling").mkdir()
    (root / "1_Pooling" / "config.json").write_text(json.dumps(
        {"pooling_mode_cls_token": not mean, "pooling_mode_mean_tokens": mean}))
    return root


def test_pooling_auto_is_the_base_models_own(tmp_path):
    from lora_engine.model_ref import base_pooling

    # all-MiniLM-L6-v2 was trained with mean pooling (its 1_Pooling/config.json says so).
    assert validate_spec({"task": "mrpc"}).resolved().pooling == "mean"
    assert validate_spec({"task": "stsb", "method": "full"}).resolved().pooling == "mean"
    assert validate_spec({"task": "mrpc", "base_model": "tiny-bert"}).resolved().pooling == "cls"
    assert validate_spec({"task": "mrpc", "pooling": "cls"}).resolved().pooling == "cls"  # given: kept
    assert validate_spec({"task": "mrpc", "base_model": "tiny-roberta", "pooling": "mean"}
                         ).resolved().pooling == "mean"
    # An untuned base is scored as it is (untuned.py reads its pooling): nothing to choose.
    assert validate_spec({"task": "sst2", "method": "none", "rank": 0}).resolved().pooling == "auto"
    assert validate_spec({"task": "e2e"}).resolved().pooling == "auto"  # a generator does not pool
    assert TrainingSpec(task="mrpc").pooling == "auto"
    # Folders: a sentence-transformers model says mean or cls; a lorafleet full fine-tune's
    # config.json says what it was trained with and wins; a plain HF folder is cls.
    assert base_pooling(str(_sentence_transformers_folder(tmp_path / "st-mean", mean=True))) == "mean"
    assert base_pooling(str(_sentence_transformers_folder(tmp_path / "st-cls", mean=False))) == "cls"
    full = _sentence_transformers_folder(tmp_path / "full", mean=True, classifier_pooling="cls")
    assert base_pooling(str(full)) == "cls"
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "config.json").write_text(json.dumps({"model_type": "roberta", "classifier_pooling": "mean"}))
    assert base_pooling(str(plain)) == "mean"
    (plain / "config.json").write_text(json.dumps({"model_type": "roberta"}))
    assert base_pooling(str(plain)) == "cls"
    # A mean-pooled model of an architecture whose head we cannot feed a mean: HF's cls head.
    assert base_pooling(str(_sentence_transformers_folder(tmp_path / "mpnet", mean=True, model_type="mpnet"))
                        ) == "cls"
    assert base_pooling("org/not-in-the-cache") == "cls"


def test_pooling_in_the_hub_cache(tmp_path, monkeypatch):
    from lora_engine.model_ref import base_pooling

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    (tmp_path / "models--org--st-model" / "snapshots").mkdir(parents=True)
    _sentence_transformers_folder(tmp_path / "models--org--st-model" / "snapshots" / "abc123", mean=True)
    assert base_pooling("org/st-model") == "mean"
    assert validate_spec({"task": "sst2", "base_model": "org/st-model"}).resolved().pooling == "mean"


@pytest.mark.parametrize(("raw", "needle"), [
    ({"task": "e2e", "pooling": "mean"}, "pooling: only a classification or regression head pools"),
    ({"task": "sst2", "method": "none", "rank": 0, "pooling": "cls"}, "pooling: not used by method 'none'"),
    ({"task": "sst2", "pooling": "max"}, "pooling: Input should be 'auto', 'cls' or 'mean'"),
])
def test_pooling_is_refused_where_nothing_pools(raw, needle):
    with pytest.raises(SpecError) as info:
        validate_spec(raw)
    assert any(needle in p for p in info.value.problems), info.value.problems
