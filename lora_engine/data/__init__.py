"""Task data: one entry point, `load_examples`, whatever the task and the source.

Sources, in order: the local data folder (`LORAFLEET_DATA_DIR`, laid out like ../shared/data),
else the Hugging Face hub (optional, see `hub.py`), or for custom tasks the tenant's JSONL file.
Everything after loading is the same: lists of `ClassificationExample` / `GenerationExample`.
"""

from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from functools import lru_cache
from pathlib import Path

from lora_engine.catalog import CUSTOM_TASKS, GLUE_TASKS, task_info
from lora_engine.data import e2e, glue
from lora_engine.data.custom import CustomDataset, load_custom, validate_jsonl
from lora_engine.data.e2e import E2E_PROMPT, e2e_prompt, e2e_references
from lora_engine.data.examples import ClassificationExample, GenerationExample

Example = ClassificationExample | GenerationExample
SPLITS = ("train", "validation")

__all__ = [
    "E2E_PROMPT",
    "SPLITS",
    "ClassificationExample",
    "CustomDataset",
    "Example",
    "GenerationExample",
    "count_train_rows",
    "custom_label_names",
    "e2e_prompt",
    "e2e_references",
    "load_custom",
    "load_examples",
    "validate_jsonl",
]


def _custom_examples(task: str, rows: list[dict], data: CustomDataset) -> list[Example]:
    if data.format == "chat":
        # Rendering needs the base model's tokenizer: the worker renders a chat data set into a
        # prompt/completion file before the job runs (worker.inputs); reaching here is a bug.
        raise ValueError("a chat data set trains once rendered with the base model's chat template "
                         "(lora_engine.data.chat.render_chat_file); this file was not rendered")
    if task == "custom-generation":
        # A custom prompt is its own group: its references are the completions given for it.
        return [GenerationExample(r["prompt"], r["completion"], r["prompt"]) for r in rows]
    return [ClassificationExample(r["text"], r["text_pair"], data.label_id(r["label"])) for r in rows]


def custom_label_names(dataset: str | Path) -> tuple[str, ...]:
    """The label names of a custom classification data set; label id i is names[i]."""
    return load_custom(dataset, "classification").label_names


def load_examples(
    task: str,
    split: str,
    *,
    data_dir: str | Path,
    dataset: str | Path | None = None,
    limit: int | None = None,
) -> list[Example]:
    """The examples of `task`'s `split` ("train" | "validation"), the first `limit` rows if given.

    GLUE: labels are ints (floats for stsb). E2E: one example per (MR, reference) row, prompt from
    `E2E_PROMPT`, group = the MR. Custom tasks read `dataset` (validated whole; see `custom.py`
    for the split and the label-id mapping).
    """
    info = task_info(task)
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; allowed: {', '.join(SPLITS)}")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1 (got {limit})")
    if task in CUSTOM_TASKS:
        if dataset is None:
            raise ValueError(f"task {task!r} needs a dataset (a JSONL file)")
        data = load_custom(dataset, info.kind)
        rows = data.train if split == "train" else data.validation
        return _custom_examples(task, rows[:limit] if limit is not None else rows, data)
    if dataset is not None:
        raise ValueError(f"task {task!r} uses its own data; dataset= is for custom tasks")
    path = glue.glue_path(data_dir, task, split) if task in GLUE_TASKS else e2e.e2e_path(data_dir, split)
    if not path.is_file():  # from the hub, into `path` (see hub.py): nothing to remember yet
        return _read_builtin(task, split, data_dir, limit)
    # The content decides, not the file's name or mtime: a replaced file is read again.
    key = (task, split, str(path), limit, hashlib.sha256(path.read_bytes()).hexdigest())
    if key not in _loaded:
        _loaded[key] = tuple(_read_builtin(task, split, data_dir, limit))
        while len(_loaded) > LOADED_SLOTS:
            _loaded.popitem(last=False)
    _loaded.move_to_end(key)
    return list(_loaded[key])


# The built-in splits read last, by content: a warm worker's next job on SST-2 or E2E skips the
# parse (0.1-0.2 s of CPU for 6k-42k rows). Examples are frozen; callers get their own list.
LOADED_SLOTS = 4
_loaded: OrderedDict[tuple, tuple[Example, ...]] = OrderedDict()


def _read_builtin(task: str, split: str, data_dir: str | Path, limit: int | None) -> list[Example]:
    if task in GLUE_TASKS:
        rows = glue.read_glue_rows(data_dir, task, split, limit)
        return glue.rows_to_examples(task, rows, str(glue.glue_path(data_dir, task, split)))
    return e2e.rows_to_examples(e2e.read_e2e_rows(data_dir, split, limit))


def _train_file(task: str, data_dir: str | Path, dataset: str | Path | None) -> Path:
    if task in CUSTOM_TASKS:
        return Path(dataset)
    return glue.glue_path(data_dir, task, "train") if task in GLUE_TASKS else e2e.e2e_path(data_dir, "train")


@lru_cache(maxsize=64)
def _count(task: str, data_dir: str, dataset: str | None, stamp: tuple[int, int]) -> int:
    if task in GLUE_TASKS:  # a local GLUE file: one example per non-blank line, not parsed here
        return glue.count_glue_rows(data_dir, task, "train")
    if task not in CUSTOM_TASKS:
        return e2e.count_e2e_rows(data_dir, "train")
    # The split's rows, not its examples: a chat file counts before it is rendered (at submit).
    return len(load_custom(dataset, task_info(task).kind).train)


def count_train_rows(task: str, *, data_dir: str | Path, dataset: str | Path | None = None) -> int:
    """The training split's row count (what the `auto` budget is sized from):
    `len(load_examples(task, "train", ...))` of a well-formed file, remembered per file version
    (path, mtime, size) so a batch of submissions reads each file once. GLUE and E2E rows are
    counted, not parsed (SST-2's 67k rows would cost the submit path a second); a custom data
    set is loaded, its split being the one the worker trains on."""
    path = _train_file(task, data_dir, dataset)
    st = os.stat(path)  # FileNotFoundError when absent: the caller decides (hub, later)
    return _count(task, str(data_dir), str(dataset) if dataset is not None else None,
                  (st.st_mtime_ns, st.st_size))
