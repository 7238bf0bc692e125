"""The one resolver of every path a user gives: data set files, `job submit-batch` files, base model
folders, adapter folders to import or to start from.

A path is the way a tenant could reach what is not its own: `/etc/passwd` as "training data", a
folder of symlinks into another tenant's adapter, a README.md that links to `/proc/self/environ`,
a FIFO that hangs a read, `/dev/zero` that fills the memory. So, for every path a user gives:

- the path itself may be a symlink (or pass through one), but what it resolves to lies inside a
  data root (`LORAFLEET_DATA_ROOTS`; default: the current folder, see `config.default_root_problem`)
  and never inside the home (`registry.db`, `broker.db`) or the artifacts root (adapters and data
  sets stored there are named by id, so ownership and lineage are checked);
- a file is a regular file no larger than its cap: checked with fstat on the opened descriptor
  (opened non-blocking, so a FIFO cannot hang the open), and at most cap + 1 bytes are ever read
  (a file that grows while it is read is refused too);
- a folder holds only regular files and folders (no symlink, device, FIFO or socket anywhere in
  it), at most `max_folder_depth` deep, `max_folder_entries` entries and `max_folder_bytes` in all.

Every refusal is a `PathRefused` (an InvalidInput) naming the path, what was wrong and what is
allowed. It runs at the door (CLI and services) and again on the worker, with the worker's own
settings, where a job names a folder the worker opens (a base model): a folder swapped for links
after the submission is refused there.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from orchestrator.config import Settings, default_root_problem
from orchestrator.errors import InvalidInput

ROOTS_VAR = "LORAFLEET_DATA_ROOTS"
MAX_LISTED = 20  # problems of one folder named in a refusal; the rest are counted
_CHUNK = 1 << 20
_OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC | os.O_NOFOLLOW


class PathRefused(InvalidInput):
    """A path a user gave that lorafleet will not read; the message says why and what is allowed."""


class NoDataRoot(PathRefused):
    """No data root is configured and the current folder cannot be the default one."""


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def _kind_of(mode: int) -> str:
    for test, name in ((stat.S_ISLNK, "a symlink"), (stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def allowed_roots(settings: Settings) -> str:
    """What a user's path may be: the roots, what is excluded, and the variable that sets them."""
    roots = ", ".join(str(r) for r in settings.data_roots)
    return (f"allowed data roots: {roots} ({ROOTS_VAR}, ':'-separated, sets them), never inside the "
            f"home ({settings.home}) or the artifacts root ({settings.artifacts})")


def _no_root(value: str, settings: Settings, what: str) -> NoDataRoot:
    why = default_root_problem(Path.cwd().resolve(), settings.home, settings.artifacts)
    why = why or "the current folder cannot be one"
    return NoDataRoot(f"{what}: {value!r} cannot be read: there is no data root ({why}); set {ROOTS_VAR} "
                      "to the ':'-separated folders your data sets, batch files and model folders are in")


def resolve(value: str | os.PathLike, settings: Settings, what: str) -> Path:
    """The resolved path of `value` (symlinks followed) if it lies inside a data root and outside
    the home and the artifacts root; it need not exist. PathRefused otherwise."""
    given = str(value)
    if not settings.data_roots:
        raise _no_root(given, settings, what)
    raw = Path(given).expanduser()
    if ".." in raw.parts:
        raise PathRefused(f"{what}: {given!r} contains '..'; give a path inside a data root; "
                          f"{allowed_roots(settings)}")
    try:
        resolved = raw.resolve()
    except (OSError, RuntimeError) as exc:  # a symlink loop, a name too long
        raise PathRefused(f"{what}: {given!r} cannot be resolved ({type(exc).__name__}); "
                          f"{allowed_roots(settings)}") from None
    for place, name, hint in (
        (settings.artifacts.resolve(), "the artifacts root",
         "adapters and data sets stored there are named by id (--init-from ID, --dataset ID, "
         "--base-model ID for a tenant's own full fine-tune)"),
        (settings.home.resolve(), "the lorafleet home", "the registry and the broker live there"),
    ):
        if _inside(resolved, place):
            raise PathRefused(f"{what}: {given!r} points into {name} ({place}); {hint}; "
                              f"{allowed_roots(settings)}")
    if not any(_inside(resolved, root) for root in settings.data_roots):
        via = " (a symlink to a place outside them)" if resolved != raw.absolute() else ""
        raise PathRefused(f"{what}: {given!r} is outside the allowed data roots{via}; "
                          f"{allowed_roots(settings)}")
    return resolved


@dataclass(frozen=True)
class OpenFile:
    path: Path  # resolved and confined
    file: BinaryIO  # opened read-only on a regular file
    size: int  # as fstat saw it when opened


@contextlib.contextmanager
def open_file(value: str | os.PathLike, settings: Settings, what: str, *, cap: int, cap_var: str
              ) -> Iterator[OpenFile]:
    """The confined regular file `value`, opened for reading; PathRefused when it is missing, not a
    regular file (fstat on the opened descriptor: a FIFO does not block the open) or larger than
    `cap` bytes (`cap_var` is the setting that sets the cap, named in the refusal)."""
    path = resolve(value, settings, what)
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except FileNotFoundError:
        raise PathRefused(f"{what}: no such file {str(value)!r}") from None
    except OSError as exc:  # ELOOP: the last part became a symlink after it was resolved
        raise PathRefused(f"{what}: {str(value)!r} cannot be opened ({os.strerror(exc.errno or 0)}); give a "
                          "regular file") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise PathRefused(f"{what}: {str(value)!r} is {_kind_of(st.st_mode)}; give a regular file")
        if st.st_size > cap:
            raise PathRefused(f"{what}: {str(value)!r} is {st.st_size} bytes; the limit is {cap} bytes "
                              f"({cap_var})")
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
        file = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with file:
        yield OpenFile(path, file, st.st_size)


