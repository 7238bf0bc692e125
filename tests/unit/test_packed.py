"""Packed training is exact: each packed job computes what it computes alone.

- the first-step gradients of every packed job equal its solo run's (fp32, dropout off, B ≠ 0);
- with dropout (LoRA and the model's own) a packed run's loss curves equal the solo runs';
- a job that stops leaves the others untouched, and its checkpoint resumes alone exactly; a solo
  checkpoint resumes into a pack exactly; a job that joins a running pack computes its solo run;
- the adapters of a 2-job packed run and of two solo runs score the same in PEFT;
- jobs that cannot be packed are refused with the reason, leaving the pack as it was.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file

DATA = Path(os.environ["LORAFLEET_DATA_DIR"])

from lora_engine.cache import BaseModelCache  # noqa: E402
from lora_engine.data.batching import collate  # noqa: E402
from lora_engine.errors import LoraConfigError, TrainingDiverged  # noqa: E402
from lora_engine.forward import training_loss  # noqa: E402
from lora_engine.generate import GREEDY  # noqa: E402
from lora_engine.inject import lora_modules  # noqa: E402
from lora_engine.layers import LoRALinear  # noqa: E402
from lora_engine.methods import peft_flags  # noqa: E402
from lora_engine.models import load_base_model  # noqa: E402
from lora_engine.packed import Pack  # noqa: E402
from lora_engine.packed.forward import PackedBatch, packed_losses  # noqa: E402
from lora_engine.packed.layer import MultiLoRALinear  # noqa: E402
from lora_engine.packed.routing import Routing  # noqa: E402
from lora_engine.recipe import TrainHooks, setup, train  # noqa: E402
from lora_engine.spec import validate_spec  # noqa: E402


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture(scope="module")
def specs(tmp_path_factory) -> dict[str, dict]:
    """Small jobs (custom data sets: set up in milliseconds) covering every method, accumulation,
    LoRA dropout on top of the model's own dropout, and different targets, ranks and widths."""
    tmp = tmp_path_factory.mktemp("data")
    words = ["good", "bad", "fine", "dull", "grand", "poor"]
    two = write_jsonl(tmp / "two.jsonl", [{"text": f"row {i} says {words[i % 6]} things " + "x " * (i % 7),
                                          "label": i % 2} for i in range(44)])
    three = write_jsonl(tmp / "three.jsonl", [{"text": f"{words[i % 6]} or {words[i * 5 % 6]} " * (1 + i % 3),
                                              "label": ["red", "green", "blue"][i % 3]} for i in range(40)])
    names, foods = ["Aromi", "Blue Spice", "Clowns", "Cocum"], ["French", "Italian", "Chinese"]
    gen = write_jsonl(tmp / "gen.jsonl", [{"prompt": f"name[{names[i % 4]}], food[{foods[i % 3]}]\n",
                                           "completion": f"{names[i % 4]} serves {foods[i % 3]} food."}
                                          for i in range(30)])
    base = {"task": "custom-classification", "base_model": "tiny-bert", "batch_size": 4, "max_length": 64,
            "dropout": 0.1}
    return {
        "a": {**base, "dataset": two, "max_steps": 4, "seed": 1},
        "b": {**base, "dataset": three, "max_steps": 3, "grad_accum": 2, "seed": 2, "method": "dora",
              "rank": 4, "targets": ["query", "key", "value", "dense"], "batch_size": 3},
        "c": {**base, "dataset": two, "max_steps": 4, "seed": 3, "method": "rslora", "dropout": 0.2,
              "lr": 1e-3, "batch_size": 5},
        "stsb": {"task": "stsb", "base_model": "tiny-bert", "batch_size": 4, "max_length": 64, "max_steps": 1,
                 "seed": 4},
        "gen": {"task": "custom-generation", "dataset": gen, "base_model": "tiny-llama", "max_steps": 2,
                "batch_size": 4, "max_length": 64, "eval_size": 4},
    }


