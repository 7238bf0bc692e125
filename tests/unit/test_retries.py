"""The retry policy: which failures end a job, which earn another attempt, and the back-off.

Where it is cheap, each row's exception is produced by the real code that raises it in a job
(numpy refusing a negative seed, torch's loss refusing an out-of-range label, torch refusing a
pickle, the E2E metrics without Java, a write to a full device, a registry or broker that is
down), so the table follows what those libraries really raise.
"""

from __future__ import annotations

import io
import pickle
import random

import numpy as np
import pytest
import torch
from pydantic import BaseModel

from lora_engine.errors import (
    AdapterError,
    DataValidationError,
    LoraConfigError,
    SpecError,
    TrainingDiverged,
    TrainingStopped,
)
from orchestrator.errors import LeaseLost, WorkerEnvironmentError
from orchestrator.retries import (
    Abort,
    Outcome,
    backoff,
    classify,
    decide,
    describe,
    has_attempts_left,
    redispatch_wait,
    released_budget,
    retried_budget,
)


def _raised(fn) -> BaseException:
    try:
        fn()
    except BaseException as exc:
        return exc
    raise AssertionError(f"{fn} raised nothing")


class _Strict(BaseModel):
    rank: int


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def _negative_seed():
    np.random.seed(-1)


def _label_out_of_range():
    torch.nn.functional.cross_entropy(torch.zeros(2, 3), torch.tensor([0, 5]))


def _refused_pickle():
    buf = io.BytesIO()
    pickle.dump(_Evil(), buf)
    buf.seek(0)
    torch.load(buf, weights_only=True)


def _no_java(monkeypatch_path: str = ""):
    import os

    from lora_engine.metrics import _run_java

    saved = os.environ.get("PATH", "")
    os.environ["PATH"] = monkeypatch_path
    try:
        _run_java(["java", "-version"], b"")
    finally:
        os.environ["PATH"] = saved


def _disk_full():
    with open("/dev/full", "wb") as f:
        f.write(b"x" * 1024)
        f.flush()


def _registry_down():
    from sqlalchemy import create_engine, text

    url = "postgresql+psycopg://postgres@127.0.0.1:1/nothing"
    engine = create_engine(url, connect_args={"connect_timeout": 2})
    with engine.connect() as conn:
        conn.execute(text("select 1"))


def _broker_down():
    import redis

    redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=1).ping()


@pytest.mark.parametrize(
    ("make", "outcome"),
    [
        (lambda: TrainingStopped(7), Outcome.CANCELLED),
        (lambda: LeaseLost("taken back"), Outcome.LOST),
        # the worker's own environment: not the job's fault
        (lambda: WorkerEnvironmentError(["data folder /srv/data is missing (LORAFLEET_DATA_DIR)"]),
         Outcome.WORKER_FAULT),
        # bad input and deterministic failures: one attempt, the reason shown
        (lambda: SpecError(["rank: must be > 0"]), Outcome.FAILED),
        (lambda: DataValidationError("data.jsonl", [(2, "missing 'label'")]), Outcome.FAILED),
        (lambda: LoraConfigError("no target matched"), Outcome.FAILED),
        (lambda: AdapterError("corrupt"), Outcome.FAILED),
        (lambda: _raised(lambda: _Strict.model_validate({"rank": "eight"})), Outcome.FAILED),
        (lambda: _raised(_negative_seed), Outcome.FAILED),
        (lambda: _raised(_label_out_of_range), Outcome.FAILED),
        (lambda: _raised(_refused_pickle), Outcome.FAILED),
        (lambda: _raised(_no_java), Outcome.FAILED),
        (lambda: TrainingDiverged(12, float("nan"), "the loss is not finite"), Outcome.FAILED),
        (lambda: RuntimeError("CUDA error: device-side assert triggered"), Outcome.FAILED),
        (lambda: KeyError("a bug"), Outcome.FAILED),
        # storage full or read-only: fails with that reason (an operator must act)
        (lambda: _raised(_disk_full), Outcome.FAILED),
        (lambda: OSError(30, "Read-only file system"), Outcome.FAILED),
        # infrastructure: retried
        (lambda: _raised(_registry_down), Outcome.REQUEUED),
        (lambda: _raised(_broker_down), Outcome.REQUEUED),
        (lambda: ConnectionResetError(104, "Connection reset by peer"), Outcome.REQUEUED),
        (lambda: torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"),
         Outcome.REQUEUED),
        (lambda: RuntimeError("NCCL error: unhandled system error"), Outcome.REQUEUED),
        (lambda: FileNotFoundError(2, "No such file", "/shared/data/sst2/train.jsonl"), Outcome.REQUEUED),
    ],
)
def test_classify(make, outcome: Outcome):
    exc = make()
    assert classify(exc) is outcome, describe(exc)


