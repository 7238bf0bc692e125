"""The executor of each job kind: `jobs.kind` → the function that does the job's work.

Every kind runs inside the same lifecycle (`worker.attempt`: claim, heartbeat, cancel, publish,
record, retry); only the work differs. Register a new kind by adding it here.
"""

from __future__ import annotations

from lora_engine.errors import LoraFleetInputError
from worker.evaluation import run_reevaluation, run_untuned_evaluation
from worker.executor import Executor
from worker.merging import run_merge
from worker.train import run_training

EXECUTORS: dict[str, Executor] = {
    "train": run_training,
    "evaluate": run_untuned_evaluation,
    "reevaluate": run_reevaluation,
    "merge": run_merge,
}


class UnknownJobKind(LoraFleetInputError):
    """A job of a kind this worker cannot run (permanent: another attempt would not help)."""


def executor_for(kind: str) -> Executor:
    try:
        return EXECUTORS[kind]
    except KeyError:
        raise UnknownJobKind(
            f"job kind {kind!r} has no executor on this worker; known: {', '.join(sorted(EXECUTORS))}"
        ) from None
