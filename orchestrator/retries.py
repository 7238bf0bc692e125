"""The retry and dispatch policy, in one place: which failures end a job, which earn another
attempt, how long to wait, and when a waiting job's message is sent again.

Business code raises typed errors and never decides how to retry (the model: dramatiq's
`middleware/retries.py`, whose `retry_when` + `compute_backoff` are `is_transient` + `backoff`
here, the decision one call as procrastinate's `get_retry_decision`). The attempt asks `decide`
once: again? when? does it cost the attempt? The services ask `has_attempts_left` and
`redispatch_wait`.

| raised                                        | outcome   | why                                        |
|-----------------------------------------------|-----------|--------------------------------------------|
| TrainingStopped, abort reason CANCEL (or none)| cancelled | the cooperative cancel asked for it        |
| TrainingStopped, abort reason SHUTDOWN or     | released  | checkpointed; back to the queue at once,   |
|   PAUSE                                       |           |   the attempt is not counted against it    |
| LeaseLost                                     | lost      | someone else owns the job: write nothing   |
| WorkerEnvironmentError: the attempt failed    | worker    | not the job's fault: back to the queue at  |
|   and the worker found a path of its own      |  fault    |   once with the attempt given back, for a  |
|   configuration missing or unreadable (its    |           |   healthy worker; the worker counts it,    |
|   working folder, data folder, model cache,   |           |   `unhealthy_after` in a row and it stops  |
|   artifacts root); what the job names is the  |           |   claiming (`unhealthy` in the status)     |
|   job's own                                   |           |                                            |
| infrastructure: OSError (connection, I/O on   | requeued  | may pass: another attempt after a back-off |
|   a shared volume), registry or broker        |           |   resumes from the last checkpoint, until  |
|   connection errors, device out of memory,    |           |   the attempts run out                     |
|   a lost device (CUDA/NCCL errors), a rank of |           |                                            |
|   a multi-device job that died (RankFailed)   |           |                                            |
| storage full or read-only (ENOSPC, EDQUOT,    | failed    | needs an operator; the reason says so      |
|   EROFS, EACCES, EPERM, EFBIG)                |           |                                            |
| anything else: bad input (LoraFleetInputError,| failed    | deterministic: the same code on the same   |
|   pydantic ValidationError), MissingTool,     |           |   input fails the same way, so a retry     |
|   TrainingDiverged, ValueError (a negative    |           |   only burns device time and hides the     |
|   seed), IndexError (a label out of range),   |           |   reason                                   |
|   UnpicklingError, a bug                      |           |                                            |

Budget: a claim counts one attempt; a job fails once `attempts` reaches `max_attempts`. A
release (graceful shutdown) raises `max_attempts` by one, so a deploy costs no attempt; a worker
fault gives the claim's attempt back (`attempts` as before the claim, and no usage row: a tenant
does not pay for a broken worker); an operator's `job retry` grants a fresh budget on top of the
attempts already made: attempts keep counting up, so each attempt's usage row stays unique.

Back-off: a requeued job is re-sent after `backoff(attempt)` = `base * 2**(attempt-1)` capped
(attempt 1 → 5 s, 2 → 10 s, 3 → 20 s …), jittered by `decide` into [backoff/2, backoff] (dramatiq's
`compute_backoff(jitter=True)`), so the jobs one outage failed together do not return together;
released and handed-back jobs are re-sent at once. A queued job whose message may be lost is re-sent by the
reconciler once `redispatch_after * 2**min(dispatch_count, 6)` passed since its last message.
"""

from __future__ import annotations

import errno
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum

BACKOFF_BASE_S = 5.0
BACKOFF_CAP_S = 300.0
MAX_REDISPATCH_DOUBLINGS = 6

# A full or read-only volume does not heal in a back-off's seconds: fail and say why.
STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG})
_STORAGE_TEXT = ("No space left on device", "Disk quota exceeded", "Read-only file system",
                 "Permission denied", "File too large", "StorageFull", "ReadOnlyFilesystem")
# RuntimeError texts of a device that failed (not of a bad input): worth another attempt.
_DEVICE_TEXT = ("CUDA out of memory", "CUDA error", "NCCL", "cuDNN error", "CUBLAS_STATUS", "out of memory",
                "device lost", "HIP error")
# ...except a device-side assert: a kernel rejected the input (e.g. a label out of range).
_DETERMINISTIC_DEVICE_TEXT = ("device-side assert",)


class Outcome(StrEnum):
    CANCELLED = "cancelled"
    LOST = "lost"
    FAILED = "failed"
    REQUEUED = "requeued"
    RELEASED = "released"
    WORKER_FAULT = "worker_fault"


class Abort(StrEnum):
    """Why a running job was asked to stop (what a TrainingStopped means)."""

    CANCEL = "cancel"  # its user (or an operator) cancelled it
    SHUTDOWN = "shutdown"  # its worker is stopping
    PAUSE = "pause"  # set aside to resume later, not the job's doing


@dataclass(frozen=True)
class Decision:
    """What to do with an attempt that did not succeed (`decide`)."""

    outcome: Outcome
    retry_in: float | None  # seconds before the job's message is sent again; None: it is not
    costs_attempt: bool  # whether the attempt counts against the job's budget
    error: BaseException  # the error the outcome is for (a worker fault wraps the job's own)


