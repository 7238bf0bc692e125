"""The executor registry: a job's kind picks its executor; an unknown kind is a permanent error."""

from __future__ import annotations

import pytest

from orchestrator.retries import Outcome, classify
from worker.evaluation import NothingScored, run_reevaluation, run_untuned_evaluation
from worker.kinds import EXECUTORS, UnknownJobKind, executor_for
from worker.train import run_training


def test_train_is_the_training_executor():
    assert executor_for("train") is run_training
    assert set(EXECUTORS) >= {"train"}


def test_every_job_kind_of_the_registry_has_its_executor():
    from orchestrator.registry.models import JOB_KINDS

    assert set(EXECUTORS) == set(JOB_KINDS)
    assert executor_for("evaluate") is run_untuned_evaluation
    assert executor_for("reevaluate") is run_reevaluation
    assert classify(NothingScored("none of the 2 adapters could be re-evaluated")) is Outcome.FAILED


def test_unknown_kind_names_the_known_ones_and_is_not_retried():
    with pytest.raises(UnknownJobKind, match=r"'bake' has no executor.*train") as info:
        executor_for("bake")
    assert classify(info.value) is Outcome.FAILED
