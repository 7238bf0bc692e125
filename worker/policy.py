"""The retry policy, in one place: which failures end a job and which earn another attempt.

Business code raises typed errors and never decides how to retry:

| raised                                   | outcome    | why                                           |
|------------------------------------------|------------|-----------------------------------------------|
| TrainingStopped, cancel requested        | cancelled  | the cooperative cancel asked for it           |
| TrainingStopped, worker shutting down    | requeued   | the job checkpointed; another worker resumes  |
| LeaseLost                                | lost       | someone else owns the job now: write nothing  |
| LoraFleetInputError (SpecError,          | failed     | bad input fails the same way every time:      |
|   DataValidationError, LoraConfigError,  |            |   retrying costs device time and hides the    |
|   AdapterError), pydantic ValidationError|            |   reason                                      |
| anything else (OOM, I/O, a lost device…) | requeued   | transient until attempts run out; a retry     |
|                                          |            |   resumes from the last checkpoint            |

A requeued job is re-sent after an exponential back-off, `base * 2**(attempt-1)` capped at `cap`:
attempt 1 → 5 s, 2 → 10 s, 3 → 20 s …, so a flapping device is not hammered.
"""

from __future__ import annotations

from enum import StrEnum


class Outcome(StrEnum):
    CANCELLED = "cancelled"
    LOST = "lost"
    FAILED = "failed"
    REQUEUED = "requeued"


def classify(exc: BaseException, *, cancel_requested: bool = True) -> Outcome:
    """What to do with a job whose training raised `exc` (see the table above).

    `cancel_requested`: whether the stop was the job's cancel (else the worker is shutting down).
    """
    from pydantic import ValidationError

    from lora_engine.errors import LoraFleetInputError, TrainingStopped
    from orchestrator.services.errors import LeaseLost

    if isinstance(exc, TrainingStopped):
        return Outcome.CANCELLED if cancel_requested else Outcome.REQUEUED
    if isinstance(exc, LeaseLost):
        return Outcome.LOST
    if isinstance(exc, LoraFleetInputError | ValidationError):
        return Outcome.FAILED
    return Outcome.REQUEUED


def retry_delay(attempt: int, *, base: float = 5.0, cap: float = 300.0) -> float:
    """Seconds before re-sending a job whose attempt number `attempt` (1-based) failed transiently."""
    if not isinstance(attempt, int) or attempt < 1:
        raise ValueError(f"attempt is 1-based (got {attempt})")
    return min(cap, base * 2 ** (attempt - 1))


def describe(exc: BaseException) -> str:
    """The reason recorded in the job's events: the error's type and message, on one line each."""
    message = str(exc).strip() or repr(exc)
    return f"{type(exc).__name__}: {message}"
