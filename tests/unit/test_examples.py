"""The examples/ scripts run as a user runs them (in this process, to share the loaded torch):
fine-tune on your own data, load the adapter and infer, merge for deployment; and the GLUE
batch file queues as documented. The shell walk-through runs against a worker in
tests/integration/test_cli_terminal.py."""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import pytest
import torch

from orchestrator.batchfile import load_batch_file
from orchestrator.services.jobs import submit_batch
from orchestrator.services.tenants import create_tenant

pytest_plugins = ["registry_fixtures"]

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def run_example(name: str, *args: str, capsys: pytest.CaptureFixture[str]) -> str:
    argv = sys.argv
    sys.argv = [str(EXAMPLES / name), *args]
    try:
        runpy.run_path(str(EXAMPLES / name), run_name="__main__")
    finally:
        sys.argv = argv
    return capsys.readouterr().out


def test_finetune_infer_and_merge(tmp_path: Path, capsys, monkeypatch):
    monkeypatch.setenv("LORAFLEET_DEVICE", "cpu")
    trained = json.loads(run_example("finetune_own_data.py", "--demo", str(tmp_path / "demo"), "--base-model",
                                     "tiny-bert", "--max-steps", "4", capsys=capsys))
    assert trained["adapter"] == str(tmp_path / "demo") and "accuracy" in trained["metrics"]["validation"]
    assert (tmp_path / "demo" / "adapter_model.safetensors").is_file()

    lines = run_example("load_and_infer.py", str(tmp_path / "demo"), "a fine film", "dreadful",
                        capsys=capsys).splitlines()
    predictions = [json.loads(line) for line in lines]
    assert [p["input"] for p in predictions] == ["a fine film", "dreadful"]
    assert {p["label"] for p in predictions} <= {"negative", "positive"}

    out = run_example("merge_for_deployment.py", str(tmp_path / "demo"), str(tmp_path / "merged"),
                      capsys=capsys)
    assert out.startswith(f"saved {tmp_path / 'merged'}")
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    import lora_engine as le
    from lora_engine.forward import classification_logits

    merged = tmp_path / "merged"
    plain = AutoModelForSequenceClassification.from_pretrained(merged, trust_remote_code=True).eval()
    tok = AutoTokenizer.from_pretrained(tmp_path / "merged", trust_remote_code=True)
    batch = dict(tok(["a fine film", "dreadful"], return_tensors="pt", padding=True))
    adapter = le.load_for_inference(tmp_path / "demo")
    with torch.no_grad():  # lorafleet's logits, pooled as the adapter was trained
        torch.testing.assert_close(plain(**batch).logits, classification_logits(adapter.model, batch),
                                   atol=1e-5, rtol=0)


def test_the_glue_batch_file_queues_five_tasks(session):
    items = load_batch_file(EXAMPLES / "glue_five_tasks.yaml")
    create_tenant(session, "acme")
    jobs = submit_batch(session, items)
    assert [j.task for j in jobs] == ["cola", "sst2", "mrpc", "stsb", "rte"]
    assert jobs[4].rank == 16 and jobs[4].priority == 10 and jobs[4].idempotency_key == "acme-rte-r16"


def test_the_public_api_is_lazy_and_complete():
    import subprocess

    import lora_engine as le

    # The package; its torch-free modules (lora_engine.TORCH_FREE) are probed in test_torch_free.
    probe = "import sys, lora_engine; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          check=True).stdout.strip() == "False"  # importing the package loads no torch
    assert sorted(le.__all__) == sorted(le._PUBLIC) == sorted([
        "LoraSettings", "TrainHooks", "TrainResult", "TrainingSpec", "export_merged", "inject_lora",
        "load_adapter", "load_for_inference", "lora_state_dict", "mark_only_lora_as_trainable", "merge_lora",
        "save_adapter", "train", "unmerge_lora", "validate_spec", "evaluate_untuned", "reevaluate",
        "AdapterToScore", "write_merged_folder"])
    from lora_engine import inject

    assert le.mark_only_lora_as_trainable is inject.mark_only_lora_as_trainable
    assert all(callable(getattr(le, name)) for name in le.__all__)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        le.nope  # noqa: B018
    assert (EXAMPLES.parent / "lora_engine" / "py.typed").is_file()
