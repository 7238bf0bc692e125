"""One run across two processes (gloo, CPU): the same math as one process with the same global
batch, and checkpoints that resume across the process count.

A MiniLM-L6 copy with its dropout off (the base's own dropout draws masks of the batch's shape,
which a slice does not share); the loss is each slice's mean scaled by its share of the global
batch (`parallel.DataParallel.shard`), so the ranks' averaged gradient is the global batch's.
The two directions of resume together run every step of the 4-step curve on two processes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from lora_engine.checkpoint import latest_checkpoint
from lora_engine.data.batching import encode_examples
from lora_engine.data.examples import ClassificationExample
from lora_engine.errors import TrainingStopped
from lora_engine.model_ref import alias_folder
from lora_engine.multidevice import train_on_devices
from lora_engine.multidevice.parallel import DataParallel, loss_terms, slice_bounds
from lora_engine.recipe import TrainHooks, train

DATA = Path(os.environ["LORAFLEET_DATA_DIR"])
RTOL = 1e-5


def minilm_spec(root: Path) -> dict:
    """A 4-step spec of 8-row batches of 40 rows on a MiniLM-L6 copy without dropout, in `root`."""
    base = root / "minilm-no-dropout"
    base.mkdir()
    for f in alias_folder("minilm-l6").iterdir():
        if f.name == "config.json":
            config = json.loads(f.read_text())
            config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
            (base / f.name).write_text(json.dumps(config))
        elif f.is_file():
            (base / f.name).symlink_to(f)
    rows = [{"text": f"row {i} says {'good' if i % 2 else 'bad'} things" + " again" * (i % 4),
             "label": i % 2} for i in range(40)]
    data = root / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {"task": "custom-classification", "dataset": str(data), "base_model": str(base), "max_steps": 4,
            "batch_size": 8, "dropout": 0.0, "lr": 1e-3, "eval_every": 0, "eval_size": 8}


@pytest.fixture(scope="module")
def spec(tmp_path_factory) -> dict:
    return minilm_spec(tmp_path_factory.mktemp("multidevice"))


@pytest.fixture(scope="module")
def reference(spec, tmp_path_factory):
    """The uninterrupted one-process run: the curve every other run must draw."""
    return train(spec, tmp_path_factory.mktemp("reference") / "out", data_dir=DATA)


def assert_same_run(run, reference):
    np.testing.assert_allclose(run.losses, reference.losses, rtol=RTOL, atol=0)
    a = load_file(str(run.adapter_dir / "adapter_model.safetensors"))
    b = load_file(str(reference.adapter_dir / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    for name in a:
        # Per tensor, not per element: Adam's first update is ~lr·sign(g) per coordinate, so one
        # whose gradient is ~0 takes its sign from float noise (the slices' summation order).
        assert float((a[name] - b[name]).norm()) <= 1e-3 * float(b[name].norm()), name
    assert (run.stats.examples, run.stats.tokens) == (reference.stats.examples, reference.stats.tokens)


def stop_at_once() -> bool:
    return True  # asked before the first step ends: every rank stops after step 1


def test_a_two_process_checkpoint_resumes_on_one_and_draws_the_same_curve(spec, reference, tmp_path):
    ck, seen = tmp_path / "ck", []
    with pytest.raises(TrainingStopped) as stopped:
        train_on_devices(dict(spec, devices=2), tmp_path / "two", data_dir=DATA, devices=2,
                         hooks=TrainHooks(should_stop=stop_at_once, checkpoint_dir=ck,
                                          on_progress=seen.append, on_checkpoint=lambda s, p: seen.append(s)))
    assert stopped.value.step == 1 and latest_checkpoint(ck).name == "step-00000001"
    # Rank 0's events reached this process's hooks: step 1's progress (two processes' loss,
    # the global batch's examples), then its checkpoint.
    assert [p.step for p in seen[:1]] == [1] and seen[1] == 1
    np.testing.assert_allclose([seen[0].loss], reference.losses[:1], rtol=RTOL)
    assert not (tmp_path / "two").exists()  # only a finished run writes the adapter

    resumed = train(spec, tmp_path / "one", data_dir=DATA, hooks=TrainHooks(checkpoint_dir=ck))
    assert_same_run(resumed, reference)


def test_a_one_process_checkpoint_resumes_on_two_and_draws_the_same_curve(spec, reference, tmp_path):
    ck = tmp_path / "ck"
    with pytest.raises(TrainingStopped):
        train(spec, tmp_path / "one", data_dir=DATA,
              hooks=TrainHooks(should_stop=stop_at_once, checkpoint_dir=ck))
    steps, resumed_at = [], []
    two = train_on_devices(dict(spec, devices=2), tmp_path / "two", data_dir=DATA, devices=2,
                           hooks=TrainHooks(checkpoint_dir=ck, on_progress=steps.append,
                                            on_resume=lambda s, p: resumed_at.append(s)))
    assert resumed_at == [1] and [p.step for p in steps] == [2, 3, 4]
    assert_same_run(two, reference)  # steps 2-4 trained on two processes, the adapter rank 0 wrote
    assert two.metrics["validation"] == pytest.approx(reference.metrics["validation"], rel=1e-4)


def test_a_slice_of_an_uneven_batch_weighs_its_share_of_the_global_mean():
    from lora_engine.models import training_tokenizer

    examples = [ClassificationExample(f"row {t}", None, 0) for t in "abcde"]
    encoded = encode_examples(examples, training_tokenizer("tiny-bert"), 16)
    assert [slice_bounds(5, r, 2) for r in range(2)] == [(0, 3), (3, 5)]
    assert [slice_bounds(1, r, 2) for r in range(2)] == [(0, 1), (1, 1)]
    ranks = [DataParallel(r, 2, torch.device("cpu")) for r in range(2)]
    slices = [p.shard(encoded, [0, 1, 2, 3, 4]) for p in ranks]
    # (1/W) Σ share_r · mean_r = (3·mean_0 + 2·mean_1) / 5: the mean over the 5 rows.
    assert [s.share for s in slices] == [pytest.approx(1.2), pytest.approx(0.8)]
    assert [len(s.indices) for s in slices] == [3, 2] and {s.examples for s in slices} == {5}
    assert loss_terms(encoded, [0, 1]) == 2
    # A rank with no row of a one-row batch trains a row at share 0 (it still joins the step).
    lonely = ranks[1].shard(encoded, [4])
    assert lonely.share == 0.0 and lonely.examples == 1


def test_a_ranks_error_reaches_the_retry_policy_as_its_own_type():
    import errno

    from lora_engine.errors import RankFailed, SpecError, TrainingDiverged
    from lora_engine.multidevice.channel import describe_error, rebuild_error
    from orchestrator.retries import Outcome, classify

    def again(exc):
        return rebuild_error(json.loads(json.dumps(describe_error(exc, collective=False))))

    stopped = again(TrainingStopped(7))
    assert isinstance(stopped, TrainingStopped) and stopped.step == 7
    diverged = again(TrainingDiverged(3, float("nan"), "the loss is not finite (try a lower learning rate)"))
    assert isinstance(diverged, TrainingDiverged) and str(diverged) == str(
        TrainingDiverged(3, float("nan"), "the loss is not finite (try a lower learning rate)"))
    assert again(SpecError(["rank: too big"])).problems == ["rank: too big"]
    full = again(OSError(errno.ENOSPC, "No space left on device"))
    assert classify(full) is Outcome.FAILED  # storage full: an operator's, not retried
    assert classify(again(RuntimeError("CUDA out of memory"))) is Outcome.REQUEUED
    assert classify(again(ValueError("label 9 out of range"))) is Outcome.FAILED
    assert classify(again(KeyboardInterrupt())) is Outcome.FAILED  # unknown types: by their text
    assert classify(RankFailed("rank 1 of 2 was killed by signal 9")) is Outcome.REQUEUED
