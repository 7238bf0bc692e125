"""What the launching process and its ranks say to each other: files in the run's own folder.

    <run>/plan.json        the launcher → every rank: the spec, folders, hook settings
    <run>/events.jsonl     rank 0 → the launcher: progress, checkpoints, resume, evaluations, phases
    <run>/stop             the launcher → rank 0: stop at the next step boundary (a cancel, a pause)
    <run>/result.json      rank 0 → the launcher: the finished run (TrainResult)
    <run>/error-<r>.json   rank r → the launcher: why it raised (rebuilt as the same error type)
    <run>/store            the process group's rendezvous (torch FileStore: no port to pick)

Files, not pipes: a rank is a process of its own (spawned as torchrun spawns them), and a
folder is what survives any of them dying. Every document is JSON (no pickle). The folder is the
launcher's private one (mode 0700) and only its own ranks write there: nothing in it comes from
outside, so it is read with `json` itself, whose NaN a metric may need (safe_json refuses it).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from lora_engine import errors

PLAN, EVENTS, STOP, RESULT, STORE = "plan.json", "events.jsonl", "stop", "result.json", "store"


def error_file(folder: Path, rank: int) -> Path:
    return folder / f"error-{rank}.json"


@dataclass(frozen=True)
class Plan:
    spec: dict[str, Any]
    output_dir: str
    data_dir: str
    checkpoint_dir: str | None
    checkpoint_every: int
    divergence_factor: float | None
    divergence_patience: int
    timeout_s: float  # of every collective: a rank that hangs fails its peers within it

    def write(self, folder: Path) -> None:
        (folder / PLAN).write_text(json.dumps(asdict(self)), encoding="utf-8")

    @classmethod
    def read(cls, folder: Path) -> Plan:
        data = read_json(folder / PLAN)
        return cls(**{f.name: data[f.name] for f in fields(cls)})


def read_json(path: Path) -> Any:
    """A document one of this run's own processes wrote (see the module docstring)."""
    return json.loads(path.read_text(encoding="utf-8"))


def append_event(folder: Path, kind: str, **data: Any) -> None:
    """One event line, written whole and flushed (the launcher reads only complete lines)."""
    with open(folder / EVENTS, "a", encoding="utf-8") as f:
        f.write(json.dumps({"kind": kind, **data}) + "\n")


class EventReader:
    """The events appended since the last read (complete lines only)."""

    def __init__(self, folder: Path):
        self.path, self.offset = folder / EVENTS, 0

    def read(self) -> list[dict[str, Any]]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                chunk = f.read()
        except FileNotFoundError:
            return []
        complete = chunk[: chunk.rfind(b"\n") + 1]
        self.offset += len(complete)
        return [json.loads(line) for line in complete.splitlines() if line.strip()]


# --- errors: a rank's exception, rebuilt in the launcher as the same type ----------------------------

# Built from their message alone; anything else becomes a RuntimeError naming its type.
_BY_MESSAGE: dict[str, type[BaseException]] = {
    cls.__name__: cls for cls in (errors.LoraFleetInputError, errors.LoraConfigError, errors.AdapterError,
                                  ValueError, IndexError, KeyError, TypeError, MemoryError, RuntimeError)
}


def describe_error(exc: BaseException, *, collective: bool) -> dict[str, Any]:
    """What rank writes about the exception it raised. `collective`: a failed collective (a peer
    died or hung), not a problem of the rank's own."""
    return {"type": type(exc).__name__, "message": str(exc), "collective": collective,
            "step": getattr(exc, "step", None), "loss": getattr(exc, "loss", None),
            "why": str(exc).partition("): ")[2] if isinstance(exc, errors.TrainingDiverged) else None,
            "problems": getattr(exc, "problems", None),
            "errno": getattr(exc, "errno", None) if isinstance(exc, OSError) else None}


def rebuild_error(report: dict[str, Any]) -> BaseException:
    """The exception a rank reported, as its type (what the retry policy classifies by)."""
    kind, message = report["type"], report["message"]
    if kind == "TrainingStopped":
        return errors.TrainingStopped(int(report["step"]))
    if kind == "TrainingDiverged":
        return errors.TrainingDiverged(int(report["step"]), float(report["loss"]), report["why"] or message)
    if kind == "SpecError" and isinstance(report.get("problems"), list):
        return errors.SpecError([str(p) for p in report["problems"]])
    if report.get("errno") is not None:
        return OSError(int(report["errno"]), message)
    if kind in _BY_MESSAGE:
        return _BY_MESSAGE[kind](message)
    return RuntimeError(f"{kind}: {message}")
