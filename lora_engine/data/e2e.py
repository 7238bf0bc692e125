"""E2E NLG rows -> `GenerationExample`s, and references grouped by meaning representation.

Local files: ``<data_dir>/e2e/<split>.csv`` with columns ``mr`` and ``ref``. One MR has several
human references on separate rows; training uses every (MR, ref) pair, evaluation generates once
per distinct MR and scores against all of its references, as the official E2E metrics do.
"""

from __future__ import annotations

import csv
from pathlib import Path

from lora_engine.data.examples import GenerationExample
from lora_engine.data.hub import load_from_hub

# The one prompt template (stored with the adapter by the recipe). It names the task in words a
# small instruct LM follows, yet is short: every token of it is paid for in each training row
# (~38 prompt + ~25 completion GPT-2 tokens on average; the longest row is 126 < max_length 128, so
# nothing is cut). It ends in a newline, so the completion's first word starts a fresh BPE
# pre-token: prompt and completion tokenised separately give the same ids as the joined text (true
# for every E2E row with the GPT-2 and SmolLM2 tokenizers), and generation sees training's boundary.
E2E_PROMPT = "Describe the restaurant: {mr}\n"


def e2e_prompt(mr: str) -> str:
    return E2E_PROMPT.format(mr=mr)


def e2e_path(data_dir: str | Path, split: str) -> Path:
    return Path(data_dir) / "e2e" / f"{split}.csv"


def read_e2e_rows(data_dir: str | Path, split: str, limit: int | None = None) -> list[dict]:
    path = e2e_path(data_dir, split)
    if not path.is_file():
        rows = load_from_hub("e2e", split, path)
        return rows[:limit] if limit is not None else rows
    rows = []
    with path.open(encoding="utf-8", newline="") as fh:
        for row in csv.DictReader(fh):
            if limit is not None and len(rows) >= limit:
                break
            rows.append({"mr": row["mr"].strip(), "ref": row["ref"].strip()})
    return rows


def count_e2e_rows(data_dir: str | Path, split: str) -> int:
    """The rows `read_e2e_rows` returns for a local file, counted without building them."""
    with e2e_path(data_dir, split).open(encoding="utf-8", newline="") as fh:
        return sum(1 for _ in csv.DictReader(fh))


def rows_to_examples(rows: list[dict]) -> list[GenerationExample]:
    return [GenerationExample(e2e_prompt(r["mr"]), r["ref"], r["mr"]) for r in rows]


def e2e_references(examples: list[GenerationExample]) -> tuple[list[str], list[list[str]]]:
    """(one prompt per distinct group in first-seen order, each group's references).

    What evaluation needs: generate once per prompt, score against all its references. Works for
    any generation data (a custom set's group is its prompt).
    """
    prompts: dict[str, str] = {}
    refs: dict[str, list[str]] = {}
    for ex in examples:
        prompts.setdefault(ex.group, ex.prompt)
        refs.setdefault(ex.group, []).append(ex.completion)
    return list(prompts.values()), list(refs.values())
