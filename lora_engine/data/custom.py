"""A tenant's own JSONL data set: validation, label mapping and the train/validation split.

Row formats (one JSON object per line; blank lines are ignored):

- classification: ``{"text": str, "text_pair": str (optional), "label": int | str}`` (text_label)
- generation:     ``{"prompt": str, "completion": str}`` (prompt_completion), or OpenAI's chat
                  format ``{"messages": [...]}`` (chat; see `chat.py`, rendered when a job starts)

A file holds one format: its first row's decides (`FORMATS` maps each to its kind), and a row of
another format is a per-line error. `read_jsonl(path, None)` takes whichever format the file has
(the API's upload, where the format decides the task kind); with a kind it takes that kind's.

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

from lora_engine.data import chat
from lora_engine.errors import DataValidationError
from lora_engine.safe_json import DocumentError, loads

MAX_FILE_BYTES = 512 * 1024 * 1024
# Problems kept of an invalid file: far more than anyone reads (the message shows the first 50),
# few enough that a file of millions of bad rows costs no memory; the rest are counted.
MAX_PROBLEMS_KEPT = 1000
HOLDOUT_FRACTION = 0.1
HOLDOUT_SEED = 20240611

FIELDS = {
    "classification": {"text": True, "text_pair": False, "label": True},  # name -> required
    "generation": {"prompt": True, "completion": True},
}
# A file's format -> its task kind. A kind's first format is the one a row of no known format is
# checked against (its messages then say which fields are missing).
FORMATS = {"text_label": "classification", "prompt_completion": "generation", "chat": "generation"}
FORMAT_NAMES = {"text_label": "text/label", "prompt_completion": "prompt/completion",
                "chat": "chat (messages)"}
_FORMAT_FIELDS = {"text_label": FIELDS["classification"], "prompt_completion": FIELDS["generation"]}
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


def row_format(row) -> str | None:
    """The format a decoded row is written in, by its keys (None: no known field)."""
    if not isinstance(row, dict):
        return None
    if "messages" in row:
        return "chat"
    if "prompt" in row or "completion" in row:
        return "prompt_completion"
    if {"text", "text_pair", "label"} & set(row):
        return "text_label"
    return None


def _formats_of(kind: str | None) -> tuple[str, ...]:
    if kind is None:
        return tuple(FORMATS)
    kind = _kind(kind)
    return tuple(f for f, k in FORMATS.items() if k == kind)


def _problems_as(row, fmt: str) -> list[str]:
    return chat.chat_row_problems(row) if fmt == "chat" else _row_problems(row, _FORMAT_FIELDS[fmt])


def _kept(row: dict, fmt: str) -> dict:
    if fmt == "chat":
        return chat.normalized(row)
    return {name: row.get(name) for name in _FORMAT_FIELDS[fmt]}


def file_format(path: str | Path) -> str | None:
    """The format of a VALIDATED file (its first row of a known format decides); reads one row."""
    with Path(path).open("rb") as fh:
        for raw in fh:
            line = raw.decode("utf-8").removeprefix("\ufeff")
            if line.strip():
                fmt = row_format(loads(line, what="row"))
                if fmt is not None:
                    return fmt
    return None


class _LineCheck:
    """One line of a file at a time: its problems (a list), its kept row (a dict), or None for a
    blank line; remembers the file's format and label type from the rows before."""

    def __init__(self, kind: str | None, allowed: tuple[str, ...]):
        self.kind, self.allowed = kind, allowed
        self.fmt: str | None = None  # the file's format, set by its first row of a known one
        self.fmt_line = 0
        self.label_type: type | None = None

    def __call__(self, number: int, raw: bytes) -> list[str] | dict | None:
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            bad = f"byte {raw[exc.start]:#04x} at column {exc.start + 1}"
            return [f"not valid UTF-8 ({bad}); save the file as UTF-8"]
        if number == 1:
            line = line.removeprefix("\ufeff")  # a BOM is an encoding mark, not data
        if not line.strip():
            return None
        try:
            row = loads(line, what="row")
        except DocumentError as exc:
            return [f"not valid JSON: {exc.reason}"]
        this = row_format(row)
        if this not in self.allowed:  # no known field, or another kind's
            if self.kind is None and self.fmt is None:
                return ["no known field; a row is {\"messages\": [...]} (chat), {\"prompt\", \"completion\"} "
                        "or {\"text\", \"label\"}"]
            # Checked as the file's format (else the kind's first): its messages name the missing
            # and the stray fields.
            this = self.fmt or self.allowed[0]
        if self.fmt is None:
            self.fmt, self.fmt_line = this, number
        if this != self.fmt:
            return [f"a {FORMAT_NAMES[this]} row, but line {self.fmt_line} is {FORMAT_NAMES[self.fmt]}; "
                    f"a file holds one format"]
        why = _problems_as(row, this)
        if not why and this == "text_label":
            # One label type per file: mixing 1 and "1" would silently make two classes.
            this_type = type(row["label"])
            self.label_type = self.label_type or this_type
            if this_type is not self.label_type:
                why = [f"label is a {_type_name(row['label'])}, but earlier rows use "
                       f"{'integers' if self.label_type is int else 'strings'}; use one label type"]
        return why or _kept(row, this)


