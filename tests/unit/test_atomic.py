"""Folders and files that appear whole or not at all (lora_engine.atomic), on the real file system."""

from __future__ import annotations

import os
import threading

import pytest

from lora_engine.atomic import atomic_folder, atomic_write_text, move_into_place


class Boom(Exception):
    pass


def _names(folder):
    return sorted(p.name for p in folder.iterdir())


def test_a_failure_inside_the_block_leaves_no_folder_and_no_temp(tmp_path):
    final = tmp_path / "out" / "adapter"
    with pytest.raises(Boom), atomic_folder(final) as tmp:
        (tmp / "weights.bin").write_bytes(b"x" * 1000)
        assert tmp.parent == final.parent and tmp.name.startswith(".adapter.tmp-")
        raise Boom
    assert not final.exists()
    assert _names(final.parent) == []  # no temp folder left behind


def test_a_success_appears_whole(tmp_path):
    final = tmp_path / "adapter"
    with atomic_folder(final) as tmp:
        (tmp / "a.json").write_text("{}")
        (tmp / "sub").mkdir()
        (tmp / "sub" / "b.txt").write_text("b")
        assert not final.exists()  # nothing under the final name until the block is done
    assert _names(final) == ["a.json", "sub"] and (final / "sub" / "b.txt").read_text() == "b"
    assert _names(tmp_path) == ["adapter"]


def test_the_old_folder_survives_a_failed_replace_and_a_success_replaces_it(tmp_path):
    final = tmp_path / "adapter"
    with atomic_folder(final) as tmp:
        (tmp / "v").write_text("1")
        (tmp / "only-in-v1").write_text("")
    with pytest.raises(Boom), atomic_folder(final, replace=True) as tmp:
        (tmp / "v").write_text("2")
        assert (final / "v").read_text() == "1"  # readers still see the old one meanwhile
        raise Boom
    assert _names(final) == ["only-in-v1", "v"] and (final / "v").read_text() == "1"
    assert _names(tmp_path) == ["adapter"]
    with atomic_folder(final, replace=True) as tmp:
        (tmp / "v").write_text("2")
    assert _names(final) == ["v"] and (final / "v").read_text() == "2"  # replaced, not merged
    assert _names(tmp_path) == ["adapter"]  # the swapped-out folder is gone too


def test_without_replace_an_existing_folder_is_refused_and_kept(tmp_path):
    final = tmp_path / "dataset"
    final.mkdir()
    (final / "data.jsonl").write_text("mine")
    with pytest.raises(FileExistsError), atomic_folder(final) as tmp:
        (tmp / "data.jsonl").write_text("theirs")
    assert (final / "data.jsonl").read_text() == "mine" and _names(tmp_path) == ["dataset"]


def test_two_writers_of_one_new_folder_never_mix(tmp_path):
    """Concurrent converters of the same model: one folder wins whole, the other is refused."""
    final = tmp_path / "model"
    barrier = threading.Barrier(2)
    outcomes: dict[str, str] = {}

    def write(tag: str) -> None:
        try:
            with atomic_folder(final, replace=False) as tmp:
                (tmp / "a").write_text(tag)
                barrier.wait(timeout=10)  # both folders are complete before either is renamed
                (tmp / "b").write_text(tag)
            outcomes[tag] = "won"
        except FileExistsError:
            outcomes[tag] = "refused"

    threads = [threading.Thread(target=write, args=(t,)) for t in ("one", "two")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes.values()) == ["refused", "won"]
    winner = next(tag for tag, how in outcomes.items() if how == "won")
    assert (final / "a").read_text() == (final / "b").read_text() == winner
    assert _names(tmp_path) == ["model"]


def test_move_into_place_publishes_a_finished_folder_once(tmp_path):
    staged = tmp_path / ".staging" / "job-1"
    staged.mkdir(parents=True)
    (staged / "w").write_text("w")
    final = tmp_path / "tenant" / "adapter"
    final.parent.mkdir()
    move_into_place(staged, final)
    assert not staged.exists() and (final / "w").read_text() == "w"
    again = tmp_path / "again"
    again.mkdir()
    with pytest.raises(FileExistsError):
        move_into_place(again, final)
    assert again.is_dir() and (final / "w").read_text() == "w"


def test_atomic_write_text_replaces_whole_and_a_failed_write_leaves_no_temp(tmp_path):
    path = tmp_path / "reports" / "cost.md"
    atomic_write_text(path, "v1\n")
    atomic_write_text(path, "v2\n")
    assert path.read_text() == "v2\n" and _names(tmp_path / "reports") == ["cost.md"]
    assert path.stat().st_mode & 0o777 == 0o666 & ~_umask()  # an ordinary file's mode
    blocked = tmp_path / "reports" / "blocked.md"  # a folder where the file should go
    blocked.mkdir()
    (blocked / "keep").write_text("k")
    with pytest.raises(IsADirectoryError):
        atomic_write_text(blocked, "x")
    assert _names(tmp_path / "reports") == ["blocked.md", "cost.md"] and _names(blocked) == ["keep"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
