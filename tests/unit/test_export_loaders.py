"""Exports that load right everywhere: for [CLS]- and mean-pooled classifiers (LoRA and DoRA, BERT
and RoBERTa) and a generation adapter, every documented way of loading what `adapter export`
wrote gives lorafleet's logits to 1e-5 (fp32, the same inputs):

- PEFT's stock `AutoPeftModelForSequenceClassification`, where it applies ([CLS]); for a
  mean-pooled head it does not (it feeds [CLS]), and the export's stderr and the card's first
  lines say so, with the loaders that do;
- lorafleet's own loader (`lora_engine.load_for_inference`) and the card's PEFT recipe for a
  mean-pooled head;
- the merged export (`--merged`) with `AutoModel...from_pretrained(folder, trust_remote_code=True)`,
  in a process that never imports lorafleet; without trust_remote_code a mean-pooled folder is
  refused rather than fed [CLS].

The loaders run in a fresh process with only a local hub cache (HF_HUB_OFFLINE=1).
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from lora_engine.adapters import modeling_mean_pooled
from lora_engine.adapters.folder import AdapterMeta
from lora_engine.adapters.io import save_adapter, save_full_model
from lora_engine.adapters.merged_export import write_merged_folder
from lora_engine.adapters.modelcard import render_model_card
from lora_engine.catalog import TASKS
from lora_engine.forward import classification_logits
from lora_engine.inject import LoraSettings, head_module_names, inject_lora
from lora_engine.models import resolve_model
from lora_engine.predict import load_for_inference
from orchestrator.cli.main import cli
from orchestrator.config import get_settings
from orchestrator.registry.db import forget_engine

ROOT = Path(__file__).resolve().parents[2]
MINILM_HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"
TEXTS = ["a fine film", "dull, and far too long for what it says", "not bad at all"]

# (name, base alias, kind, pooling, method)
ADAPTERS = [
    ("cls", "minilm-l6", "classification", "cls", "lora"),
    ("mean-dora", "minilm-l6", "classification", "mean", "dora"),
    ("roberta-mean", "tiny-roberta", "classification", "mean", "lora"),
    ("gen-dora", "tiny-llama", "generation", "cls", "dora"),
]
FULL = ("full", "tiny-bert", "classification", "mean", "full")

LOADERS = """
import json, sys, torch
cases = json.loads(sys.argv[1])
out = {}
LORAFLEET = ("lora_engine", "orchestrator", "worker")

def batch_of(case):
    return {k: torch.tensor(v) for k, v in case["batch"].items()}

