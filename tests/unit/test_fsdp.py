"""One run sharded across two processes (FSDP2, gloo, CPU): the same math as one process with the
same global batch, checkpoints that resume across the process count and the sharding, each rank
holding half of the training state, and the door's refusals.

The spec and the one-process reference are test_multidevice's (MiniLM-L6 with its dropout off,
40 rows, 4 steps of 8); the two directions of resume together run every step of the LoRA curve
sharded, and full fine-tuning runs its whole curve sharded, with gradient checkpointing on.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from lora_engine.checkpoint import latest_checkpoint, load_checkpoint
from lora_engine.errors import SpecError, TrainingStopped
from lora_engine.multidevice import train_on_devices
from lora_engine.multidevice.sharding import resident_state_bytes, shard_model, shard_units, sharding_for
from lora_engine.recipe import TrainHooks, train
from lora_engine.spec import validate_spec
from tests.unit.test_multidevice import DATA, RTOL, assert_same_run, minilm_spec, stop_at_once

FSDP = {"devices": 2, "sharding": "fsdp"}


@pytest.fixture(scope="module")
def spec(tmp_path_factory) -> dict:
    return minilm_spec(tmp_path_factory.mktemp("fsdp"))


@pytest.fixture(scope="module")
def reference(spec, tmp_path_factory):
    """The uninterrupted one-process run: the curve every other run must draw."""
    return train(spec, tmp_path_factory.mktemp("reference") / "out", data_dir=DATA)


def sharded(spec: dict, out, hooks: TrainHooks | None = None):
    return train_on_devices(dict(spec, **FSDP), out, data_dir=DATA, devices=2, hooks=hooks)


def whole_state_bytes(stats, bytes_per=4) -> int:
    """Weights, and a gradient and AdamW's two moments of each trainable one (fp32), unsharded."""
    return bytes_per * (stats.total_params + 3 * stats.trainable_params)


def test_a_one_process_checkpoint_resumes_sharded_on_the_reference_curve(spec, reference, tmp_path):
    ck = tmp_path / "ck"
    with pytest.raises(TrainingStopped):
        train(spec, tmp_path / "one", data_dir=DATA,
              hooks=TrainHooks(should_stop=stop_at_once, checkpoint_dir=ck))
    steps = []
    two = sharded(spec, tmp_path / "two", TrainHooks(checkpoint_dir=ck, on_progress=steps.append))
    assert [p.step for p in steps] == [2, 3, 4]
    assert_same_run(two, reference)  # steps 2-4 sharded, the adapter gathered and written by rank 0
    assert two.metrics["validation"] == pytest.approx(reference.metrics["validation"], rel=1e-4)
    # Rank 0 held half of the training state (its shard is the larger half of an odd row count).
    assert two.stats.sharding == "fsdp"
    assert 0.5 <= two.stats.state_bytes / whole_state_bytes(two.stats) < 0.52


def test_a_sharded_checkpoint_resumes_on_one_process_on_the_reference_curve(spec, reference, tmp_path):
    ck, seen = tmp_path / "ck", []
    with pytest.raises(TrainingStopped):
        sharded(spec, tmp_path / "two", TrainHooks(should_stop=stop_at_once, checkpoint_dir=ck,
                                                   on_checkpoint=lambda s, p: seen.append(s)))
    assert seen == [1]
    # Written whole: the same tensors, by name and shape, as a one-process checkpoint holds.
    ckpt = load_checkpoint(latest_checkpoint(ck))
    adapter = load_file(str(reference.adapter_dir / "adapter_model.safetensors"))
    assert sum(t.numel() for t in ckpt.trainable.values()) == reference.stats.trainable_params
    assert len(ckpt.optimizer["state"]) == len(ckpt.trainable) and len(ckpt.trainable) >= len(adapter)
    resumed = train(spec, tmp_path / "one", data_dir=DATA, hooks=TrainHooks(checkpoint_dir=ck))
    assert_same_run(resumed, reference)


def test_full_fine_tuning_sharded_draws_the_one_process_curve_with_gradient_checkpointing(spec, tmp_path):
    # Evaluation during training too: every rank joins the sharded forward on the held-out rows,
    # keeps its shard of the best weights, and a checkpoint gathers them whole.
    full = dict(spec, method="full", lr=1e-4, eval_every=2, eval_holdout=8, patience=0)
    one = train(full, tmp_path / "one", data_dir=DATA)
    ck = tmp_path / "ck"
    two = sharded(dict(full, gradient_checkpointing=True), tmp_path / "two",
                  TrainHooks(checkpoint_dir=ck, checkpoint_every=2))
    np.testing.assert_allclose(two.losses, one.losses, rtol=RTOL, atol=0)
    assert [(p.step, p.score) for p in two.eval_history] == [(p.step, p.score) for p in one.eval_history]
    a = load_file(str(two.adapter_dir / "model.safetensors"))
    b = load_file(str(one.adapter_dir / "model.safetensors"))
    assert a.keys() == b.keys()
    for name in a:  # per tensor, as in test_multidevice (Adam's sign of a ~0 gradient)
        assert float((a[name] - b[name]).norm()) <= 1e-3 * max(float(b[name].norm()), 1e-6), name
    assert json.loads((two.adapter_dir / "config.json").read_text())["model_type"] == "bert"
    assert two.stats.sharding == "fsdp"
    assert 0.5 <= two.stats.state_bytes / whole_state_bytes(two.stats) < 0.52
    ckpt = load_checkpoint(latest_checkpoint(ck))
    assert ckpt.step == 4 and {f"best/{n}" for n in ckpt.trainable} == set(ckpt.extra)
    assert all(ckpt.extra[f"best/{n}"].shape == t.shape for n, t in ckpt.trainable.items())