def test_a_stop_during_shutdown_is_a_release_unless_cancelled():
    stop = TrainingStopped(3)
    assert classify(stop, abort=Abort.SHUTDOWN) is Outcome.RELEASED
    assert classify(stop, abort=Abort.CANCEL) is Outcome.CANCELLED
    assert classify(stop, abort=None) is Outcome.CANCELLED
    assert classify(stop, abort=Abort.PAUSE) is Outcome.RELEASED


@pytest.mark.parametrize(
    ("make", "abort", "outcome", "retry_in", "costs"),
    [
        (lambda: TrainingStopped(3), Abort.CANCEL, Outcome.CANCELLED, None, True),
        (lambda: TrainingStopped(3), Abort.SHUTDOWN, Outcome.RELEASED, 0.0, False),
        (lambda: TrainingStopped(3), Abort.PAUSE, Outcome.RELEASED, 0.0, False),
        (lambda: ValueError("seed must be >= 0"), None, Outcome.FAILED, None, True),
        (lambda: LeaseLost("job j is no longer w1's"), None, Outcome.LOST, None, True),
    ],
)
def test_decide_says_again_when_and_whether_it_costs(make, abort, outcome, retry_in, costs):
    decision = decide(make(), 2, abort=abort)
    assert (decision.outcome, decision.retry_in, decision.costs_attempt) == (outcome, retry_in, costs)


@pytest.mark.parametrize(("attempt", "delay"), [(1, 5.0), (3, 20.0), (50, 300.0)])
def test_decide_jitters_the_backoff_within_its_half(attempt: int, delay: float):
    rng = random.Random(7)
    waits = [decide(ConnectionResetError(104, "reset"), attempt, rng=rng) for _ in range(200)]
    assert all(d.outcome is Outcome.REQUEUED and d.costs_attempt for d in waits)
    retry_in = [d.retry_in for d in waits]
    assert all(delay / 2 <= r <= delay for r in retry_in)
    assert len(set(retry_in)) > 100  # spread, not one value
    assert decide(ConnectionResetError(104, "reset"), attempt, rng=random.Random(7)).retry_in == retry_in[0]


def test_decide_holds_a_failure_against_a_broken_worker():
    cause = ValueError("seed must be >= 0")
    decision = decide(cause, 1, worker_faults=lambda: ["data folder /nope is missing (LORAFLEET_DATA_DIR)"])
    assert (decision.outcome, decision.retry_in, decision.costs_attempt) == (Outcome.WORKER_FAULT, 0.0, False)
    assert isinstance(decision.error, WorkerEnvironmentError) and decision.error.__cause__ is cause
    asked = []
    decide(TrainingStopped(1), 1, abort=Abort.CANCEL, worker_faults=lambda: asked.append(1) or ["x"])
    assert not asked  # a cancel is never the worker's fault: its environment is not probed


def test_missing_java_is_named():
    reason = describe(_raised(_no_java))
    assert reason.startswith("MissingTool: java is not installed on this worker")
    assert "apt-get install default-jre-headless" in reason


def test_a_full_disk_is_named_in_the_reason():
    reason = describe(_raised(_disk_full))
    assert reason.startswith("artifacts storage full or read-only: OSError: [Errno 28]")


@pytest.mark.parametrize(
    ("attempt", "delay"), [(1, 5.0), (2, 10.0), (3, 20.0), (6, 160.0), (7, 300.0), (50, 300.0)]
)
def test_backoff_doubles_up_to_the_cap(attempt: int, delay: float):
    assert backoff(attempt) == delay


def test_backoff_rejects_attempt_zero():
    with pytest.raises(ValueError, match="1-based"):
        backoff(0)


@pytest.mark.parametrize(("count", "wait"), [(0, 60.0), (1, 120.0), (3, 480.0), (6, 3840.0), (9, 3840.0)])
def test_redispatch_waits_double_up_to_six_times(count: int, wait: float):
    assert redispatch_wait(count, 60.0) == wait


def test_attempt_budget():
    assert has_attempts_left(2, 3) and not has_attempts_left(3, 3)
    assert released_budget(3) == 4  # a release gives its attempt back
    assert retried_budget(3, 3) == 6  # a retry: three more on top of the three made
    with pytest.raises(ValueError, match="at least one"):
        retried_budget(3, 0)


def test_describe_keeps_type_and_every_line():
    reason = describe(DataValidationError("d.jsonl", [(2, "missing 'label'"), (5, "not JSON")]))
    assert reason.startswith("DataValidationError: d.jsonl: 2 invalid row(s)")
    assert "line 2: missing 'label'" in reason and "line 5: not JSON" in reason