def perturb(trainable: dict[str, torch.nn.Parameter], seed: int) -> None:
    """Move every trainable tensor (B ≠ 0), in name order, so A's gradient is not trivially zero."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name in sorted(trainable):
            p = trainable[name]
            p.add_(0.1 * torch.randn(p.shape, generator=gen, dtype=p.dtype))


def solo_gradients(spec: dict, seed: int) -> dict[str, torch.Tensor]:
    run = setup(validate_spec(spec).resolved(), data_dir=DATA)
    perturb(run.trainable, seed)
    run.model.eval()  # dropout off
    batch = collate(run.encoded, next(iter(run.sampler)))
    training_loss(run.model, batch.inputs, run.info.kind).backward()
    return {n: p.grad.clone() for n, p in run.trainable.items()}


def first_packed_step_beside_solo(pack: Pack, model, jobs: list[dict], tmp_path: Path):
    """Add `jobs` to `pack` (each job's weights perturbed by its own seed), run one packed forward +
    backward in eval mode, and yield each packed job beside its solo run's gradients."""
    packed = [pack.jobs[pack.add(spec, tmp_path / f"out{i}")] for i, spec in enumerate(jobs)]
    for i, job in enumerate(packed):
        perturb(job.run.trainable, seed=10 + i)
    model.eval()
    batches = [PackedBatch(j.slot, next(j.batches).inputs, j.run.info.kind, j.heads, j.stream,
                           j.run.spec.pooling) for j in packed]
    torch.stack(packed_losses(model, batches, pack.routing)).sum().backward()
    for i, (spec, job) in enumerate(zip(jobs, packed, strict=True)):
        yield job, solo_gradients(spec, seed=10 + i)


@pytest.mark.parametrize("family", ["encoder", "decoder"])
def test_first_step_gradients_equal_solo(tmp_path, specs, family):
    if family == "encoder":  # classification (2 and 3 labels) and regression in one pack
        jobs = [{**specs[k], "dropout": 0.0} for k in ("a", "b", "c", "stsb")]
        model, tok = load_base_model("tiny-bert", "classification", 2)
    else:
        jobs = [{**specs["gen"], "seed": 4},
                {**specs["gen"], "seed": 5, "method": "dora", "rank": 4, "targets": ["all-linear"]}]
        model, tok = load_base_model("tiny-llama", "generation")
    pack = Pack(model, tok, data_dir=DATA, base_model=jobs[0]["base_model"])
    for job, solo in first_packed_step_beside_solo(pack, model, jobs, tmp_path):
        assert solo.keys() == job.run.trainable.keys()
        assert any("lora_A" in n and g.abs().max() > 1e-4 for n, g in solo.items())
        for name, grad in solo.items():
            torch.testing.assert_close(job.run.trainable[name].grad, grad, rtol=1e-5, atol=1e-5, msg=name)


@pytest.mark.parametrize("fused", [False, True])
def test_mean_pooled_jobs_pack_with_their_solo_gradients(tmp_path, specs, fused):
    # Classification (2 and 3 labels, DoRA) and regression, every job's classifier on the mean of
    # its own rows' tokens: the last layer runs for every token, the means are per job and row.
    jobs = [{**specs[k], "dropout": 0.0, "pooling": "mean"} for k in ("a", "b", "c", "stsb")]
    model, tok = load_base_model("tiny-bert", "classification", 2)
    pack = Pack(model, tok, data_dir=DATA, base_model="tiny-bert", fused=fused)
    for job, solo in first_packed_step_beside_solo(pack, model, jobs, tmp_path):
        assert job.run.spec.pooling == "mean"
        assert any("lora_A" in n and g.abs().max() > 1e-4 for n, g in solo.items())
        for name, grad in solo.items():
            torch.testing.assert_close(job.run.trainable[name].grad, grad, rtol=1e-5, atol=1e-5, msg=name)
    with pytest.raises(LoraConfigError, match="a cls-pooled job cannot join a pack of mean-pooled jobs"):
        pack.add(specs["a"], tmp_path / "refused")


def test_mean_pooled_packed_runs_equal_solo_with_dropout(tmp_path, specs):
    jobs = {k: {**specs[k], "pooling": "mean", "max_steps": 3} for k in ("a", "c")}
    solo = {k: train(s, tmp_path / f"solo-{k}", data_dir=DATA) for k, s in jobs.items()}
    model, tok = load_base_model("tiny-bert", "classification", 2)
    pack = Pack(model, tok, data_dir=DATA, base_model="tiny-bert")
    for k, s in jobs.items():
        pack.add(s, tmp_path / f"pack-{k}", key=k)
    out = pack.run()
    for k in jobs:
        np.testing.assert_allclose(out[k].result.losses, solo[k].losses, rtol=0, atol=1e-5)
        assert out[k].result.metrics == solo[k].metrics  # evaluated with the job's own pooling
        assert json.loads((out[k].result.adapter_dir / "lorafleet.json").read_text())["pooling"] == "mean"


def test_each_packed_job_reports_its_own_gradient_norm(tmp_path, specs):
    # Per job of the pack, each step's norm before clipping is that job's own, as in its solo run
    # (whose norms test_grad_norm checks by hand); "b" accumulates 2 micro-batches per step.
    jobs = {k: {**specs[k], "max_steps": 3, "lr": 0.3} for k in ("a", "b")}
    solo = {k: [] for k in jobs}
    for k, s in jobs.items():
        train(s, tmp_path / f"solo-{k}", data_dir=DATA, hooks=TrainHooks(on_progress=solo[k].append))
    model, tok = load_base_model("tiny-bert", "classification", 2)
    pack = Pack(model, tok, data_dir=DATA, base_model="tiny-bert")
    packed = {k: [] for k in jobs}
    for k, s in jobs.items():
        pack.add(s, tmp_path / f"pack-{k}", TrainHooks(on_progress=packed[k].append), key=k)
    pack.run()
    for k in jobs:
        assert [p.step for p in packed[k]] == [1, 2, 3]
        np.testing.assert_allclose([p.grad_norm for p in packed[k]], [p.grad_norm for p in solo[k]],
                                   rtol=1e-5, atol=0)
    assert not np.allclose([p.grad_norm for p in packed["a"]], [p.grad_norm for p in packed["b"]])


@pytest.fixture(scope="module")
def runs(tmp_path_factory, specs):
    """Three solo runs and one packed run of the same three jobs (dropout on everywhere); in the
    pack the STS-B job is stopped after its second step and checkpointed."""
    tmp = tmp_path_factory.mktemp("packed")
    solo = {k: train(specs[k], tmp / f"solo-{k}", data_dir=DATA) for k in "abc"}
    model, tok = load_base_model("tiny-bert", "classification", 2)
    pack = Pack(model, tok, data_dir=DATA, base_model="tiny-bert")
    seen: list[int] = []
    c_hooks = TrainHooks(on_progress=lambda p: seen.append(p.step), should_stop=lambda: len(seen) >= 2,
                         checkpoint_dir=tmp / "ckpt-c")
    for k in "ab":
        pack.add(specs[k], tmp / f"pack-{k}", key=k)
    pack.add(specs["c"], tmp / "pack-c", c_hooks, key="c")
    outcomes = pack.run()
    return {"tmp": tmp, "solo": solo, "packed": outcomes, "pack": pack}


def test_dropout_loss_curves_equal_solo_and_a_stopped_job_disturbs_no_one(runs):
    packed, solo = runs["packed"], runs["solo"]
    assert {k: o.status for k, o in packed.items()} == {"a": "succeeded", "b": "succeeded", "c": "stopped"}
    for name in "ab":
        result = packed[name].result
        np.testing.assert_allclose(result.losses, solo[name].losses, rtol=0, atol=1e-5)
        assert result.metrics == solo[name].metrics
        assert (result.stats.examples, result.stats.tokens) == (solo[name].stats.examples,
                                                                solo[name].stats.tokens)
    assert packed["c"].step == 2
    assert packed["a"].result.metrics["validation"]  # scored on its own validation split
    # The loss curve is not flat: the comparison above is not between two constant sequences.
    assert len(set(np.round(solo["a"].losses, 4))) > 1


def test_packed_checkpoint_resumes_alone_exactly(runs, specs):
    tmp, solo = runs["tmp"], runs["solo"]
    resumed = train(specs["c"], tmp / "resumed-c", data_dir=DATA,
                    hooks=TrainHooks(checkpoint_dir=tmp / "ckpt-c"))
    np.testing.assert_allclose(resumed.losses, solo["c"].losses, rtol=0, atol=1e-5)
    ours, theirs = (load_file(str(r.adapter_dir / "adapter_model.safetensors")) for r in (resumed, solo["c"]))
    assert ours.keys() == theirs.keys()
    for k in ours:
        torch.testing.assert_close(ours[k], theirs[k], rtol=1e-5, atol=1e-6)


def test_a_packed_job_reports_the_phases_of_its_solo_run(specs, tmp_path):
    spec = {**specs["a"], "max_steps": 1}
    solo: list[str] = []
    train(spec, tmp_path / "solo", data_dir=DATA, hooks=TrainHooks(on_phase=solo.append))
    model, tok = load_base_model("tiny-bert", "classification", 2)
    pack = Pack(model, tok, data_dir=DATA, base_model="tiny-bert")
    packed: list[str] = []
    pack.add(spec, tmp_path / "packed", TrainHooks(on_phase=packed.append), key="a")
    assert pack.run()["a"].status == "succeeded"
    assert packed == solo == ["evaluating", "saving"]


def test_a_job_stopped_inside_an_accumulated_step_resumes_alone_exactly(runs, specs, tmp_path):
    # b accumulates 2 micro-batches per step; the stop request comes between the two of step 2:
    # the partial step is dropped and the checkpoint holds the state (its own dropout stream
    # included) from before it, as alone.
    asked = iter(range(100))
    model, tok = load_base_model("tiny-bert", "classification", 2)
    pack = Pack(model, tok, data_dir=DATA, base_model="tiny-bert")
    pack.add(specs["a"], tmp_path / "a", key="a")
    pack.add(specs["b"], tmp_path / "b", TrainHooks(should_stop=lambda: next(asked) >= 2,
                                                     checkpoint_dir=tmp_path / "ckpt"), key="b")
    out = pack.run()
    assert (out["b"].status, out["b"].step) == ("stopped", 1)
    resumed = train(specs["b"], tmp_path / "resumed", data_dir=DATA,
                    hooks=TrainHooks(checkpoint_dir=tmp_path / "ckpt"))
    np.testing.assert_allclose(resumed.losses, runs["solo"]["b"].losses, rtol=0, atol=1e-5)


def test_solo_checkpoint_resumes_into_a_pack_exactly_beside_a_failing_job(runs, specs, tmp_path):
    stop_after = []
    hooks = TrainHooks(on_progress=stop_after.append, should_stop=lambda: len(stop_after) >= 1,
                       checkpoint_dir=tmp_path / "ckpt")
    resumed: list[int] = []
    with pytest.raises(Exception, match="stopped"):
        train(specs["b"], tmp_path / "first", data_dir=DATA, hooks=hooks)
    model, tok = load_base_model("tiny-bert", "classification", 2)
    pack = Pack(model, tok, data_dir=DATA, base_model="tiny-bert")
    pack.add(specs["a"], tmp_path / "a", key="a")
    pack.add(specs["b"], tmp_path / "b",
             TrainHooks(checkpoint_dir=tmp_path / "ckpt", on_resume=lambda step, _: resumed.append(step)),
             key="b")
    assert resumed == [1]  # reported as the recipe reports a resume

    def broken_hook(progress):
        if progress.step == 2:
            raise OSError("the tenant's progress sink is gone")

    pack.add(specs["c"], tmp_path / "c", TrainHooks(on_progress=broken_hook), key="failing")
    pack.add({**specs["c"], "lr": 1.0, "head_lr": 1.0}, tmp_path / "diverging",
             TrainHooks(divergence_factor=2.0, divergence_patience=1), key="diverging")
    out = pack.run()
    assert out["failing"].status == "failed" and out["failing"].step == 2
    assert "progress sink" in str(out["failing"].error)
    assert out["diverging"].status == "failed" and isinstance(out["diverging"].error, TrainingDiverged)
    for k in "ab":  # a job failing in the pack disturbs neither of the others
        np.testing.assert_allclose(out[k].result.losses, runs["solo"][k].losses, rtol=0, atol=1e-5)


def test_a_job_joining_a_running_pack_computes_its_solo_run(runs, specs, tmp_path):
    model, tok = load_base_model("tiny-bert", "classification", 2)
    pack = Pack(model, tok, data_dir=DATA, base_model="tiny-bert")
    pack.add(specs["a"], tmp_path / "a", key="a")
    pack.step(measure=True)  # measuring a round changes nothing in it
    pack.step()
    assert pack.jobs["a"].run.step == 2 and pack.probe.tokens > 0 and pack.probe.saved_bytes > 0
    pack.add(specs["b"], tmp_path / "b", key="b")  # its own seed, data order, optimizer, schedule
    out = pack.run()  # a leaves after two shared rounds; b goes on alone
    for k in "ab":
        np.testing.assert_allclose(out[k].result.losses, runs["solo"][k].losses, rtol=0, atol=1e-5)
        assert out[k].result.metrics == runs["solo"][k].metrics
    assert (out["a"].packed_with, out["b"].packed_with) == ({"b"}, {"a"})


def _peft_logits(adapter_dir: Path, num_labels: int, inputs: dict) -> torch.Tensor:
    """Scores of an adapter folder loaded by PEFT itself onto a fresh base."""
    base, _ = load_base_model("tiny-bert", "classification", num_labels)
    model = PeftModel.from_pretrained(base, adapter_dir).eval()
    with torch.no_grad():
        return model(**inputs).logits


def test_packed_and_solo_adapters_score_identically_in_peft(runs):
    _, tok = load_base_model("tiny-bert", "classification", 2)
    inputs = dict(tok(["a gripping, funny film", "the plot never holds together at all", "fine"],
                      return_tensors="pt", padding=True))
    for name, labels in (("a", 2), ("b", 3)):
        packed = _peft_logits(runs["packed"][name].result.adapter_dir, labels, inputs)
        solo = _peft_logits(runs["solo"][name].adapter_dir, labels, inputs)
        torch.testing.assert_close(packed, solo, rtol=1e-5, atol=1e-5)
        assert packed.shape[-1] == labels


def test_unpackable_jobs_are_refused_and_the_pack_is_untouched(tmp_path, specs):
    cache = BaseModelCache()
    model, tok = cache.checkout("tiny-bert", "classification", 2)
    pack = Pack(model, tok, data_dir=DATA, base_model="tiny-bert", max_tokens=4 * 64 + 8 * 64)
    pack.add({**specs["a"], "max_steps": 1}, tmp_path / "ok", key="ok")
    layers_before = {n for n, _ in model.named_modules()}
    refusals = [
        ({**specs["a"], "method": "full"}, "cannot be packed"),
        ({**specs["a"], "base_model": "tiny-roberta"}, "not this pack's"),
        ({**specs["a"], "targets": ["word_embeddings", "query"]}, "linear layers only"),
        ({**specs["a"], "batch_size": 9}, "token budget is 768 per round"),
        ({**specs["a"], "pooling": "mean"}, "a mean-pooled job cannot join a pack of cls-pooled jobs"),
    ]
    for spec, message in refusals:
        with pytest.raises(LoraConfigError, match=message):
            pack.add(spec, tmp_path / "refused")
        assert {n for n, _ in model.named_modules()} == layers_before
        assert list(pack.jobs) == ["ok"]
    assert pack.run()["ok"].status == "succeeded"
    pack.close()
    assert not lora_modules(model)
    cache.checkin()  # the base fingerprint is unchanged: the cache serves it again, not evicts it
    again, _ = cache.checkout("tiny-bert", "classification", 2)
    assert again is model
    cache.checkin()


def test_generation_pack_matches_solo_with_dropout(tmp_path, specs):
    jobs = {"a": {**specs["gen"], "seed": 7, "dropout": 0.1, "grad_accum": 2},
            "b": {**specs["gen"], "seed": 8, "method": "dora", "dropout": 0.1, "max_steps": 3}}
    solo = {k: train(s, tmp_path / f"solo-{k}", data_dir=DATA, decode=GREEDY, meteor=False)
            for k, s in jobs.items()}
    model, tok = load_base_model("tiny-llama", "generation")
    pack = Pack(model, tok, data_dir=DATA, base_model="tiny-llama", decode=GREEDY, meteor=False)
    for k, s in jobs.items():
        pack.add(s, tmp_path / f"pack-{k}", key=k)
    with pytest.raises(LoraConfigError, match="cannot join a pack of decoder"):
        pack.add({**specs["a"], "base_model": "tiny-llama"}, tmp_path / "refused")
    out = pack.run()
    for k in jobs:
        np.testing.assert_allclose(out[k].result.losses, solo[k].losses, rtol=0, atol=1e-5)
        assert out[k].result.metrics == solo[k].metrics
        assert out[k].result.stats.examples == solo[k].stats.examples


@pytest.mark.parametrize("family", ["encoder", "decoder"])
def test_fused_routing_gives_the_solo_gradients(tmp_path, specs, family):
    """The fused layout (what CUDA runs: one attention call, LoRA updates in two GEMMs per layer)
    still gives each job its solo gradients, beside a DoRA job (which keeps the per-job path)."""
    if family == "encoder":
        jobs = [{**specs[k], "dropout": 0.0} for k in ("a", "c", "stsb")]
        jobs.append({**specs["b"], "dropout": 0.0, "method": "lora"})
        dora = {**specs["b"], "dropout": 0.0, "targets": ["query"]}
        model, tok = load_base_model("tiny-bert", "classification", 2)
    else:
        jobs = [{**specs["gen"], "seed": 4}, {**specs["gen"], "seed": 5, "method": "rslora", "rank": 4}]
        dora = {**specs["gen"], "seed": 6, "method": "dora", "targets": ["q_proj"]}
        model, tok = load_base_model("tiny-llama", "generation")
    jobs.append(dora)
    pack = Pack(model, tok, data_dir=DATA, base_model=jobs[0]["base_model"], fused=True)
    for job, solo in first_packed_step_beside_solo(pack, model, jobs, tmp_path):
        for name, grad in solo.items():
            torch.testing.assert_close(job.run.trainable[name].grad, grad, rtol=1e-5, atol=1e-5, msg=name)


@pytest.mark.parametrize(("fused", "methods"), [(False, ("lora", "rslora", "dora")),
                                                (True, ("lora", "rslora"))])
def test_a_packed_layer_gives_each_jobs_rows_its_adapters_own_output(fused, methods):
    """Rows of each job through `LoRALinear.update` (the one seam): what the adapter computes
    alone on those rows (B ≠ 0, with bias); a job without an adapter there gets the base."""
    torch.manual_seed(0)
    base = torch.nn.Linear(8, 12)
    routing = Routing(fused=fused)
    layer = MultiLoRALinear(base, routing)
    adapters = {}
    for i, method in enumerate(methods):
        adapter = LoRALinear(base, 2 + 2 * i, 8.0, **peft_flags(method))
        with torch.no_grad():
            adapter.lora_B.weight.normal_()
        adapters[method] = adapter
        layer.add(method, adapter)
    keys, rows = [*methods, "no-adapter"], [*(3 + i for i in range(len(methods))), 2]
    routing.set(keys, rows)
    x = torch.randn(sum(rows), 8)
    with torch.no_grad():
        for (seg, part), (_, out) in zip(routing.split(x), routing.split(layer(x)), strict=True):
            adapter = adapters.get(seg.key)
            want = adapter(part) if adapter is not None else base(part)
            assert adapter is None or not torch.allclose(want, base(part), atol=1e-3)
            torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5, msg=seg.key)
