"""A tenant's own JSONL data set: validation, label mapping and the train/validation split.

Row formats (one JSON object per line; blank lines are ignored):

- classification: ``{"text": str, "text_pair": str (optional), "label": int | str}``
- generation:     ``{"prompt": str, "completion": str}``

`validate_jsonl` checks the whole file the way a fine-tuning API validates an upload: every bad
row is reported with its line number and the reason, all in one `DataValidationError`, and
nothing is returned for invalid data. File-level problems (empty, too large, too few labels) are
reported on line 0.

Labels: all rows use one label type. Distinct label values are sorted (numbers numerically,
names alphabetically) and numbered 0..K-1; `label_names` records that mapping (stored with the
adapter), so integer labels 0..K-1 map to themselves. Sorting, unlike first-seen order, gives the
same ids whatever the row order, and the same ids for the train and the validation file.

Split: if a sibling file ``<name>.validation.jsonl`` exists next to ``<name>.jsonl`` it is the
validation split and the whole file trains. Otherwise a deterministic hold-out of
`HOLDOUT_FRACTION` of the rows (at least one), chosen with the fixed seed `HOLDOUT_SEED`, not the
run's seed: every run on one data set is then scored on the same rows, so their scores compare.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from lora_engine.errors import DataValidationError
from lora_engine.safe_json import DocumentError, loads

MAX_FILE_BYTES = 512 * 1024 * 1024
HOLDOUT_FRACTION = 0.1
HOLDOUT_SEED = 20240611

FIELDS = {
    "classification": {"text": True, "text_pair": False, "label": True},  # name -> required
    "generation": {"prompt": True, "completion": True},
}
_KIND_ALIASES = {"custom-classification": "classification", "custom-generation": "generation"}


def _kind(kind: str) -> str:
    kind = _KIND_ALIASES.get(kind, kind)
    if kind not in FIELDS:
        raise ValueError(f"unknown data kind {kind!r}; allowed: classification, generation")
    return kind


def _type_name(value) -> str:
    return "null" if value is None else {dict: "object", list: "array", bool: "boolean"}.get(
        type(value), type(value).__name__
    )


def _row_problems(row, fields: dict[str, bool]) -> list[str]:
    """Every reason one decoded row is invalid (empty list: valid)."""
    if not isinstance(row, dict):
        return [f"not a JSON object (got {_type_name(row)})"]
    problems = []
    unknown = sorted(set(row) - set(fields))
    if unknown:
        problems.append(f"unknown field(s) {', '.join(map(repr, unknown))}; allowed: {', '.join(fields)}")
    for name, required in fields.items():
        value = row.get(name)
        if value is None:
            if required:
                problems.append(f"missing field {name!r}")
            continue
        if name == "label":
            if isinstance(value, bool) or not isinstance(value, int | str):
                problems.append(f"label must be an integer or a label name string (got {_type_name(value)})")
            elif isinstance(value, str) and not value.strip():
                problems.append("field 'label' is empty")
        elif not isinstance(value, str):
            problems.append(f"field {name!r} must be a string (got {_type_name(value)})")
        elif not value.strip():
            problems.append(f"field {name!r} is empty")
    return problems


def validate_jsonl(
    path: str | Path, kind: str, *, max_bytes: int = MAX_FILE_BYTES, min_labels: int = 2
) -> list[dict]:
    """All rows of a tenant's JSONL file, or DataValidationError listing every problem.

    Returned rows hold exactly the known fields (optional ones as None); line numbers are 1-based.
    `min_labels`: distinct labels a classification file needs (a validation file may hold fewer).
    """
    kind = _kind(kind)
    fields = FIELDS[kind]
    path = Path(path)
    if not path.is_file():
        raise DataValidationError(str(path), [(0, "no such file")])
    size = path.stat().st_size
    if size > max_bytes:
        raise DataValidationError(str(path), [(0, f"{size} bytes; the limit is {max_bytes} bytes")])

    problems: list[tuple[int, str]] = []
    rows: list[dict] = []
    label_type: type | None = None
    with path.open("rb") as fh:
        for number, raw in enumerate(fh, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                bad = f"byte {raw[exc.start]:#04x} at column {exc.start + 1}"
                problems.append((number, f"not valid UTF-8 ({bad}); save the file as UTF-8"))
                continue
            if number == 1:
                line = line.removeprefix("\ufeff")  # a BOM is an encoding mark, not data
            if not line.strip():
                continue
            try:
                row = loads(line, what="row")
            except DocumentError as exc:
                problems.append((number, f"not valid JSON: {exc.reason}"))
                continue
            why = _row_problems(row, fields)
            if not why and kind == "classification":
                # One label type per file: mixing 1 and "1" would silently make two classes.
                this = type(row["label"])
                label_type = label_type or this
                if this is not label_type:
                    why = [f"label is a {_type_name(row['label'])}, but earlier rows use "
                           f"{'integers' if label_type is int else 'strings'}; use one label type"]
            if why:
                problems.extend((number, reason) for reason in why)
                continue
            rows.append({name: row.get(name) for name in fields})

    if not rows and not problems:
        problems.append((0, "empty: no rows"))
    if kind == "classification" and rows and not problems:
        distinct = {r["label"] for r in rows}
        if len(distinct) < min_labels:
            problems.append((0, f"only one distinct label; classification needs at least {min_labels}"))
    if problems:
        raise DataValidationError(str(path), problems)
    return rows


@dataclass(frozen=True)
class DataProfile:
    """What an upload records about a valid file (no row content)."""

    rows: int
    duplicate_rows: int  # rows equal to an earlier row (kept: duplicates are legal, but worth knowing)
    label_counts: dict[str, int] | None  # {label as text: rows}; None for generation
    token_estimate: int  # ~4 characters a token over the text fields: a budget, not a tokenizer count


def profile_rows(rows: list[dict], kind: str) -> DataProfile:
    kind = _kind(kind)
    seen: set[str] = set()
    duplicates = chars = 0
    for row in rows:
        key = json.dumps(row, sort_keys=True)
        duplicates += key in seen
        seen.add(key)
        chars += sum(len(v) for k, v in row.items() if k != "label" and isinstance(v, str))
    counts = None
    if kind == "classification":
        counts = {}
        for row in rows:
            counts[str(row["label"])] = counts.get(str(row["label"]), 0) + 1
    return DataProfile(len(rows), duplicates, counts, -(-chars // 4))


def sparse_label_problems(path: str | Path, kind: str, min_rows: int) -> None:
    """DataValidationError when a label has fewer than `min_rows` rows; the label is named by
    the line it first appears on, not by its value (messages never quote the data)."""
    if _kind(kind) != "classification":
        return
    first_line: dict[str, int] = {}
    counts: dict[str, int] = {}
    with Path(path).open("rb") as fh:
        for number, raw in enumerate(fh, start=1):
            line = raw.decode("utf-8").removeprefix("\ufeff") if number == 1 else raw.decode("utf-8")
            if line.strip():
                label = str(loads(line, what="row")["label"])
                first_line.setdefault(label, number)
                counts[label] = counts.get(label, 0) + 1
    problems = [(first_line[label], f"the label on this line has {n} row(s); each label needs at least "
                                    f"{min_rows}") for label, n in counts.items() if n < min_rows]
    if problems:
        raise DataValidationError(str(path), sorted(problems))


def validation_sibling(path: str | Path) -> Path:
    """`data.jsonl` -> `data.validation.jsonl` (the optional explicit validation split)."""
    path = Path(path)
    return path.with_name(path.name.removesuffix(".jsonl") + ".validation.jsonl")


def label_names_of(rows: list[dict]) -> tuple[str, ...]:
    """Sorted distinct labels as strings; a label's id is its position here."""
    return tuple(str(v) for v in sorted({r["label"] for r in rows}))


