"""Adapters that travel: an exported adapter names its base model's hub id, so PEFT's
AutoPeftModel loads it from the hub (here: a local hub cache laid out as the hub writes it);
its model card is Hub metadata with the eval results; `adapter import` registers a PEFT adapter
made elsewhere only after checking it, and refuses bad ones clearly, writing nothing."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from huggingface_hub import ModelCard

from lora_engine.adapters.folder import AdapterMeta, read_adapter_meta
from lora_engine.adapters.io import save_adapter
from lora_engine.adapters.modelcard import render_model_card
from lora_engine.catalog import TASKS
from lora_engine.inject import LoraSettings, head_module_names, inject_lora
from lora_engine.models import resolve_model
from orchestrator.cli.main import cli
from orchestrator.config import get_settings
from orchestrator.registry.db import forget_engine

ROOT = Path(__file__).resolve().parents[2]
MINILM_HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"

PEFT_CHECK = """
import json, sys, torch
from peft import AutoPeftModelForSequenceClassification
from transformers import AutoTokenizer
import lora_engine as le
folder = sys.argv[1]
assert json.load(open(folder + "/adapter_config.json"))["base_model_name_or_path"] == sys.argv[3]
theirs = AutoPeftModelForSequenceClassification.from_pretrained(folder, num_labels=2).eval()
ours = le.load_for_inference(folder)
batch = AutoTokenizer.from_pretrained(sys.argv[2])(["a fine film", "dull"], return_tensors="pt", padding=True)
with torch.no_grad():
    gap = (theirs(**batch).logits - ours.model(**batch).logits).abs().max().item()
print(json.dumps({"gap": gap}))
"""


def _minilm_adapter(tiny_model, perturb_lora, folder: Path, pooling: str = "cls") -> None:
    model, _ = tiny_model("minilm-l6", "classification", 2)
    settings = LoraSettings(rank=4, alpha=8)
    inject_lora(model, settings)
    perturb_lora(model)
    meta = AdapterMeta.for_task(TASKS["sst2"], base_model="minilm-l6", method="lora", pooling=pooling)
    save_adapter(model, folder, base_model_name="minilm-l6", settings=settings, task_type="classification",
                 modules_to_save=head_module_names(model), meta=meta)


def _minilm_hub_cache(root: Path) -> tuple[Path, dict]:
    """A hub cache holding MiniLM-L6 as `hf download` leaves it (AutoPeftModel resolves the hub id
    offline from it): its snapshot folder, and the environment that points at it."""
    snapshot = root / f"models--{MINILM_HUB_ID.replace('/', '--')}" / "snapshots" / ("0" * 40)
    shutil.copytree(resolve_model("minilm-l6").path, snapshot)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0" * 40)
    return snapshot, {**os.environ, "HF_HUB_CACHE": str(root), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}


def test_an_adapter_names_the_hub_id_and_loads_with_auto_peft(tiny_model, perturb_lora, tmp_path):
    folder = tmp_path / "adapter"
    _minilm_adapter(tiny_model, perturb_lora, folder)
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == MINILM_HUB_ID
    assert json.loads((folder / "lorafleet.json").read_text())["base_model"] == "minilm-l6"  # the alias stays
    snapshot, env = _minilm_hub_cache(tmp_path / "hub")
    argv = [sys.executable, "-c", PEFT_CHECK, str(folder), str(snapshot), MINILM_HUB_ID]
    out = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(out.stdout.strip().splitlines()[-1])["gap"] < 1e-4


MEAN_CARD_CHECK = """
import json, sys, torch
import lora_engine as le
folder, snippet = sys.argv[1], sys.argv[2]
texts = ["a fine film", "dull, and far too long for what it says"]
scope = {"texts": texts}
with torch.no_grad():
    exec(snippet.replace("<this folder>", folder), scope)
