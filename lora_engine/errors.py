"""Errors the engine raises. All are ValueErrors: they describe bad input, never a bug."""


class LoraFleetInputError(ValueError):
    """Bad input: the message says what was wrong and what is allowed."""


class SpecError(LoraFleetInputError):
    """A training spec with one or more problems, all listed in one message."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("invalid training spec:\n" + "\n".join(f"  - {p}" for p in self.problems))


class LoraConfigError(LoraFleetInputError):
    """LoRA settings that do not fit the model (rank, targets, method)."""


class AdapterError(LoraFleetInputError):
    """An adapter folder that cannot be used: missing, corrupt, or made for another base model."""


class DataValidationError(LoraFleetInputError):
    """A data set with bad rows; `problems` holds (line number, reason) pairs, line 0 for a
    problem of the whole file (empty, too large, too few rows of a label)."""

    def __init__(self, path: str, problems: list[tuple[int, str]], max_shown: int = 50):
        self.path = path
        self.problems = list(problems)
        shown = "\n".join(f"  {f'line {n}' if n else 'file'}: {why}" for n, why in self.problems[:max_shown])
        more = len(self.problems) - max_shown
        tail = f"\n  ... and {more} more" if more > 0 else ""
        rows = len({n for n, _ in self.problems if n})
        what = f"{rows} invalid row(s)" if rows else "not usable"
        super().__init__(f"{path}: {what}, nothing was stored or trained:\n{shown}{tail}")


class TrainingStopped(Exception):
    """Raised by the training loop when the should-stop hook asked it to stop (cooperative cancel)."""

    def __init__(self, step: int):
        self.step = step
        super().__init__(f"training stopped on request at step {step}")


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
