"""Where lorafleet may write what a user asked for: `report --out FILE`, `report all --out DIR`,
`adapter export ADAPTER DIR`.

Writers put a new file or folder beside its final place and rename it over that place
(lora_engine.atomic), and a rename replaces whatever had the name. So the place is checked first,
and refused (InvalidInput: what it is, what is allowed) unless:

- a file destination is absent or a regular file (never a device such as /dev/null, a FIFO, a
  socket or a folder, which the rename would replace: as root, `--out /dev/null` replaced the
  system's null device with a report);
- a folder destination is absent or a folder whose entries the caller accepts (empty, for an
  export; an earlier `report all`, for `report all`);
- a symbolic link is followed to its target, and refused when dangling (nothing is created where
  a link points: a link planted in a shared folder must not choose where files land), as is a
  dangling link on the way to it;
- it lies outside the lorafleet home and the artifacts root and is not the registry's or the
  broker's SQLite file, and a folder destination does not contain any of them: `--out` is never
  a way to overwrite adapters, the registry or the broker.

The returned path is the resolved one: write there, so the checked place is the written one.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Collection
from pathlib import Path

from orchestrator.config import Settings
from orchestrator.errors import InvalidInput

SHOWN_ENTRIES = 5


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a folder"), (stat.S_ISREG, "a regular file"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def _sqlite_file(url: str) -> Path | None:
    for scheme in ("sqlite:///", "sqla+sqlite:///"):
        if url.startswith(scheme):
            name = url[len(scheme):].split("?", 1)[0]
            return Path(name).resolve() if name and name != ":memory:" else None
    return None


def _protected(settings: Settings) -> list[tuple[Path, str]]:
    """(path, what it is) of the places no user-named output may land on or inside."""
    places = [(settings.artifacts.resolve(), "the artifacts root"),
              (settings.home.resolve(), "the lorafleet home")]
    for url, what in ((settings.database_url, "the registry's database"),
                      (settings.broker_url, "the broker's database")):
        path = _sqlite_file(url)
        if path is not None:
            places.append((path, what))
    return places


def _resolve(path: Path, what: str) -> Path:
    """The absolute path with every symbolic link followed; InvalidInput for a dangling link (the
    path itself or a folder on the way) or a loop."""
    given = Path(path).expanduser().absolute()
    for step in (given, *given.parents):
        if step.is_symlink() and not step.exists():
            target = os.readlink(step)
            where = "" if step == given else f" (on the way to {given})"
            raise InvalidInput(f"{what}: {step} is a symbolic link to {target}, which leads nowhere "
                               f"(missing, or a loop of links){where}; nothing is created where a dangling "
                               "link points: give another path, or remove the link")
    try:
        return given.resolve(strict=False)
    except (OSError, RuntimeError) as exc:  # a loop of links
        raise InvalidInput(f"{what}: {given} cannot be resolved ({exc}); give a plain path") from None


def _outside_protected(path: Path, settings: Settings, what: str, *, folder: bool) -> None:
    places = _protected(settings)
    # The place it is inside first (the narrowest reason), then one a new folder would swallow.
    clashes = [("is inside", place, name) for place, name in places if _inside(path, place)]
    if folder:
        clashes += [("contains", place, name) for place, name in places if _inside(place, path)]
    if clashes:
        relation, place, name = clashes[0]
        raise InvalidInput(f"{what}: {path} {relation} {name} ({place}), which lorafleet manages itself; "
                           "write somewhere else")


def _parent_is_folder(path: Path, what: str) -> None:
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise InvalidInput(f"{what}: {parent} is {_kind(parent.stat().st_mode)}, not a "
                                   "folder; give a path inside a folder")
            return


def file_destination(path: Path, settings: Settings, what: str) -> Path:
    """The resolved path where `what` may write a file named `path` (see the module docstring):
    absent (its folders are created), or an existing regular file that it replaces whole."""
    resolved = _resolve(path, what)
    _outside_protected(resolved, settings, what, folder=False)
    if resolved.exists():
        mode = resolved.stat().st_mode
        if not stat.S_ISREG(mode):
            via = f" (where the link {path} points)" if resolved != Path(path).absolute() else ""
            raise InvalidInput(f"{what}: {resolved}{via} is {_kind(mode)}; give the path of a new or "
                               "existing regular file (to print to the terminal, leave the option out)")
    else:
        _parent_is_folder(resolved, what)
    return resolved


def folder_destination(path: Path, settings: Settings, what: str, *, may_hold: Collection[str] = (),
                       allowed: str = "a new or empty folder") -> Path:
    """The resolved path where `what` may put a folder named `path` (see the module docstring):
    absent (its parents are created), or an existing folder holding nothing but entries named in
    `may_hold` (none: it must be empty). `allowed` says what the refusal offers instead."""
    resolved = _resolve(path, what)
    _outside_protected(resolved, settings, what, folder=True)
    if resolved.exists():
        mode = resolved.stat().st_mode
        if not stat.S_ISDIR(mode):
            raise InvalidInput(f"{what}: {resolved} is {_kind(mode)}; give {allowed}")
        others = sorted(entry.name for entry in resolved.iterdir() if entry.name not in may_hold)
        if others:
            shown = ", ".join(name for name in others[:SHOWN_ENTRIES])
            more = f" and {len(others) - SHOWN_ENTRIES} more" if len(others) > SHOWN_ENTRIES else ""
            raise InvalidInput(f"{what}: {resolved} is not empty (it holds {shown}{more}); "
                               f"give {allowed}")
    else:
        _parent_is_folder(resolved, what)
    return resolved
