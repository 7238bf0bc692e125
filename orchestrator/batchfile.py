"""Reading a `job submit-batch` file: JSONL (one item a line), a JSON list, or a YAML list.

The file is a tenant-supplied document, so it is parsed defensively: a size cap, YAML without
aliases (a 452-byte "billion laughs" of nested aliases expands to gigabytes; refusing aliases
outright costs real batch files nothing), JSON without NaN/Infinity. Error messages name the
line and the reason, never the file's content.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lora_engine.errors import LoraFleetInputError
from orchestrator.refs import spelled_as_id

if TYPE_CHECKING:
    from orchestrator.config import Settings

SUFFIXES = ".jsonl, .json, .yaml, .yml"


class BatchFileError(LoraFleetInputError):
    """A batch file that cannot be read as a list of items."""


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows; numbers must be finite")


def _json(text: str, where: str) -> Any:
    try:
        return json.loads(text, parse_constant=_no_constants)
    except json.JSONDecodeError as exc:
        at = f"line {exc.lineno} column {exc.colno}"
        raise BatchFileError(f"{where} is not JSON: {exc.msg} at {at}") from None
    except ValueError as exc:
        raise BatchFileError(f"{where}: {exc}") from None


def _yaml(text: str, path: Path) -> Any:
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        for event in yaml.parse(text, Loader=loader):
            if isinstance(event, yaml.AliasEvent):
                line = event.start_mark.line + 1 if event.start_mark else 0
                raise BatchFileError(
                    f"{path}: line {line}: YAML aliases (*name) are not allowed in batch files; "
                    "write each item out in full"
                )
        return yaml.load(text, Loader=loader)  # a safe loader; aliases refused above
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1} column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or "not valid YAML"
        raise BatchFileError(f"{path}: {where}{problem}") from None


def load_batch_file(path: Path, settings: Settings | None = None) -> list[Any]:
    """The items of a batch file; a relative `dataset` path is made relative to the file's
    folder (not to the current directory). The file is read through the one path resolver
    (`orchestrator.paths`: inside a data root, a regular file, at most `max_batch_file_bytes`).
    BatchFileError when unreadable, PathRefused when refused."""
    from orchestrator import paths
    from orchestrator.config import get_settings

    settings = settings or get_settings()
    resolved, content = paths.read_file(path, settings, "batch file", cap=settings.max_batch_file_bytes,
                                        cap_var="LORAFLEET_MAX_BATCH_FILE_BYTES")
    path = Path(path)
    try:
        text = content.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        raise BatchFileError(f"{path}: not valid UTF-8 (byte offset {exc.start}); save it as UTF-8") from None
    suffix = path.suffix.lower()
    if suffix in (".yaml", ".yml"):
        items = _yaml(text, path)
    elif suffix == ".json":
        items = _json(text, str(path))
    elif suffix in (".jsonl", ".ndjson", ""):
        lines = enumerate(text.splitlines(), 1)
        items = [_json(line, f"{path}: line {n}") for n, line in lines if line.strip()]
    else:
        raise BatchFileError(f"{path}: unknown batch file type {suffix!r}; allowed: {SUFFIXES}")
    if not isinstance(items, list):
        raise BatchFileError(f"{path}: expected a list of job items, got {type(items).__name__}")
    for item in items:
        spec = item.get("spec") if isinstance(item, dict) and isinstance(item.get("spec"), dict) else item
        if isinstance(spec, dict):
            value = spec.get("dataset")
            if isinstance(value, str) and value and not spelled_as_id(value):
                spec["dataset"] = str(resolved.parent / value)  # confined again when submitted
    return items
