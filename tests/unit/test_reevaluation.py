"""Re-evaluation on one resident base: the same scores as loading each adapter fresh, one base
load, in-place swaps (re-injection only when the layers differ), heads of every label count."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
DATA = Path(os.environ["LORAFLEET_DATA_DIR"])  # set by tests/conftest.py (../shared/data by default)

from lora_engine.adapters.io import load_adapter, read_adapter_files, swap_adapter  # noqa: E402
from lora_engine.cache import BaseModelCache  # noqa: E402
from lora_engine.data import load_examples  # noqa: E402
from lora_engine.data.batching import encode_classification  # noqa: E402
from lora_engine.device import pick_device  # noqa: E402
from lora_engine.errors import TrainingStopped  # noqa: E402
from lora_engine.evaluate import EvalTarget, predict_logits, score_validation, validation_examples  # noqa: E402
from lora_engine.models import load_base_model  # noqa: E402
from lora_engine.recipe import train  # noqa: E402
from lora_engine.reevaluation import AdapterToScore, reevaluate  # noqa: E402

CPU = pick_device("cpu")
BASE = {"base_model": "tiny-bert", "max_steps": 3, "batch_size": 16, "lr": 2e-2, "eval_size": 48,
        "max_length": 48}
# Two layouts (r=4 q,v for lora/rslora; r=2), three label counts (2, 3, 1) and two alphas.
ADAPTERS = {
    "a-sst2": {"task": "sst2", "rank": 4},
    "b-sst2-alpha": {"task": "sst2", "rank": 4, "alpha": 16.0, "seed": 7},
    "c-mnli": {"task": "mnli", "rank": 4, "method": "rslora"},
    "d-stsb": {"task": "stsb", "rank": 4},
    "e-sst2-r2": {"task": "sst2", "rank": 2},
}


@pytest.fixture(scope="module")
def adapters(tmp_path_factory) -> list[AdapterToScore]:
    root = tmp_path_factory.mktemp("reeval")
    out = []
    for name, spec in ADAPTERS.items():
        res = train({**BASE, **spec}, root / name, data_dir=DATA, device=CPU)
        out.append(AdapterToScore(id=name, folder=res.adapter_dir, task=spec["task"], base_model="tiny-bert"))
    return out


def _fresh_scores(item: AdapterToScore) -> dict:
    """Load the base and the adapter from scratch, as a cold job would, and score it."""
    kind = {"stsb": "regression"}.get(item.task, "classification")
    labels = {"sst2": 2, "mnli": 3}.get(item.task)
    model, tokenizer = load_base_model("tiny-bert", kind, labels)
    load_adapter(model, item.folder)
    target = EvalTarget(task=item.task, max_length=48, eval_size=48)
    return score_validation(model.eval(), tokenizer, target, validation_examples(target, data_dir=DATA),
                            device=CPU)


class _CountingLoader:
    def __init__(self):
        self.calls = 0

    def __call__(self, *args):
        self.calls += 1
        return load_base_model(*args)


def test_swapped_in_scores_equal_fresh_loads_with_one_base_load(adapters) -> None:
    loader = _CountingLoader()
    cache = BaseModelCache(loader)
    progress = []
    res = reevaluate(adapters, data_dir=DATA, cache=cache, device=CPU,
                     on_progress=lambda done, total: progress.append((done, total)))
    assert res.skipped == {}
    assert loader.calls == 1 and res.base_loads == 1
    # Layouts sorted: r=2 first (injected), then r=4 (re-injected once), the rest swapped in place.
    assert (res.injections, res.swaps) == (2, 3)
    assert progress == [(i, 5) for i in range(1, 6)]
    for item in adapters:
        fresh = _fresh_scores(item)["validation"]
        got = res.scores[item.id]["validation"]
        assert set(got) == set(fresh), item.id
        for name, value in fresh.items():
            assert got[name] == pytest.approx(value, abs=1e-5), (item.id, name)
    # The base came back pristine: the next checkout is a hit, not a load.
    cache.checkout("tiny-bert", "classification", 2)
    cache.checkin()
    assert loader.calls == 1 and cache.evictions == 0
    assert res.stats.scored == 5 * 48 and res.stats.examples == 0


def test_swap_in_place_gives_the_fresh_logits(adapters) -> None:
    """Below the metrics: the logits of a swapped-in adapter equal a fresh load's to 1e-5."""
    by_id = {a.id: a for a in adapters}
    first, second = by_id["a-sst2"], by_id["b-sst2-alpha"]
    examples = load_examples("sst2", "validation", data_dir=DATA, limit=32)
    model, tokenizer = load_base_model("tiny-bert", "classification", 2)
    encoded = encode_classification(examples, tokenizer, 48)
    load_adapter(model, first.folder)
    lora_a = [p for n, p in model.named_parameters() if "lora_A" in n]
    assert swap_adapter(model, read_adapter_files(second.folder))
    assert [p for n, p in model.named_parameters() if "lora_A" in n] == lora_a  # the same tensors
    swapped = predict_logits(model.eval(), encoded, device=CPU)
    fresh_model, _ = load_base_model("tiny-bert", "classification", 2)
    load_adapter(fresh_model, second.folder)
    fresh = predict_logits(fresh_model.eval(), encoded, device=CPU)
    np.testing.assert_allclose(swapped, fresh, atol=1e-5)
    base_model, _ = load_base_model("tiny-bert", "classification", 2)
    assert not np.allclose(swapped, predict_logits(base_model.eval(), encoded, device=CPU), atol=1e-3)
    # Another layout is refused untouched: the caller re-injects.
    before = {n: t.clone() for n, t in model.state_dict().items()}
    assert not swap_adapter(model, read_adapter_files(by_id["e-sst2-r2"].folder))
    assert all(torch.equal(before[n], t) for n, t in model.state_dict().items())


def test_an_adapter_that_cannot_be_scored_is_skipped_with_its_reason(adapters, tmp_path) -> None:
    gone = AdapterToScore(id="gone", folder=tmp_path / "nope", task="sst2", base_model="tiny-bert")
    res = reevaluate([gone, adapters[0]], data_dir=DATA, device=CPU)
    assert set(res.scores) == {"a-sst2"}
    assert "does not exist" in res.skipped["gone"]


def test_stop_between_adapters(adapters) -> None:
    with pytest.raises(TrainingStopped):
        reevaluate(adapters[:2], data_dir=DATA, device=CPU, should_stop=lambda: True)


def test_a_mean_pooled_adapter_reevaluates_with_its_own_pooling(adapters, tmp_path) -> None:
    # Scored beside a [CLS] adapter on the same resident base: each with the pooling it trained with.
    res = train({**BASE, "task": "sst2", "rank": 4, "pooling": "mean"}, tmp_path / "mean", data_dir=DATA,
                device=CPU)
    mean = AdapterToScore(id="mean", folder=res.adapter_dir, task="sst2", base_model="tiny-bert")
    cls = adapters[0]
    out = reevaluate([mean, cls], data_dir=DATA, cache=BaseModelCache(), device=CPU)
    assert out.skipped == {}
    for name, value in res.metrics["validation"].items():
        assert out.scores["mean"]["validation"][name] == pytest.approx(value, abs=1e-5), name
    for name, value in _fresh_scores(cls)["validation"].items():
        assert out.scores[cls.id]["validation"][name] == pytest.approx(value, abs=1e-5), name