def _infrastructure_errors() -> tuple[type[BaseException], ...]:
    """Connection-level errors of the registry and the broker (imported only when classifying)."""
    found: list[type[BaseException]] = [ConnectionError, TimeoutError, MemoryError]
    try:
        from sqlalchemy import exc as sa

        found += [sa.OperationalError, sa.InterfaceError, sa.DisconnectionError, sa.TimeoutError]
    except ImportError:  # pragma: no cover - sqlalchemy is a dependency
        pass
    try:
        from redis import exceptions as rx

        found += [rx.ConnectionError, rx.TimeoutError]
    except ImportError:  # pragma: no cover
        pass
    try:
        from kombu.exceptions import OperationalError

        found.append(OperationalError)
    except ImportError:  # pragma: no cover
        pass
    return tuple(found)


def storage_fault(exc: BaseException) -> bool:
    """A write refused because the volume is full or read-only (or a file size limit)."""
    if isinstance(exc, OSError) and exc.errno in STORAGE_ERRNOS:
        return True
    # safetensors reports I/O errors as its own error type, with the OS error in the text.
    return type(exc).__name__ == "SafetensorError" and any(t in str(exc) for t in _STORAGE_TEXT)


def is_transient(exc: BaseException) -> bool:
    """An infrastructure fault that another attempt may not meet (see the table above)."""
    if storage_fault(exc):
        return False
    if isinstance(exc, _infrastructure_errors()):
        return True
    from lora_engine.errors import RankFailed

    if isinstance(exc, RankFailed):
        return True
    if isinstance(exc, RuntimeError):
        text = str(exc)
        if any(t in text for t in _DETERMINISTIC_DEVICE_TEXT):
            return False
        return type(exc).__name__ == "OutOfMemoryError" or any(t in text for t in _DEVICE_TEXT)
    # Any other OSError: a dropped connection, a flaky shared volume, a file not yet visible.
    return isinstance(exc, OSError)


def classify(exc: BaseException, *, abort: Abort | None = None) -> Outcome:
    """What to do with a job whose work raised `exc` (see the table above).

    `abort`: why the job was asked to stop, if it was (a stop for a shutdown or a pause is a
    release; a cancel, or a stop with no reason, ends the job).
    """
    from lora_engine.errors import TrainingStopped
    from orchestrator.errors import LeaseLost, WorkerEnvironmentError

    if isinstance(exc, TrainingStopped):
        return Outcome.RELEASED if abort in (Abort.SHUTDOWN, Abort.PAUSE) else Outcome.CANCELLED
    if isinstance(exc, LeaseLost):
        return Outcome.LOST
    if isinstance(exc, WorkerEnvironmentError):
        return Outcome.WORKER_FAULT
    return Outcome.REQUEUED if is_transient(exc) else Outcome.FAILED


def decide(
    exc: BaseException,
    attempt: int,
    *,
    abort: Abort | None = None,
    worker_faults: Callable[[], Sequence[str]] = tuple,
    rng: random.Random | None = None,
) -> Decision:
    """The one retry decision for attempt `attempt` (1-based) that raised `exc`.

    `worker_faults`: asked only for a failure that would fail or requeue the job, it names what
    of the worker's own environment is broken; any, and the failure is the worker's (a
    WorkerEnvironmentError caused by `exc`). `rng`: the jitter's source (tests seed it).
    """
    from orchestrator.errors import WorkerEnvironmentError

    outcome = classify(exc, abort=abort)
    if outcome in (Outcome.FAILED, Outcome.REQUEUED):
        faults = list(worker_faults())
        if faults:
            fault = WorkerEnvironmentError(faults)
            fault.__cause__ = exc
            exc, outcome = fault, Outcome.WORKER_FAULT
    if outcome is Outcome.REQUEUED:
        return Decision(outcome, jittered(backoff(attempt), rng), True, exc)
    if outcome in (Outcome.RELEASED, Outcome.WORKER_FAULT):
        return Decision(outcome, 0.0, False, exc)
    return Decision(outcome, None, True, exc)


def jittered(delay: float, rng: random.Random | None = None) -> float:
    """`delay` spread uniformly over [delay/2, delay] ("equal jitter")."""
    half = delay / 2
    return half + (rng or random).uniform(0.0, half)


def describe(exc: BaseException) -> str:
    """The reason recorded in the job's events: the error's type and message, on one line each."""
    message = str(exc).strip() or repr(exc)
    prefix = "artifacts storage full or read-only: " if storage_fault(exc) else ""
    return f"{prefix}{type(exc).__name__}: {message}"


def backoff(attempt: int, *, base: float = BACKOFF_BASE_S, cap: float = BACKOFF_CAP_S) -> float:
    """Seconds before re-sending a job whose attempt number `attempt` (1-based) failed transiently."""
    if not isinstance(attempt, int) or attempt < 1:
        raise ValueError(f"attempt is 1-based (got {attempt})")
    return min(cap, base * 2 ** (attempt - 1))


def has_attempts_left(attempts: int, max_attempts: int) -> bool:
    """Whether a job that made `attempts` claims may be claimed again."""
    return attempts < max_attempts


def released_budget(max_attempts: int) -> int:
    """The budget after a release: the attempt the shutdown interrupted is given back."""
    return max_attempts + 1


def retried_budget(attempts: int, extra: int) -> int:
    """An operator's retry: `extra` more attempts on top of those already made."""
    if not isinstance(extra, int) or extra < 1:
        raise ValueError(f"a retry grants at least one attempt (got {extra!r})")
    return attempts + extra


def redispatch_wait(dispatch_count: int, redispatch_after_s: float) -> float:
    """Seconds a queued job waits after its last message before the reconciler sends another."""
    return redispatch_after_s * 2 ** min(max(dispatch_count, 0), MAX_REDISPATCH_DOUBLINGS)