@dataclass(frozen=True)
class ParsedFile:
    format: str  # a key of FORMATS
    rows: list[dict]

    @property
    def kind(self) -> str:
        return FORMATS[self.format]


def read_jsonl(
    path: str | Path, kind: str | None, *, max_bytes: int = MAX_FILE_BYTES, min_labels: int = 2
) -> ParsedFile:
    """The format and all rows of a tenant's JSONL file, or DataValidationError listing every problem
    (of the first `MAX_PROBLEMS_KEPT`; the invalid rows after them are counted).

    `kind`: "classification" | "generation" takes that kind's formats only; None takes any format
    (the file's first row decides). Returned rows hold exactly the known fields (optional ones as
    None; chat rows their messages' role and content); line numbers are 1-based. `min_labels`:
    distinct labels a classification file needs (a validation file may hold fewer).
    """
    allowed = _formats_of(kind)
    path = Path(path)
    if not path.is_file():
        raise DataValidationError(str(path), [(0, "no such file")])
    size = path.stat().st_size
    if size > max_bytes:
        raise DataValidationError(str(path), [(0, f"{size} bytes; the limit is {max_bytes} bytes")])

    problems: list[tuple[int, str]] = []
    rows: list[dict] = []
    check = _LineCheck(kind, allowed)
    unlisted = 0  # invalid rows past MAX_PROBLEMS_KEPT: counted, not kept
    with path.open("rb") as fh:
        for number, raw in enumerate(fh, start=1):
            outcome = check(number, raw)
            if isinstance(outcome, dict):
                if not problems:  # an invalid file returns no rows: keep none once one is bad
                    rows.append(outcome)
            elif outcome and len(problems) >= MAX_PROBLEMS_KEPT:
                unlisted += 1
            elif outcome:
                problems.extend((number, reason) for reason in outcome)
    if unlisted:
        problems.append((0, f"{unlisted} more invalid row(s) after line {problems[-1][0]}, not listed"))
    fmt = check.fmt

    if not rows and not problems:
        problems.append((0, "empty: no rows"))
    if fmt == "text_label" and rows and not problems:
        distinct = {r["label"] for r in rows}
        if len(distinct) < min_labels:
            problems.append((0, f"only one distinct label; classification needs at least {min_labels}"))
    if problems:
        raise DataValidationError(str(path), problems)
    return ParsedFile(fmt, rows)


def validate_jsonl(
    path: str | Path, kind: str, *, max_bytes: int = MAX_FILE_BYTES, min_labels: int = 2
) -> list[dict]:
    """All rows of a tenant's JSONL file of `kind`, or DataValidationError (see `read_jsonl`)."""
    return read_jsonl(path, kind, max_bytes=max_bytes, min_labels=min_labels).rows


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
        texts = [m["content"] for m in row["messages"]] if "messages" in row else [
            v for k, v in row.items() if k != "label" and isinstance(v, str)]
        chars += sum(map(len, texts))
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
    format: str = "text_label"  # a key of FORMATS

    def label_id(self, label: int | str) -> int:
        return self.label_names.index(str(label))


def load_custom(path: str | Path, kind: str, *, max_bytes: int = MAX_FILE_BYTES) -> CustomDataset:
    """Validate a tenant data set (and its sibling validation file if any) and split it."""
    kind = _kind(kind)
    parsed = read_jsonl(path, kind, max_bytes=max_bytes)
    rows = parsed.rows
    sibling = validation_sibling(path)
    if sibling.is_file():
        val = read_jsonl(sibling, kind, max_bytes=max_bytes, min_labels=1)
        if val.format != parsed.format:
            raise DataValidationError(str(sibling), [(0, f"{FORMAT_NAMES[val.format]} rows, but the training "
                                                         f"file's are {FORMAT_NAMES[parsed.format]}")])
        train, validation = rows, val.rows
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
    return CustomDataset(train, validation, names, source, parsed.format)