theirs = scope["logits"].softmax(-1)
ours = torch.tensor([p.probabilities for p in le.load_for_inference(folder).classify(texts)])
print(json.dumps({"gap": (theirs - ours).abs().max().item()}))
"""


def test_a_mean_pooled_adapters_card_feeds_the_head_as_lorafleet_does(tiny_model, perturb_lora, tmp_path):
    # With PEFT and transformers only (the base from the hub cache), the card's recipe for a
    # mean-pooled head gives lorafleet's predictions; HF's own [CLS] forward would not.
    folder = tmp_path / "adapter"
    _minilm_adapter(tiny_model, perturb_lora, folder, pooling="mean")
    card = render_model_card(read_adapter_meta(folder))
    assert "Pooling: **mean**" in card and "BertForSequenceClassification" in card
    snippet = next(b for b in card.split("```python")[1:] if "mean = " in b).split("```")[0]
    _, env = _minilm_hub_cache(tmp_path / "hub")
    argv = [sys.executable, "-c", MEAN_CARD_CHECK, str(folder), snippet]
    out = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(out.stdout.strip().splitlines()[-1])["gap"] < 1e-5


def test_the_model_card_is_hub_metadata_with_eval_results():
    meta = AdapterMeta(base_model="minilm-l6", task="mrpc", method="lora", kind="classification",
                       spec={"task": "mrpc"}, metrics={"validation": {"accuracy": 0.8, "f1": 0.86}})
    card = ModelCard(render_model_card(meta))
    assert card.data.base_model == MINILM_HUB_ID and card.data.library_name == "peft"
    results = {(r.metric_type, r.dataset_config, r.dataset_split): r.metric_value
               for r in card.data.eval_results}
    # lorafleet's GLUE "validation" rows are held out of GLUE's training split, and said so.
    assert results == {("accuracy", "mrpc", "train"): 0.8, ("f1", "mrpc", "train"): 0.86}
    assert "rows held out of GLUE's training split" in card.text
    assert "AutoPeftModelForSequenceClassification" in card.text
    assert "| validation | 0.8000 | 0.8600 |" in card.text


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("LORAFLEET_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("LORAFLEET_DATA_ROOTS", str(tmp_path))  # the adapters made elsewhere lie here
    for var in ("LORAFLEET_DATABASE_URL", "LORAFLEET_BROKER_URL", "LORAFLEET_ARTIFACTS"):
        monkeypatch.delenv(var, raising=False)
    get_settings.cache_clear()
    yield tmp_path / "home"
    forget_engine(get_settings().database_url)
    get_settings.cache_clear()


def _peft_adapter(tiny_model, folder: Path, alias: str = "tiny-bert") -> None:
    """An adapter made with the peft library, as a user elsewhere would."""
    from peft import LoraConfig, TaskType, get_peft_model

    model, _ = tiny_model(alias, "classification", 2)
    peft_model = get_peft_model(model, LoraConfig(task_type=TaskType.SEQ_CLS, r=4, lora_alpha=8,
                                                  target_modules=["query", "value"]))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.fill_(0.05)
    peft_model.save_pretrained(folder, safe_serialization=True)
    config = json.loads((folder / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = alias
    (folder / "adapter_config.json").write_text(json.dumps(config))


def _edited(src: Path, dest: Path, **changes) -> Path:
    shutil.copytree(src, dest)
    config = json.loads((dest / "adapter_config.json").read_text())
    config.update(changes)
    (dest / "adapter_config.json").write_text(json.dumps(config))
    return dest


def test_adapter_import_checks_then_registers(home, tiny_model, tmp_path):
    runner = CliRunner()
    assert runner.invoke(cli, ["tenant", "create", "acme"]).exit_code == 0
    good = tmp_path / "peft-adapter"
    _peft_adapter(tiny_model, good)
    (good / "notes.pkl").write_bytes(b"not copied")

    pickled = _edited(good, tmp_path / "pickled")
    (pickled / "adapter_model.safetensors").rename(pickled / "adapter_model.bin")
    other_arch = tmp_path / "roberta-adapter"
    _peft_adapter(tiny_model, other_arch, alias="tiny-roberta")
    mislabelled = _edited(other_arch, tmp_path / "mislabelled", base_model_name_or_path="tiny-bert")
    refusals = [
        (["--task", "sst2", str(_edited(good, tmp_path / "ia3", peft_type="IA3"))],
         "peft_type 'IA3' is not supported; allowed: LORA"),
        (["--task", "sst2", str(pickled)],
         "adapter_model.bin (pickle) is refused: save the adapter as safetensors"),
        (["--task", "sst2", "--base-model", "tiny-roberta", str(good)],
         "--base-model 'tiny-roberta' does not match the adapter's base model 'tiny-bert'"),
        (["--task", "sst2", str(mislabelled)], "does not fit this model (it was made for 'tiny-bert')"),
        (["--task", "e2e", str(good)], "task_type 'SEQ_CLS' does not fit task 'e2e'"),
        (["--task", "mnli", str(good)], "head has 2 outputs; task 'mnli' has 3 labels"),
    ]
    for args, message in refusals:
        result = runner.invoke(cli, ["adapter", "import", "--tenant", "acme", *args])
        assert result.exit_code == 1 and message in result.stderr, (args, result.output)
        assert "Traceback" not in result.output
    assert json.loads(runner.invoke(cli, ["adapter", "list", "--json"]).output) == []
    assert not (home / "artifacts").exists() or not any((home / "artifacts").rglob("adapter_config.json"))

    args = ["adapter", "import", "--tenant", "acme", "--task", "sst2", str(good), "--json"]
    imported = runner.invoke(cli, args)
    assert imported.exit_code == 0, imported.output
    row = json.loads(imported.output)
    assert (row["job_id"], row["task"], row["method"], row["rank"], row["base_model"]) == (
        None, "sst2", "lora", 4, "tiny-bert")
    copied = {p.name for p in Path(row["path"]).iterdir()}
    # The known files (PEFT's own README card included), never the stray pickle.
    assert copied == {"adapter_config.json", "adapter_model.safetensors", "README.md", "lorafleet.json"}
    predicted = runner.invoke(cli, ["adapter", "predict", row["id"][:8], "a fine film", "--json"])
    assert predicted.exit_code == 0, predicted.output
    assert json.loads(predicted.output)[0]["label"] in ("negative", "positive")

    # A plain PEFT adapter does not say its task; one exported from a lorafleet does (lorafleet.json).
    untold = runner.invoke(cli, ["adapter", "import", "--tenant", "acme", str(good)])
    assert untold.exit_code == 1 and "give --task, one of: cola" in untold.stderr, untold.output
    assert runner.invoke(cli, ["tenant", "create", "globex"]).exit_code == 0
    stored = runner.invoke(cli, ["adapter", "import", "--tenant", "globex", row["path"]])
    assert stored.exit_code == 1 and "points into the artifacts root" in stored.stderr, stored.output
    exported = tmp_path / "exported"
    assert runner.invoke(cli, ["adapter", "export", row["id"], str(exported)]).exit_code == 0
    told = runner.invoke(cli, ["adapter", "import", "--tenant", "globex", str(exported), "--json"])
    assert told.exit_code == 0, told.output
    assert json.loads(told.output)["task"] == "sst2"


def test_an_import_keeps_the_pooling_the_adapter_was_trained_with(tiny_model, perturb_lora, tmp_path):
    from dataclasses import replace

    from lora_engine.adapters.importing import check_foreign_adapter

    model, _ = tiny_model("tiny-bert", "classification", 2)
    settings = LoraSettings(rank=4, alpha=8)
    inject_lora(model, settings)
    perturb_lora(model)
    meta = replace(AdapterMeta.for_task(TASKS["sst2"], base_model="tiny-bert", method="lora"), pooling="mean")
    save_adapter(model, tmp_path / "ours", base_model_name="tiny-bert", settings=settings,
                 task_type="classification", modules_to_save=head_module_names(model), meta=meta)
    assert check_foreign_adapter(tmp_path / "ours").meta().pooling == "mean"
    _peft_adapter(tiny_model, tmp_path / "peft")  # PEFT's classifiers read [CLS]
    assert check_foreign_adapter(tmp_path / "peft", task="sst2").meta().pooling == "cls"
