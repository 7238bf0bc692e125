"""Errors the engine raises. All are ValueErrors: they describe bad input, never a bug.

Messages are bounded whatever the input: an error listing many problems shows the first
`MAX_PROBLEMS_SHOWN` and counts the rest (`listed`), and a bad value is quoted clipped (`shown`),
so a 1,000,000-item batch or a 400-digit number cannot make a megabyte of output.
"""

from __future__ import annotations

import math
import reprlib
from collections.abc import Sequence
from typing import Any

MAX_PROBLEMS_SHOWN = 50
MAX_PROBLEM_CHARS = 1000  # one problem (it may quote a nested error) is clipped to this

_REPR = reprlib.Repr()
_REPR.maxstring, _REPR.maxother, _REPR.maxlevel = 60, 60, 3
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = 8
_MAX_INT_BITS = 128


def shown(value: Any) -> str:
    """`value` quoted for an error message, clipped: long strings and containers are elided in
    the middle, a huge integer is described by its number of digits."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > _MAX_INT_BITS:
        try:
            return f"an integer of {len(str(abs(value)))} digits"
        except ValueError:  # past Python's limit on converting an int to text
            return f"an integer of about {int(value.bit_length() * math.log10(2)) + 1} digits"
    return _REPR.repr(value)


def listed(problems: Sequence[str], bullet: str = "  - ", max_shown: int = MAX_PROBLEMS_SHOWN) -> str:
    """The problems one a line (each clipped to MAX_PROBLEM_CHARS), the first `max_shown` of
    them, then "... and N more": the one rule for every error that lists problems."""
    lines = []
    for problem in problems[:max_shown]:
        if len(problem) > MAX_PROBLEM_CHARS:
            problem = f"{problem[:MAX_PROBLEM_CHARS]}... ({len(problem) - MAX_PROBLEM_CHARS} more characters)"
        lines.append(f"{bullet}{problem}")
    more = len(problems) - max_shown
    if more > 0:
        lines.append(f"{' ' * (len(bullet) - len(bullet.lstrip()))}... and {more} more")
    return "\n".join(lines)


class LoraFleetInputError(ValueError):
    """Bad input: the message says what was wrong and what is allowed."""


class SpecError(LoraFleetInputError):
    """A training spec with one or more problems, all in `problems`; the message lists them
    (bounded, `listed`)."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("invalid training spec:\n" + listed(self.problems))


class LoraConfigError(LoraFleetInputError):
    """LoRA settings that do not fit the model (rank, targets, method)."""


class AdapterError(LoraFleetInputError):
    """An adapter folder that cannot be used: missing, corrupt, or made for another base model."""


class DataValidationError(LoraFleetInputError):
    """A data set with bad rows; `problems` holds (line number, reason) pairs, line 0 for a
    problem of the whole file (empty, too large, too few rows of a label)."""

    def __init__(self, path: str, problems: list[tuple[int, str]]):
        self.path = path
        self.problems = list(problems)
        lines = listed([f"{f'line {n}' if n else 'file'}: {why}" for n, why in self.problems], bullet="  ")
        rows = len({n for n, _ in self.problems if n})
        what = f"{rows} invalid row(s)" if rows else "not usable"
        super().__init__(f"{path}: {what}, nothing was stored or trained:\n{lines}")


class TrainingStopped(Exception):
    """Raised by the training loop when the should-stop hook asked it to stop (cooperative cancel)."""

    def __init__(self, step: int):
        self.step = step
        super().__init__(f"training stopped on request at step {step}")


class RankFailed(RuntimeError):
    """A rank of a multi-device run died (killed, out of host memory, its device lost) or its
    process group broke: the other ranks are stopped and the attempt ends; another attempt
    resumes from the last checkpoint (transient: `orchestrator.retries`)."""


class MissingTool(RuntimeError):
    """A program the run needs is not installed on this machine (e.g. Java for the E2E metrics).

    Deterministic on this worker: another attempt here would fail the same way, so it is not
    retried; the message names the tool and how to install it.
    """

    def __init__(self, tool: str, why: str, install: str):
        self.tool = tool
        super().__init__(f"{tool} is not installed on this worker: {why}; install it ({install})")


class TrainingDiverged(RuntimeError):
    """The training loss became non-finite, or stayed above `factor` × its starting value for
    `patience` steps: the run is unstable (usually the learning rate) and no adapter is written."""

    def __init__(self, step: int, loss: float, why: str):
        self.step, self.loss = step, loss
        super().__init__(f"training diverged at step {step} (loss {loss:.6g}): {why}")