def test_units_are_the_modules_each_forward_calls(tiny_model):
    from lora_engine.inject import LoraSettings, inject_lora, lora_modules

    model, _ = tiny_model("tiny-bert")
    inject_lora(model, LoraSettings(method="lora", rank=4, alpha=8, dropout=0.0, targets=["query", "value"]))
    units = shard_units(model)
    held = [id(p) for unit in units for p in unit.parameters()]
    assert sorted(held) == sorted({id(p) for p in model.parameters()})  # each weight in one unit
    lora = {id(m) for _, m in lora_modules(model)}
    assert sum(1 for unit in units if id(unit) in lora) == len(lora)  # a LoRA layer whole
    # A Llama's tied input embedding and LM head: whole on every rank, the rest in units.
    llama, _ = tiny_model("tiny-llama", "generation")
    llama.config.tie_word_embeddings = True
    llama.tie_weights()
    units = shard_units(llama)
    assert llama.lm_head not in units and llama.model.embed_tokens not in units
    assert sum(p.numel() for u in units for p in u.parameters()) == (
        sum(p.numel() for p in llama.parameters()) - llama.lm_head.weight.numel())


def test_each_unit_is_gathered_for_its_forward_alone(tiny_model, tmp_path):
    """In a group of one (the math is the test above's), after a forward every weight is a shard
    again, not the gathered tensor FSDP keeps for a root's backward by default."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor

    from lora_engine.forward import training_loss
    from lora_engine.inject import LoraSettings, inject_lora

    model, tokenizer = tiny_model("tiny-bert")
    inject_lora(model, LoraSettings(method="lora", rank=4, alpha=8, dropout=0.0, targets=["query", "value"]))
    dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    try:
        shard_model(model, init_device_mesh("cpu", (1,)))
        inputs = dict(tokenizer(["a fine film", "dull"], return_tensors="pt", padding=True),
                      labels=torch.tensor([1, 0]))
        loss = training_loss(model.train(), inputs, "classification")
        assert all(isinstance(p, DTensor) for p in model.parameters())
        loss.backward()
        assert all(isinstance(p.grad, DTensor) for p in model.parameters() if p.requires_grad)
    finally:
        dist.destroy_process_group()


def test_auto_shards_only_what_does_not_fit_a_cuda_device(tiny_model):
    model, _ = tiny_model("tiny-bert")
    weights = sum(p.numel() * 4 for p in model.parameters())
    assert resident_state_bytes(model) == 4 * weights  # everything trains: + grads + 2 moments
    assert sharding_for("auto", model, torch.device("cpu")) == "replicate"  # a CPU: never by itself
    assert sharding_for("fsdp", model, torch.device("cpu")) == "fsdp"


@pytest.mark.parametrize(("fields", "problem"), [
    ({"sharding": "fsdp"}, "sharding: 'fsdp' says how a run spreads over several devices; give devices > 1"),
    ({"sharding": "replicate", "devices": 1}, "(got devices: 1)"),
    ({"sharding": "fsdp", "method": "none", "devices": 2}, "sharding: not used by method 'none'"),
    ({"sharding": "zero", "devices": 2}, "sharding: Input should be 'auto', 'replicate' or 'fsdp'"),
])
def test_the_door_refuses_a_sharding_that_cannot_run(fields, problem):
    with pytest.raises(SpecError) as refused:
        validate_spec({"task": "sst2", "base_model": "tiny-bert", **fields})
    assert any(problem in p for p in refused.value.problems), refused.value.problems


def test_the_door_takes_each_sharding_across_devices():
    for sharding in ("auto", "replicate", "fsdp"):
        assert validate_spec({"task": "sst2", "devices": 2, "sharding": sharding}).sharding == sharding


def test_the_rank_entry_point_runs_under_torchrun_itself(spec, reference, tmp_path):
    """`torchrun --standalone --nproc_per_node 2 -m lora_engine.multidevice.rank RUN_FOLDER` (env://
    rendezvous on a port torchrun picks) trains the sharded run the launcher would."""
    import os
    import subprocess
    import sys

    from lora_engine.multidevice.channel import RESULT, read_json
    from lora_engine.multidevice.launch import plan_for
    from lora_engine.recipe import resolve_spec

    folder = tmp_path / "run"
    folder.mkdir()
    resolved = resolve_spec(dict(spec, **FSDP), data_dir=DATA)
    plan_for(resolved, tmp_path / "out", data_dir=DATA, hooks=TrainHooks(), timeout_s=120).write(folder)
    outside = ("MASTER_ADDR", "MASTER_PORT", "LORAFLEET_RANK_STORE")
    env = {k: v for k, v in os.environ.items() if k not in outside}
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                    "-m", "lora_engine.multidevice.rank", str(folder)],
                   env=dict(env, OMP_NUM_THREADS="1"), check=True, timeout=300, capture_output=True)
    doc = read_json(folder / RESULT)
    np.testing.assert_allclose(doc["losses"], reference.losses, rtol=RTOL, atol=0)
    assert doc["stats"]["sharding"] == "fsdp" and (tmp_path / "out" / "adapter_model.safetensors").is_file()