@dataclass(frozen=True)
class CustomDataset:
    train: list[dict]
    validation: list[dict]
    label_names: tuple[str, ...]  # () for generation
    validation_source: str  # "sibling file <path>" or "hold-out of N rows"

    def label_id(self, label: int | str) -> int:
        return self.label_names.index(str(label))


def load_custom(path: str | Path, kind: str, *, max_bytes: int = MAX_FILE_BYTES) -> CustomDataset:
    """Validate a tenant data set (and its sibling validation file if any) and split it."""
    kind = _kind(kind)
    rows = validate_jsonl(path, kind, max_bytes=max_bytes)
    sibling = validation_sibling(path)
    if sibling.is_file():
        train, validation = rows, validate_jsonl(sibling, kind, max_bytes=max_bytes, min_labels=1)
        source = f"sibling file {sibling}"
    else:
        if len(rows) < 2:
            raise DataValidationError(str(path), [(0, f"{len(rows)} row(s): need at least 2 to hold out a "
                                                      f"validation split (or add {sibling.name})")])
        n_val = max(1, round(HOLDOUT_FRACTION * len(rows)))
        held = set(random.Random(HOLDOUT_SEED).sample(range(len(rows)), n_val))
        train = [r for i, r in enumerate(rows) if i not in held]
        validation = [r for i, r in enumerate(rows) if i in held]
        source = f"hold-out of {n_val} row(s), seed {HOLDOUT_SEED}"
    names = ()
    if kind == "classification":
        both = train + validation
        if len({type(r["label"]) for r in both}) > 1:
            raise DataValidationError(str(sibling), [(0, "label type differs from the training file's")])
        names = label_names_of(both)
    return CustomDataset(train, validation, names, source)
