"""Exact resume: an interrupted run continued from its checkpoint equals the uninterrupted run."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

os.environ.setdefault("HF_HUB_OFFLINE", "1")
DATA = Path(os.environ["LORAFLEET_DATA_DIR"])

from lora_engine.checkpoint import (  # noqa: E402
    Checkpoint,
    capture_rng_state,
    latest_checkpoint,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from lora_engine.errors import TrainingStopped  # noqa: E402
from lora_engine.generate import DecodeSettings  # noqa: E402
from lora_engine.recipe import TrainHooks, train  # noqa: E402

SHORT = DecodeSettings(num_beams=1, no_repeat_ngram_size=0, max_new_tokens=8)


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


class Crash(Exception):
    """Stands for a worker dying mid-run (nothing after the failing step runs)."""


def adapter_tensors(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "adapter_model.safetensors"))


def assert_same_run(a, b):
    assert len(a.losses) == len(b.losses)
    np.testing.assert_allclose(a.losses, b.losses, rtol=0, atol=1e-7)
    ta, tb = adapter_tensors(a.adapter_dir), adapter_tensors(b.adapter_dir)
    assert ta.keys() == tb.keys()
    for k in ta:
        assert torch.equal(ta[k], tb[k]), f"{k} differs after resume"
    assert a.metrics == b.metrics
    assert (a.stats.examples, a.stats.tokens) == (b.stats.examples, b.stats.tokens)


@pytest.fixture
def cls_spec(tmp_path):
    # 27 training rows, batch 4, accum 2: 7 batches an epoch, so 6 steps (12 batches) cross an epoch.
    rows = [{"text": f"row {i} says {'good' if i % 2 else 'bad'} things", "label": i % 2} for i in range(30)]
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    return {"task": "custom-classification", "dataset": str(data), "base_model": "tiny-bert",
            "max_steps": 6, "batch_size": 4, "grad_accum": 2, "dropout": 0.1, "warmup_ratio": 0.2}


def test_stop_and_resume_equals_uninterrupted(tmp_path, cls_spec):
    whole = train(cls_spec, tmp_path / "whole", data_dir=DATA)
    ck = tmp_path / "ck"
    calls = []

    def stop_in_step_2() -> bool:
        # Asked between the two micro-batches of step 1, after step 1, then inside step 2:
        # the half-accumulated step 2 is dropped and the checkpoint is the state after step 1.
        calls.append(1)
        return len(calls) == 3

    with pytest.raises(TrainingStopped) as stopped:
        train(cls_spec, tmp_path / "resumed", data_dir=DATA,
              hooks=TrainHooks(should_stop=stop_in_step_2, checkpoint_dir=ck))
    assert stopped.value.step == 1 and latest_checkpoint(ck).name == "step-00000001"
    steps = []
    resumed = train(cls_spec, tmp_path / "resumed", data_dir=DATA,
                    hooks=TrainHooks(on_progress=lambda p: steps.append(p.step), checkpoint_dir=ck))
    assert steps == [2, 3, 4, 5, 6]  # continued, not restarted
    assert_same_run(whole, resumed)


def test_crash_resumes_from_the_last_periodic_checkpoint(tmp_path, cls_spec):
    whole = train(cls_spec, tmp_path / "whole", data_dir=DATA)
    ck = tmp_path / "ck"

    def crash_at_5(p):
        if p.step == 5:
            raise Crash

    saved = []
    with pytest.raises(Crash):
        train(cls_spec, tmp_path / "r", data_dir=DATA,
              hooks=TrainHooks(on_progress=crash_at_5, checkpoint_every=2, checkpoint_dir=ck,
                               on_checkpoint=lambda step, path: saved.append((step, path.name))))
    # The hook reports each checkpoint once it is on disk, with its folder (the runner's events).
    assert saved == [(2, "step-00000002"), (4, "step-00000004")]
    assert latest_checkpoint(ck).name == "step-00000004"
    assert [p.name for p in ck.iterdir()] == ["step-00000004"]  # older ones pruned, no temp left
    resumed = train(cls_spec, tmp_path / "r", data_dir=DATA, hooks=TrainHooks(checkpoint_dir=ck))
    assert_same_run(whole, resumed)


def test_generation_resume_with_lora_dropout(tmp_path):
    rows = [{"prompt": f"name[N{i % 5}], food[F{i % 3}]\n", "completion": f"N{i % 5} has F{i % 3} food."}
            for i in range(20)]
    data = write_jsonl(tmp_path / "g.jsonl", rows)
    spec = {"task": "custom-generation", "dataset": str(data), "base_model": "tiny-llama", "max_steps": 4,
            "batch_size": 4, "dropout": 0.2, "max_length": 48, "eval_size": 4}
    whole = train(spec, tmp_path / "whole", data_dir=DATA, decode=SHORT)
    ck = tmp_path / "ck"
    calls = []
    with pytest.raises(TrainingStopped):
        train(spec, tmp_path / "r", data_dir=DATA, decode=SHORT,
              hooks=TrainHooks(should_stop=lambda: calls.append(1) or len(calls) == 2, checkpoint_dir=ck))
    resumed = train(spec, tmp_path / "r", data_dir=DATA, decode=SHORT, hooks=TrainHooks(checkpoint_dir=ck))
    assert_same_run(whole, resumed)


def test_checkpoint_holds_no_pickle_and_refuses_another_spec(tmp_path, cls_spec):
    ck = tmp_path / "ck"
    calls = []  # asked inside step 1 (no), then after it (yes): a checkpoint of step 1
    with pytest.raises(TrainingStopped):
        train(cls_spec, tmp_path / "a", data_dir=DATA, hooks=TrainHooks(
            should_stop=lambda: bool(calls.append(1)) or len(calls) >= 2, checkpoint_dir=ck))
    files = sorted(p.name for p in latest_checkpoint(ck).iterdir())
    assert files == ["state.json", "tensors.safetensors"]
    state = json.loads((latest_checkpoint(ck) / "state.json").read_text())
    assert state["step"] == 1 and state["sampler"]["position"] == 2  # accum 2: two batches consumed
    tensors = load_file(str(latest_checkpoint(ck) / "tensors.safetensors"))
    assert any(k.startswith("optim/") and k.endswith("exp_avg_sq") for k in tensors)
    assert any(k.startswith("param/") and "lora_A" in k for k in tensors)
    with pytest.raises(ValueError, match="another training spec"):
        train({**cls_spec, "seed": 1}, tmp_path / "b", data_dir=DATA, hooks=TrainHooks(checkpoint_dir=ck))


def test_rng_state_round_trips_through_files(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    random.random(), np.random.rand(), torch.rand(1)
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.ones(2))])
    ckpt = Checkpoint(step=7, trainable={"w": torch.arange(4.0)}, optimizer=opt.state_dict(),
                      rng=capture_rng_state(), sampler={"epoch": 1, "position": 3}, meta={"x": [1.5]})
    expected = (random.random(), float(np.random.rand()), torch.rand(3))
    save_checkpoint(tmp_path, ckpt)
    save_checkpoint(tmp_path, Checkpoint(**{**ckpt.__dict__, "step": 9}), keep=2)
    assert [p.name for p in sorted(tmp_path.iterdir())] == ["step-00000007", "step-00000009"]
    loaded = load_checkpoint(tmp_path / "step-00000007")
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    restore_rng_state(loaded.rng)
    got = (random.random(), float(np.random.rand()), torch.rand(3))
    assert got[:2] == expected[:2] and torch.equal(got[2], expected[2])
    assert loaded.step == 7 and loaded.sampler == {"epoch": 1, "position": 3} and loaded.meta == {"x": [1.5]}
    assert torch.equal(loaded.trainable["w"], torch.arange(4.0))
