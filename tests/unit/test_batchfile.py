"""Batch files are tenant documents: parsed with a size cap, no YAML aliases, no NaN, and errors
that name the line, never the content."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from orchestrator.batchfile import BatchFileError, load_batch_file
from orchestrator.config import get_settings
from orchestrator.paths import PathRefused

# The 452-byte classic: nine levels of nine aliases expand to 9**9 strings.
ALIAS_BOMB = "\n".join(
    ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    + [f"{c}: &{c} [" + ",".join([f"*{p}"] * 9) + "]" for p, c in zip("abcdefgh", "bcdefghi", strict=True)]
)


@pytest.fixture(autouse=True)
def data_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The batch files lie in a data root (every path a user gives must)."""
    monkeypatch.setenv("LORAFLEET_DATA_ROOTS", str(tmp_path))
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def test_a_yaml_alias_bomb_is_refused_at_once(tmp_path: Path):
    path = tmp_path / "bomb.yaml"
    path.write_text(ALIAS_BOMB)
    started = time.perf_counter()
    with pytest.raises(BatchFileError, match="line 2: YAML aliases") as info:
        load_batch_file(path)
    assert time.perf_counter() - started < 5  # generous: the expansion would take minutes
    assert len(str(info.value)) < 300 and "lol" not in str(info.value)


def test_yaml_errors_name_the_line_not_the_content(tmp_path: Path):
    path = tmp_path / "bad.yaml"
    path.write_text("- tenant: acme\n  task: [secret-token\n")
    with pytest.raises(BatchFileError, match=r"line \d+ column \d+") as info:
        load_batch_file(path)
    assert "secret-token" not in str(info.value)


def test_jsonl_reports_the_bad_line_and_refuses_nan(tmp_path: Path):
    path = tmp_path / "b.jsonl"
    path.write_text('{"tenant": "acme", "task": "sst2"}\n\n{"tenant": "acme", "lr": NaN}\n')
    with pytest.raises(BatchFileError, match="line 3: NaN is not a number JSON allows"):
        load_batch_file(path)
    path.write_text('{"tenant": "acme", "task": "sst2"}\n{"tenant": \n')
    with pytest.raises(BatchFileError, match="line 2 is not JSON"):
        load_batch_file(path)


def test_size_cap_type_and_relative_dataset_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    path = tmp_path / "sub" / "b.json"
    path.parent.mkdir()
    path.write_text(json.dumps([{"tenant": "acme", "task": "custom-classification", "dataset": "d.jsonl"}]))
    assert load_batch_file(path)[0]["dataset"] == str(tmp_path / "sub" / "d.jsonl")
    path.write_text(json.dumps({"tenant": "acme"}))
    with pytest.raises(BatchFileError, match="expected a list of job items, got dict"):
        load_batch_file(path)
    monkeypatch.setenv("LORAFLEET_MAX_BATCH_FILE_BYTES", "10")
    get_settings.cache_clear()
    with pytest.raises(PathRefused, match=r"the limit is 10 bytes \(LORAFLEET_MAX_BATCH_FILE_BYTES\)"):
        load_batch_file(path)
    monkeypatch.delenv("LORAFLEET_MAX_BATCH_FILE_BYTES")
    get_settings.cache_clear()
    other = tmp_path / "b.toml"
    other.write_text("x")
    with pytest.raises(BatchFileError, match=r"allowed: \.jsonl"):
        load_batch_file(other)


@pytest.mark.parametrize(("name", "write", "says"), [
    ("b.jsonl", lambda n: "{}\n\n" * n, "b.jsonl: 11 items; a batch file may hold at most 10"),
    ("b.json", lambda n: json.dumps([{}] * n), "b.json: 11 items; a batch file may hold at most 10"),
    ("b.yaml", lambda n: "- {}\n" * n, "b.yaml: more than 10 items; a batch file may hold at most 10"),
])
def test_the_item_cap_holds_for_every_format(tmp_path: Path, name: str, write, says: str):
    path = tmp_path / name
    path.write_text(write(11))
    with pytest.raises(BatchFileError, match=says):
        load_batch_file(path, max_items=10)
    path.write_text(write(10))
    assert len(load_batch_file(path, max_items=10)) == 10


def test_yaml_items_are_held_to_the_json_rules(tmp_path: Path):
    path = tmp_path / "b.yaml"
    for text, says in [
        ("- tenant: acme\n  spec:\n    rank: 4\n    rank: 64\n", "line 4: key 'rank' appears twice"),
        ("x:\n" + "".join("  " * i + "- y:\n" for i in range(1, 40)), "nests deeper than 32 levels"),
        ("- {rank: " + "1" * 200 + "}\n", "line 1: a number of 200 characters; numbers have at most 100"),
    ]:
        path.write_text(text)
        with pytest.raises(BatchFileError, match=says):
            load_batch_file(path)