def regular_file(value: str | os.PathLike, settings: Settings, what: str, *, cap: int, cap_var: str) -> Path:
    """The resolved path of the confined regular file `value` (checked as `open_file` checks it,
    nothing read): a refusal at once, before the file is read in full later."""
    with open_file(value, settings, what, cap=cap, cap_var=cap_var) as opened:
        return opened.path


def _chunks(opened: OpenFile, value: str | os.PathLike, what: str, cap: int, cap_var: str) -> Iterator[bytes]:
    """The file's bytes, at most cap + 1 of them read: one byte over the cap is a refusal."""
    total = 0
    while chunk := opened.file.read(min(_CHUNK, cap + 1 - total)):
        total += len(chunk)
        if total > cap:
            raise PathRefused(f"{what}: {str(value)!r} grew past the limit of {cap} bytes ({cap_var}) while "
                              "it was read")
        yield chunk


def read_file(value: str | os.PathLike, settings: Settings, what: str, *, cap: int, cap_var: str
              ) -> tuple[Path, bytes]:
    """(resolved path, content) of the confined regular file `value`, at most `cap` bytes."""
    with open_file(value, settings, what, cap=cap, cap_var=cap_var) as opened:
        return opened.path, b"".join(_chunks(opened, value, what, cap, cap_var))


@dataclass(frozen=True)
class CopiedFile:
    source: Path  # the user's file, resolved
    sha256: str
    size: int


def copy_file(value: str | os.PathLike, settings: Settings, what: str, dest: Path, *, cap: int, cap_var: str
              ) -> CopiedFile:
    """Copy the confined regular file `value` to the new file `dest` (created owner-only), hashing
    the bytes on the way: whatever is checked next is read from `dest`, lorafleet's own copy, so the
    user's file is opened once and a file swapped meanwhile changes nothing."""
    digest, size = hashlib.sha256(), 0
    with open_file(value, settings, what, cap=cap, cap_var=cap_var) as opened, \
            open(os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600), "wb") as out:
        for chunk in _chunks(opened, value, what, cap, cap_var):
            digest.update(chunk)
            size += len(chunk)
            out.write(chunk)
    return CopiedFile(opened.path, digest.hexdigest(), size)


def folder_problems(folder: Path, settings: Settings) -> list[str]:
    """Why the folder `folder` cannot be read as a whole (empty: it can): every entry that is not a
    regular file or folder, and the first bound it passes (entries, depth, bytes)."""
    problems: list[str] = []
    entries, total = 0, 0
    stack: list[tuple[Path, int]] = [(folder, 0)]
    while stack:
        current, depth = stack.pop()
        try:
            with os.scandir(current) as listing:
                children = sorted(listing, key=lambda e: e.name)
        except OSError as exc:
            problems.append(f"{_rel(current, folder)!r} cannot be listed ({os.strerror(exc.errno or 0)})")
            continue
        for entry in children:
            entries += 1
            if entries > settings.max_folder_entries:
                return [*problems, f"it holds more than {settings.max_folder_entries} files and folders "
                                   "(LORAFLEET_MAX_FOLDER_ENTRIES)"]
            rel = _rel(Path(entry.path), folder)
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError as exc:  # removed while listed
                problems.append(f"{rel!r} cannot be read ({os.strerror(exc.errno or 0)})")
                continue
            if stat.S_ISDIR(st.st_mode):
                if depth + 1 >= settings.max_folder_depth:
                    problems.append(f"{rel!r} is nested deeper than {settings.max_folder_depth} folders "
                                    "(LORAFLEET_MAX_FOLDER_DEPTH)")
                else:
                    stack.append((Path(entry.path), depth + 1))
            elif stat.S_ISREG(st.st_mode):
                total += st.st_size
            else:
                problems.append(f"{rel!r} is {_kind_of(st.st_mode)}")
        if total > settings.max_folder_bytes:
            return [*problems, f"its files hold more than {settings.max_folder_bytes} bytes "
                               "(LORAFLEET_MAX_FOLDER_BYTES)"]
    return problems


def _rel(path: Path, folder: Path) -> str:
    return path.relative_to(folder).as_posix() if path != folder else "."


def folder(value: str | os.PathLike, settings: Settings, what: str) -> Path:
    """The resolved, confined folder `value`, after checking every entry in it (`folder_problems`);
    PathRefused naming the first `MAX_LISTED` problems (and how many more) otherwise."""
    path = resolve(value, settings, what)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise PathRefused(f"{what}: no such folder {str(value)!r}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise PathRefused(f"{what}: {str(value)!r} is {_kind_of(st.st_mode)}; give a folder")
    problems = folder_problems(path, settings)
    if problems:
        more = len(problems) - MAX_LISTED
        listed = "; ".join(problems[:MAX_LISTED]) + (f"; and {more} more" if more > 0 else "")
        raise PathRefused(f"{what}: folder {str(value)!r} cannot be used: {listed}. Allowed in a folder: "
                          "regular files and folders only (copy files in instead of linking them)")
    return path