# The merged folders first, before anything could import lorafleet.
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer
for case in cases:
    auto = AutoModelForCausalLM if case["kind"] == "generation" else AutoModelForSequenceClassification
    got = out.setdefault(case["name"], {})
    model = auto.from_pretrained(case["merged"], trust_remote_code=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(case["merged"], trust_remote_code=True)
    same = tokenizer(case["texts"], padding=True, return_tensors="pt")["input_ids"].tolist()
    got["merged_tokenizer_agrees"] = same == case["batch"]["input_ids"]
    with torch.no_grad():
        got["merged"] = model(**batch_of(case)).logits.tolist()
    got["merged_class"] = type(model).__name__
    try:
        plain = auto.from_pretrained(case["merged"], trust_remote_code=False).eval()
        with torch.no_grad():
            got["merged_untrusted"] = plain(**batch_of(case)).logits.tolist()
    except ValueError as exc:
        got["merged_untrusted"] = "refused: " + str(exc)[:200]
assert not [m for m in sys.modules if m.split(".")[0] in LORAFLEET], "the merged folders imported lorafleet"

from peft import AutoPeftModelForSequenceClassification
import lora_engine as le
from lora_engine.forward import classification_logits
for case in cases:
    got = out[case["name"]]
    if case["kind"] == "generation":
        continue
    with torch.no_grad():
        got["lorafleet"] = classification_logits(le.load_for_inference(case["adapter"]).model,
                                                 batch_of(case)).tolist()
    if not case["stock"]:  # a tiny test model (no hub id for the stock loader), or a full fine-tune
        continue
    peft = AutoPeftModelForSequenceClassification.from_pretrained(case["adapter"], num_labels=2).eval()
    with torch.no_grad():
        got["peft"] = peft(**batch_of(case)).logits.tolist()
        if case.get("snippet"):
            scope = {"texts": case["texts"]}
            exec(case["snippet"].replace("<this folder>", case["adapter"]), scope)
            got["card"] = scope["logits"].tolist()
print(json.dumps(out))
"""


def _adapter(folder: Path, alias: str, kind: str, pooling: str, method: str) -> None:
    """A trained-looking adapter: every LoRA tensor moved (B ≠ 0), DoRA's magnitudes too, and the
    head scaled so the logits are O(1) (pooling [CLS] instead of the mean then shows)."""
    from lora_engine.models import load_base_model

    model, _ = load_base_model(alias, kind, 2 if kind == "classification" else None)
    settings = LoraSettings(rank=4, alpha=8, method=method)
    inject_lora(model, settings)
    gen = torch.Generator().manual_seed(len(str(folder)))
    heads = head_module_names(model) if kind != "generation" else []
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.add_(0.2 * torch.randn(p.shape, generator=gen))
            elif name.startswith("classifier") and p.dim() == 2:
                p.mul_(40.0)
    task = TASKS["sst2" if kind == "classification" else "e2e"]
    meta = AdapterMeta.for_task(task, base_model=alias, method=method, pooling=pooling)
    save_adapter(model, folder, base_model_name=alias, settings=settings, task_type=kind,
                 modules_to_save=heads, meta=meta, card_stats={})


def _full_model(folder: Path) -> None:
    """A mean-pooled `full` fine-tune's folder (its head scaled so pooling shows)."""
    from lora_engine.forward.encoder import set_pooling
    from lora_engine.models import load_base_model

    model, tokenizer = load_base_model("tiny-bert", "classification", 2)
    set_pooling(model, "mean")
    with torch.no_grad():
        model.classifier.weight.mul_(40.0)
    meta = AdapterMeta.for_task(TASKS["sst2"], base_model="tiny-bert", method="full", pooling="mean")
    save_full_model(model, tokenizer, folder, meta)


def _lorafleet_logits(folder: Path, kind: str) -> tuple[dict[str, list], torch.Tensor]:
    """The batch of TEXTS as lorafleet tokenises it, and lorafleet's logits for it."""
    predictor = load_for_inference(folder)
    batch = dict(predictor.tokenizer(TEXTS, padding=True, return_tensors="pt"))
    with torch.no_grad():
        if kind == "generation":
            logits = predictor.model(**batch).logits
        else:
            logits = classification_logits(predictor.model, batch)
    return {k: v.tolist() for k, v in batch.items()}, logits


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("LORAFLEET_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("LORAFLEET_DATA_ROOTS", str(tmp_path / "made"))
    for var in ("LORAFLEET_DATABASE_URL", "LORAFLEET_BROKER_URL", "LORAFLEET_ARTIFACTS"):
        monkeypatch.delenv(var, raising=False)
    get_settings.cache_clear()
    yield tmp_path / "home"
    forget_engine(get_settings().database_url)
    get_settings.cache_clear()


def _hub_cache(root: Path) -> None:
    """MiniLM-L6 as `hf download` leaves it: the stock PEFT loader resolves the hub id from it."""
    snapshot = root / f"models--{MINILM_HUB_ID.replace('/', '--')}" / "snapshots" / ("0" * 40)
    shutil.copytree(resolve_model("minilm-l6").path, snapshot)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0" * 40)


def test_every_documented_loader_gives_lorafleets_logits(home, tmp_path):
    runner = CliRunner()
    assert runner.invoke(cli, ["tenant", "create", "acme"]).exit_code == 0
    cases, expected = [], {}
    for name, alias, kind, pooling, method in ADAPTERS:
        made = tmp_path / "made" / name
        _adapter(made, alias, kind, pooling, method)
        imported = runner.invoke(cli, ["adapter", "import", "--tenant", "acme", str(made), "--json"])
        assert imported.exit_code == 0, imported.output
        adapter_id = json.loads(imported.output)["id"]
        out = tmp_path / "out"
        exported = runner.invoke(cli, ["adapter", "export", adapter_id, str(out / name), "--json"])
        merged = runner.invoke(cli, ["adapter", "export", adapter_id, str(out / f"{name}-merged"), "--merged",
                                     "--json"])
        assert exported.exit_code == 0 and merged.exit_code == 0, exported.output + merged.output
        plain_view, merged_view = json.loads(exported.stdout), json.loads(merged.stdout)
        assert merged_view["merged"] and not plain_view["merged"]
        files = {p.name for p in Path(merged_view["path"]).iterdir()}
        assert "model.safetensors" in files and not [f for f in files if f.endswith((".bin", ".pt", ".pkl"))]
        assert ("modeling_mean_pooled.py" in files) == (pooling == "mean" and kind != "generation")
        # stderr warns exactly when the stock loader would not reproduce the adapter.
        if pooling == "mean":
            assert "AutoPeftModelForSequenceClassification` does not reproduce" in exported.stderr
            assert "trust_remote_code=True" in exported.stderr and "load_for_inference" in exported.stderr
            assert "trust_remote_code=True" in merged.stderr
        else:
            assert exported.stderr == "" and merged.stderr == ""
        batch, logits = _lorafleet_logits(made, kind)
        expected[name] = logits
        card = (Path(plain_view["path"]) / "README.md").read_text()
        snippet = next((b.split("```")[0] for b in card.split("```python")[1:] if "mean = " in b), None)
        cases.append({"name": name, "kind": kind, "adapter": plain_view["path"],
                      "merged": merged_view["path"], "batch": batch, "texts": TEXTS, "snippet": snippet,
                      "stock": alias == "minilm-l6"})

    # A mean-pooled full fine-tune (no adapter: its own weights) exports merged the same way.
    full = tmp_path / "made" / "full"
    _full_model(full)
    assert write_merged_folder(full, tmp_path / "out" / "full-merged").remote_code
    batch, expected["full"] = _lorafleet_logits(full, "classification")
    cases.append({"name": "full", "kind": "classification", "adapter": str(full), "stock": False,
                  "merged": str(tmp_path / "out" / "full-merged"), "batch": batch, "texts": TEXTS})

    _hub_cache(tmp_path / "hub")
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1",
           "HF_MODULES_CACHE": str(tmp_path / "modules"), "PYTHONPATH": str(ROOT)}
    run = subprocess.run([sys.executable, "-c", LOADERS, json.dumps(cases)], env=env, capture_output=True,
                         text=True, timeout=600, cwd=tmp_path, stdin=subprocess.DEVNULL)
    assert run.returncode == 0, run.stderr[-3000:]
    got = json.loads(run.stdout.strip().splitlines()[-1])

    def close(name: str, way: str) -> None:
        torch.testing.assert_close(torch.tensor(got[name][way]), expected[name], atol=1e-5, rtol=1e-5,
                                   msg=f"{name}: {way}")

    for name, _, kind, pooling, _ in [*ADAPTERS, FULL]:
        assert got[name]["merged_tokenizer_agrees"], name
        close(name, "merged")
        if pooling == "mean":
            assert got[name]["merged_class"].startswith("MeanPooled")
            assert got[name]["merged_untrusted"].startswith("refused: ")
            assert "contains custom code" in got[name]["merged_untrusted"]
        else:
            close(name, "merged_untrusted")  # a plain transformers model: no code of ours needed
        if kind != "generation":
            close(name, "lorafleet")
        if "peft" not in got[name]:  # no hub counterpart for the stock loader
            continue
        if pooling == "mean":
            close(name, "card")
            # What the notice warns of: the stock loader feeds [CLS] and gets other logits.
            assert (torch.tensor(got[name]["peft"]) - expected[name]).abs().max() > 1e-2
        else:
            close(name, "peft")


def test_a_cards_first_lines_say_which_loader_reproduces_it():
    for pooling, method, stock in (("mean", "lora", "AutoPeftModelForSequenceClassification"),
                                   ("mean", "full", "AutoModelForSequenceClassification")):
        meta = AdapterMeta.for_task(TASKS["sst2"], base_model="minilm-l6", method=method, pooling=pooling)
        body = render_model_card(meta).split("---\n", 2)[2].lstrip().splitlines()
        assert body[0].startswith("# ") and body[2].startswith("> **Loading:** ")
        assert f"{stock}` does not reproduce" in body[2] and "trust_remote_code=True" in body[2]
    e2e = TASKS["e2e"]
    for meta in (AdapterMeta.for_task(TASKS["sst2"], base_model="minilm-l6", method="lora"),
                 AdapterMeta.for_task(e2e, base_model="smollm2-135m", method="lora", pooling="mean")):
        assert "**Loading:**" not in render_model_card(meta)


def test_a_merged_export_refuses_what_any_export_refuses(home, tmp_path):
    runner = CliRunner()
    assert runner.invoke(cli, ["tenant", "create", "acme"]).exit_code == 0
    _adapter(tmp_path / "made" / "a", "tiny-bert", "classification", "mean", "lora")
    args = ["adapter", "import", "--tenant", "acme", str(tmp_path / "made" / "a"), "--json"]
    imported = runner.invoke(cli, args)
    row = json.loads(imported.output)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    artifacts = Path(row["path"]).parent
    for dest, message in ((tmp_path / "full", "is not empty"), (tmp_path / "dangling", "dangling"),
                          (artifacts / "x", "artifacts root"), (Path("/dev/null"), "character device")):
        result = runner.invoke(cli, ["adapter", "export", row["id"], str(dest), "--merged"])
        assert result.exit_code == 1 and message in result.stderr, (dest, result.output)
        assert "Traceback" not in result.output
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine" and not (tmp_path / "nowhere").exists()
    assert not (artifacts / "x").exists()


def test_the_shipped_module_needs_only_torch_and_transformers():
    source = Path(modeling_mean_pooled.__file__).read_text()
    tree = ast.parse(source)
    roots = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
             for alias in node.names}
    roots |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert roots == {"__future__", "torch", "transformers"}
    assert len(source.splitlines()) < 100  # small enough to read before trusting it
