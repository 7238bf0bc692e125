"""The one resolver of user paths (orchestrator.paths) and the default data root, on the real file
system: symlinks, FIFOs, devices, nesting, sizes. Every refusal names what was wrong and what is
allowed, and reading a FIFO or /dev/zero neither hangs nor fills the memory."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from orchestrator import paths
from orchestrator.config import load_settings
from orchestrator.paths import NoDataRoot, PathRefused


@pytest.fixture
def place(tmp_path: Path):
    """A data root, a home (registry, artifacts) beside it, and a folder outside both."""
    data, home, outside = tmp_path / "data", tmp_path / "home", tmp_path / "outside"
    for folder in (data, home / "artifacts" / "t" / "a", outside):
        folder.mkdir(parents=True)
    (home / "registry.db").write_bytes(b"SQLite")
    (home / "artifacts" / "t" / "a" / "adapter_model.safetensors").write_bytes(b"weights of tenant t")
    (outside / "secret.txt").write_text("secret")
    settings = load_settings({"LORAFLEET_HOME": str(home), "LORAFLEET_DATA_ROOTS": str(data),
                              "LORAFLEET_MAX_FOLDER_ENTRIES": "6", "LORAFLEET_MAX_FOLDER_DEPTH": "3",
                              "LORAFLEET_MAX_FOLDER_BYTES": "1000"})
    return data, home, outside, settings


def test_a_path_may_be_a_symlink_only_to_a_confined_place(place) -> None:
    data, home, outside, settings = place
    (data / "real.jsonl").write_text("{}\n")
    (data / "alias.jsonl").symlink_to(data / "real.jsonl")  # a link whose target is confined: fine
    assert paths.resolve(data / "alias.jsonl", settings, "dataset") == data / "real.jsonl"
    (data / "out.jsonl").symlink_to(outside / "secret.txt")
    (data / "registry").symlink_to(home / "registry.db")
    (data / "theirs").symlink_to(home / "artifacts" / "t" / "a")
    refusals = [
        (data / "out.jsonl", "is outside the allowed data roots (a symlink to a place outside them)"),
        (outside / "secret.txt", "is outside the allowed data roots"),
        (data / "registry", "points into the lorafleet home"),
        (data / "theirs", "points into the artifacts root"),
        (f"{data}/x/../../outside/secret.txt", "contains '..'"),
    ]
    for value, needle in refusals:
        with pytest.raises(PathRefused) as info:
            paths.resolve(value, settings, "dataset")
        message = str(info.value)
        assert message.startswith("dataset: ") and needle in message, message
        assert f"allowed data roots: {data} (LORAFLEET_DATA_ROOTS" in message  # what is allowed
    assert "secret" not in str(info.value).replace("secret.txt", "")


def test_a_file_is_opened_as_a_regular_file_of_bounded_size(place) -> None:
    data, _, _, settings = place
    os.mkfifo(data / "fifo.jsonl")  # no writer: a blocking open would hang forever
    (data / "zero").symlink_to("/dev/zero")  # refused as outside the roots before it is opened
    (data / "big.yaml").write_bytes(b"x" * 101)
    (data / "ok.yaml").write_bytes(b"x" * 100)
    started = time.monotonic()
    with pytest.raises(PathRefused, match="is a FIFO; give a regular file"):
        paths.read_file(data / "fifo.jsonl", settings, "batch file", cap=100, cap_var="CAP")
    assert time.monotonic() - started < 5
    with pytest.raises(PathRefused, match="is outside the allowed data roots"):
        paths.read_file(data / "zero", settings, "batch file", cap=100, cap_var="CAP")
    with pytest.raises(PathRefused, match=r"is 101 bytes; the limit is 100 bytes \(CAP\)"):
        paths.read_file(data / "big.yaml", settings, "batch file", cap=100, cap_var="CAP")
    with pytest.raises(PathRefused, match="is a folder; give a regular file"):
        paths.read_file(data, settings, "batch file", cap=100, cap_var="CAP")
    with pytest.raises(PathRefused, match="no such file"):
        paths.read_file(data / "missing.yaml", settings, "batch file", cap=100, cap_var="CAP")
    assert paths.read_file(data / "ok.yaml", settings, "batch file", cap=100, cap_var="CAP")[1] == b"x" * 100
    # A device inside a data root (a root that holds /dev): refused by its type, nothing read.
    dev = load_settings({"LORAFLEET_HOME": str(settings.home), "LORAFLEET_DATA_ROOTS": "/dev"})
    with pytest.raises(PathRefused, match="is a character device; give a regular file"):
        paths.read_file("/dev/zero", dev, "batch file", cap=100, cap_var="CAP")


def test_a_folder_holds_regular_files_and_folders_only_and_is_bounded(place) -> None:
    data, home, outside, settings = place
    good = data / "model"
    (good / "sub").mkdir(parents=True)
    (good / "config.json").write_text("{}")
    (good / "sub" / "w.bin").write_bytes(b"w" * 10)
    assert paths.folder(good, settings, "base_model") == good
    (data / "linked-model").symlink_to(good)  # the folder itself may be a confined symlink
    assert paths.folder(data / "linked-model", settings, "base_model") == good

    hostile = data / "adapter"
    hostile.mkdir()
    (hostile / "adapter_config.json").write_text("{}")
    (hostile / "README.md").symlink_to(outside / "secret.txt")
    theirs = home / "artifacts" / "t" / "a" / "adapter_model.safetensors"
    (hostile / "adapter_model.safetensors").symlink_to(theirs)
    os.mkfifo(hostile / "pipe")
    with pytest.raises(PathRefused) as info:
        paths.folder(hostile, settings, "adapter import")
    message = str(info.value)
    for needle in ("'README.md' is a symlink", "'adapter_model.safetensors' is a symlink", "'pipe' is a FIFO",
                   "Allowed in a folder: regular files and folders only"):
        assert needle in message, message
    assert "secret" not in message.replace("secret.txt", "")

    deep = data / "deep"
    (deep / "a" / "b" / "c").mkdir(parents=True)
    deeper = r"'a/b/c' is nested deeper than 3 folders \(LORAFLEET_MAX_FOLDER_DEPTH\)"
    with pytest.raises(PathRefused, match=deeper):
        paths.folder(deep, settings, "base_model")
    many = data / "many"
    many.mkdir()
    for i in range(7):
        (many / f"f{i}").write_text("")
    with pytest.raises(PathRefused, match=r"more than 6 files and folders \(LORAFLEET_MAX_FOLDER_ENTRIES\)"):
        paths.folder(many, settings, "base_model")
    heavy = data / "heavy"
    heavy.mkdir()
    (heavy / "w").write_bytes(b"w" * 1001)
    with pytest.raises(PathRefused, match=r"more than 1000 bytes \(LORAFLEET_MAX_FOLDER_BYTES\)"):
        paths.folder(heavy, settings, "base_model")


@pytest.mark.parametrize("where", ["root", "home", "artifacts", "project"])
def test_the_default_data_root_is_the_current_folder_unless_it_is_root_home_or_artifacts(
    where: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home, store = tmp_path / "project" / ".lorafleet", tmp_path / "store"
    home.mkdir(parents=True)
    (store / "t").mkdir(parents=True)
    cwd = {"root": Path("/"), "home": home, "artifacts": store / "t", "project": tmp_path / "project"}[where]
    monkeypatch.chdir(cwd)
    settings = load_settings({"LORAFLEET_HOME": str(home), "LORAFLEET_ARTIFACTS": str(store)})
    if where == "project":  # the usual case: the root holds the home, whose files stay refused
        assert settings.data_roots == [cwd]
        with pytest.raises(PathRefused, match="points into the lorafleet home"):
            paths.resolve(home / "registry.db", settings, "dataset")
        return
    assert settings.data_roots == []
    with pytest.raises(NoDataRoot) as info:
        paths.resolve(cwd / "data.jsonl", settings, "dataset")
    message = str(info.value)
    assert "there is no data root" in message and "set LORAFLEET_DATA_ROOTS" in message
    assert {"root": "the file system's root", "home": "inside the lorafleet home",
            "artifacts": "inside the artifacts root"}[where] in message
