"""Evaluation during training: early stopping, the best checkpoint kept, resume keeps the best."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

os.environ.setdefault("HF_HUB_OFFLINE", "1")
DATA = Path(os.environ["LORAFLEET_DATA_DIR"])

from lora_engine.catalog import TASKS  # noqa: E402
from lora_engine.data import load_examples  # noqa: E402
from lora_engine.device import pick_device  # noqa: E402
from lora_engine.errors import TrainingStopped  # noqa: E402
from lora_engine.evaluate import evaluate_classification  # noqa: E402
from lora_engine.predict import load_for_inference  # noqa: E402
from lora_engine.recipe import TrainHooks, train  # noqa: E402
from lora_engine.selection import split_holdout  # noqa: E402


@pytest.fixture(scope="module")
def data_file(tmp_path_factory) -> Path:
    # The label is the word, with every 5th row flipped: a random tiny BERT fine-tuned whole learns
    # it within a few steps, then swings back and forth (lr 1e-3 is high for it), so the best
    # evaluation is not the last one.
    rows = [{"text": "great" if i % 2 else "awful", "label": (i % 2) ^ (i % 5 == 0)} for i in range(120)]
    path = tmp_path_factory.mktemp("sel") / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _spec(data_file: Path, **kw) -> dict:
    return {"task": "custom-classification", "dataset": str(data_file), "base_model": "tiny-bert",
            "batch_size": 8, "max_length": 32, "eval_size": 16, "eval_holdout": 40, **kw}


def _rescore(adapter_dir: Path, spec: dict) -> dict[str, float]:
    """Score a saved adapter on the held-out rows the run evaluated on (a fresh load)."""
    train_rows = load_examples(spec["task"], "train", data_dir=DATA, dataset=spec["dataset"])
    _, holdout = split_holdout(train_rows, spec["eval_holdout"], spec.get("seed", 42))
    pred = load_for_inference(adapter_dir)
    return evaluate_classification(pred.model, pred.tokenizer, TASKS[spec["task"]], holdout,
                                   max_length=spec["max_length"], device=pick_device())


def test_a_flat_metric_stops_early(tmp_path, data_file):
    # A vanishing lr: every evaluation scores the same, none improves, patience 2 ends the run.
    spec = _spec(data_file, max_steps=40, eval_every=3, patience=2, lr=1e-9, head_lr=1e-9)
    res = train(spec, tmp_path / "a", data_dir=DATA)
    scores = [p.score for p in res.eval_history]
    assert [p.step for p in res.eval_history] == [3, 6, 9] and len(set(scores)) == 1
    assert len(res.losses) == 9  # stopped after step 9 of 40
    assert res.metrics["selection"] == {"best_step": 3.0, "evaluations": 3.0, "stopped_early": 1.0,
                                        "accuracy": scores[0]}


def test_patience_running_out_at_the_last_evaluation_is_no_early_stop(tmp_path, data_file):
    # The same flat run, 9 steps: the second evaluation without gain is the one after the last step.
    spec = _spec(data_file, max_steps=9, eval_every=3, patience=2, lr=1e-9, head_lr=1e-9)
    res = train(spec, tmp_path / "a", data_dir=DATA)
    assert [p.step for p in res.eval_history] == [3, 6, 9] and len(res.losses) == 9
    assert res.metrics["selection"]["stopped_early"] == 0.0


def test_the_kept_adapter_is_the_best_evaluation(tmp_path, data_file):
    spec = _spec(data_file, method="full", max_steps=24, eval_every=3, patience=0, lr=1e-3)
    res = train(spec, tmp_path / "a", data_dir=DATA)
    hist = res.eval_history
    assert [p.step for p in hist] == list(range(3, 25, 3)) and not res.metrics["selection"]["stopped_early"]
    best = max(hist, key=lambda p: p.score)
    assert best.step != hist[-1].step and best.score > hist[-1].score  # the last step is not the best
    assert res.metrics["selection"]["best_step"] == best.step
    assert _rescore(res.adapter_dir, spec) == best.metrics  # the folder holds the best weights

    # Without selection the same run keeps its last step, which scores as the last evaluation did.
    last = train({**spec, "max_steps": 24, "eval_every": 0, "eval_holdout": 40}, tmp_path / "b",
                 data_dir=DATA)
    assert last.eval_history == [] and "selection" not in last.metrics
    assert _rescore(last.adapter_dir, spec) == hist[-1].metrics


def test_resume_keeps_the_best_so_far(tmp_path, data_file):
    spec = _spec(data_file, method="full", max_steps=24, eval_every=3, patience=0, lr=1e-3)
    whole = train(spec, tmp_path / "whole", data_dir=DATA)
    best_step = whole.metrics["selection"]["best_step"]
    ck, steps = tmp_path / "ck", []

    def stop_after_the_best() -> bool:  # stopped after the best evaluation, before the end
        steps.append(1)
        return len(steps) == best_step + 4

    with pytest.raises(TrainingStopped):
        train(spec, tmp_path / "resumed", data_dir=DATA,
              hooks=TrainHooks(should_stop=stop_after_the_best, checkpoint_dir=ck))
    resumed = train(spec, tmp_path / "resumed", data_dir=DATA, hooks=TrainHooks(checkpoint_dir=ck))
    assert resumed.eval_history == whole.eval_history and resumed.metrics == whole.metrics
    a = load_file(str(whole.adapter_dir / "model.safetensors"))
    b = load_file(str(resumed.adapter_dir / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
