"""GLUE rows -> `ClassificationExample`s.

Local files: ``<data_dir>/glue/<task>/<split>.jsonl`` with the Hugging Face `glue` field names
(the catalog's `text_fields`) and integer labels (a float similarity 0-5 for stsb); the hub
fallback returns rows of the same shape, so both go through `rows_to_examples`.
"""

from __future__ import annotations

from pathlib import Path

from lora_engine.catalog import GLUE_TASKS, TASKS
from lora_engine.data.examples import ClassificationExample
from lora_engine.data.hub import load_from_hub
from lora_engine.errors import LoraFleetInputError
from lora_engine.safe_json import DocumentError, loads


def glue_path(data_dir: str | Path, task: str, split: str) -> Path:
    return Path(data_dir) / "glue" / task / f"{split}.jsonl"


def read_glue_rows(data_dir: str | Path, task: str, split: str, limit: int | None = None) -> list[dict]:
    path = glue_path(data_dir, task, split)
    if not path.is_file():
        rows = load_from_hub(task, split, path)
        return rows[:limit] if limit is not None else rows
    rows = []
    with path.open(encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            if limit is not None and len(rows) >= limit:
                break
            if not line.strip():
                continue
            try:
                rows.append(loads(line, what="row"))
            except DocumentError as exc:
                raise LoraFleetInputError(f"{path}: line {number} is not valid JSON ({exc.reason})") from None
    return rows


def count_glue_rows(data_dir: str | Path, task: str, split: str) -> int:
    """The rows `read_glue_rows` returns for a local file (one per non-blank line), counted
    without parsing them: the submit path sizes the `auto` budget from this on every call."""
    with glue_path(data_dir, task, split).open("rb") as fh:
        return sum(1 for line in fh if line.strip())


def rows_to_examples(task: str, rows: list[dict], source: str = "") -> list[ClassificationExample]:
    """Map GLUE rows to examples; a row without the task's fields is a clear error, not a KeyError."""
    if task not in GLUE_TASKS:
        raise ValueError(f"{task!r} is not a GLUE task; GLUE tasks: {', '.join(GLUE_TASKS)}")
    fields = TASKS[task].text_fields
    regression = TASKS[task].kind == "regression"
    out = []
    for i, row in enumerate(rows, start=1):
        missing = [f for f in (*fields, "label") if f not in row]
        if missing:
            raise LoraFleetInputError(f"{source or task}: row {i} lacks field(s) {missing}; "
                                      f"{task} rows need {[*fields, 'label']}")
        label = float(row["label"]) if regression else int(row["label"])
        pair = row[fields[1]] if len(fields) > 1 else None
        out.append(ClassificationExample(row[fields[0]], pair, label))
    return out
