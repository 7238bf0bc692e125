"""The retry policy: which failures end a job, which earn another attempt, and the back-off."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, ValidationError

from lora_engine.errors import AdapterError, DataValidationError, LoraConfigError, SpecError, TrainingStopped
from orchestrator.services.errors import LeaseLost
from worker.policy import Outcome, classify, describe, retry_delay


class _Strict(BaseModel):
    rank: int


def _validation_error() -> ValidationError:
    with pytest.raises(ValidationError) as info:
        _Strict.model_validate({"rank": "eight"})
    return info.value


@pytest.mark.parametrize(
    ("exc", "outcome"),
    [
        (TrainingStopped(7), Outcome.CANCELLED),
        (LeaseLost("taken back"), Outcome.LOST),
        (SpecError(["rank: must be > 0"]), Outcome.FAILED),
        (DataValidationError("data.jsonl", [(2, "missing 'label'")]), Outcome.FAILED),
        (LoraConfigError("no target matched"), Outcome.FAILED),
        (AdapterError("corrupt"), Outcome.FAILED),
        (_validation_error(), Outcome.FAILED),
        (RuntimeError("CUDA out of memory"), Outcome.REQUEUED),
        (OSError("No space left on device"), Outcome.REQUEUED),
        (KeyError("bug"), Outcome.REQUEUED),
    ],
)
def test_classify(exc: BaseException, outcome: Outcome):
    assert classify(exc) is outcome


@pytest.mark.parametrize(
    ("attempt", "delay"), [(1, 5.0), (2, 10.0), (3, 20.0), (6, 160.0), (7, 300.0), (50, 300.0)]
)
def test_retry_delay_doubles_up_to_the_cap(attempt: int, delay: float):
    assert retry_delay(attempt) == delay


def test_retry_delay_rejects_attempt_zero():
    with pytest.raises(ValueError, match="1-based"):
        retry_delay(0)


def test_describe_keeps_type_and_every_line():
    reason = describe(DataValidationError("d.jsonl", [(2, "missing 'label'"), (5, "not JSON")]))
    assert reason.startswith("DataValidationError: d.jsonl: 2 invalid row(s)")
    assert "line 2: missing 'label'" in reason and "line 5: not JSON" in reason
