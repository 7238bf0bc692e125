"""The untuned baseline: a seeded head (same seed, same numbers; cold or cached base), the
majority-class rate beside it, generation from the base model's own continuation."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
DATA = Path(os.environ["LORAFLEET_DATA_DIR"])  # set by tests/conftest.py (../shared/data by default)

from lora_engine.cache import BaseModelCache  # noqa: E402
from lora_engine.device import pick_device  # noqa: E402
from lora_engine.errors import LoraConfigError, SpecError  # noqa: E402
from lora_engine.generate import DecodeSettings  # noqa: E402
from lora_engine.spec import validate_spec  # noqa: E402
from lora_engine.untuned import evaluate_untuned  # noqa: E402

CPU = pick_device("cpu")


def _spec(**kw) -> dict:
    return {"method": "none", "base_model": "tiny-bert", "eval_size": 64, "max_length": 48, **kw}


def test_seeded_head_is_deterministic_cold_or_cached() -> None:
    cold = evaluate_untuned(_spec(task="stsb"), data_dir=DATA, device=CPU)
    cache = BaseModelCache()
    warm1 = evaluate_untuned(_spec(task="stsb"), data_dir=DATA, device=CPU, cache=cache)
    warm2 = evaluate_untuned(_spec(task="stsb"), data_dir=DATA, device=CPU, cache=cache)
    assert cache.loads == 1 and cache.hits == 1
    assert cold.metrics == warm1.metrics == warm2.metrics
    assert set(cold.metrics["validation"]) == {"pearson", "spearman"}  # regression: no majority rate
    other = evaluate_untuned(_spec(task="stsb", seed=43), data_dir=DATA, device=CPU, cache=cache)
    assert other.metrics != cold.metrics  # the head is drawn from the seed
    assert cold.stats.examples == 0 and cold.stats.scored == 64 and cold.stats.device_s > 0


def test_classification_reports_the_majority_class_rate_of_the_scored_rows() -> None:
    res = evaluate_untuned(_spec(task="sst2"), data_dir=DATA, device=CPU)
    with open(DATA / "glue" / "sst2" / "validation.jsonl", encoding="utf-8") as f:
        labels = [json.loads(line)["label"] for line in f if line.strip()][:64]
    expected = Counter(labels).most_common(1)[0][1] / 64
    assert res.metrics["validation"]["majority_class_rate"] == pytest.approx(expected)
    assert 0.0 <= res.metrics["validation"]["accuracy"] <= 1.0


def test_generation_scores_the_base_models_own_continuation() -> None:
    spec = {"task": "e2e", "method": "none", "base_model": "tiny-gpt2", "eval_size": 2}
    res = evaluate_untuned(spec, data_dir=DATA, device=CPU, meteor=False,
                           decode=DecodeSettings(num_beams=1, no_repeat_ngram_size=0, max_new_tokens=8))
    assert {"bleu", "rouge_l", "cider"} <= set(res.metrics["validation"])
    assert "majority_class_rate" not in res.metrics["validation"]


def test_method_none_spec() -> None:
    spec = validate_spec({"task": "sst2", "method": "none"}).resolved()
    assert (spec.rank, spec.lr, spec.epochs, spec.base_model) == (0, None, None, "minilm-l6")
    # The stored spec (as the registry keeps it) validates again.
    assert validate_spec(spec.model_dump(exclude_none=True)).resolved() == spec
    with pytest.raises(SpecError) as err:
        validate_spec({"task": "sst2", "method": "none", "rank": 8, "lr": 1e-3, "targets": ["query"]})
    text = str(err.value)
    assert "rank: method 'none' trains nothing" in text and "lr: not used by method 'none'" in text
    assert "targets: not used" in text
    with pytest.raises(LoraConfigError, match="method 'none'"):
        evaluate_untuned({"task": "sst2", "base_model": "tiny-bert"}, data_dir=DATA, device=CPU)
