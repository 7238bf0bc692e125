"""Trivial baselines: the best constant prediction, and the benchmark marking scores at it."""

import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

from lora_engine.baseline import at_baseline, trivial_score, trivial_scores
from orchestrator.reports.benchmark import BenchmarkCell, cell_text

DATA = Path(os.environ["LORAFLEET_DATA_DIR"])


def test_the_best_constant_prediction_metric_by_metric():
    # 3 of 5 evaluated rows are 1: "always 1" scores accuracy 0.6 and F1 2·0.6/(1+0.6) = 0.75;
    # "always 0" would score accuracy 0.4 and F1 0. MCC of any constant is 0.
    assert trivial_scores("mrpc", [0, 0, 0], [1, 1, 1, 0, 0]) == pytest.approx({"accuracy": 0.6, "f1": 0.75})
    # The training majority (0) is not what counts: the evaluated rows' majority (1) is.
    assert trivial_scores("rte", [0, 0, 0, 1], [1, 1, 0]) == pytest.approx({"accuracy": 2 / 3})
    assert trivial_scores("cola", [1], [1, 0, 1]) == {"matthews_corr": 0.0}
    assert trivial_scores("stsb", [], [1.0, 2.0]) == {"pearson": 0.0, "spearman": 0.0}


def test_trivial_score_of_a_task_from_its_files():
    assert trivial_score("sst2", "accuracy", data_dir=DATA) == pytest.approx(368 / 692)  # 368 positives
    assert trivial_score("cola", "matthews_corr", data_dir="/nonexistent") == 0.0  # no file needed
    assert trivial_score("sst2", "accuracy", data_dir="/nonexistent") is None
    assert trivial_score("e2e", "bleu", data_dir=DATA) is None


def test_the_benchmark_marks_a_score_at_the_trivial_baseline():
    def cell(value, trivial):
        return BenchmarkCell(tenant="t", task="rte", metric="accuracy", value=value, adapter_id="a",
                             job_id="j", method="lora", rank=8, base_model="minilm-l6",
                             created_at=datetime.now(UTC), candidates=1, trivial=trivial)

    assert at_baseline(0.55, 0.534) and not at_baseline(0.56, 0.534)
    assert cell_text(cell(0.5461, 0.5341)) == "54.6 [1] = trivial"
    assert cell_text(cell(0.6104, 0.5341)) == "61.0 [1]"
    assert cell_text(cell(0.6104, None)) == "61.0 [1]"  # unknown baseline: no claim either way
    assert cell(0.5, 0.5341).to_dict()["at_trivial"] is True
