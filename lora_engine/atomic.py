"""Folders and files that appear whole or not at all: written beside their final place, then renamed.

    with atomic_folder(final, replace=True) as tmp:   # tmp: an empty sibling folder of `final`
        ... write files into tmp ...
    # success: every file fsynced, tmp renamed to `final`; failure: tmp removed, `final` untouched

A rename within one file system is atomic, so a reader (or a crash) sees the old folder or the
new one, never half of one. Everything is fsynced before the rename and the parent folder after
it, so after a power loss the name never points at files whose data was not yet on disk.

`replace=True` swaps an existing folder out only once the new one is complete (old → a hidden
sibling, new → `final`, old removed); if the second rename fails the old one is put back. Between
those two renames `final` is briefly absent (POSIX has no portable exchange of two folders), never
half written.
`replace=False` refuses an existing `final` with FileExistsError (nothing written), so two writers
of the same new folder never mix their files.

Owner-only: a folder `atomic_folder` publishes, and every file and folder in it, is private to the
user running lorafleet (folders 0700, files 0600, whatever the umask), since they hold tenants' data
sets and weights; `private_dir` and `private_file` create the folders and files other writers fill
(the home, the artifacts root, the SQLite registry and broker, logs). `atomic_write_*` writes an
ordinary file (a report a person asked for) unless told `private=True`.

Torch-free: the orchestrator uses it for data sets, imports and reports, the engine for adapters,
checkpoints and converted models.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

DIR_MODE = 0o700
FILE_MODE = 0o600


def private_dir(path: str | os.PathLike) -> Path:
    """`path` as a folder: created owner-only (with any missing parents) if it is not there; an
    existing folder is left as it is."""
    path = Path(path)
    if path.is_dir():
        return path
    missing = [p for p in (path, *path.parents) if not p.exists()]
    for folder in reversed(missing):
        with contextlib.suppress(FileExistsError):  # a concurrent creator: theirs is as good
            folder.mkdir(mode=DIR_MODE)
    return path


def private_file(path: str | os.PathLike) -> Path:
    """`path` as an owner-only file: created empty (and its folder owner-only) if it is not there,
    so that whoever fills it (SQLite, a log) keeps the mode; an existing file is left as it is."""
    path = Path(path)
    private_dir(path.parent)
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE))
    return path


def _sibling(path: Path, tag: str) -> Path:
    # Hidden, unique, and in the same folder (same file system: the rename stays atomic).
    return path.with_name(f".{path.name}.{tag}-{uuid.uuid4().hex[:8]}")


def fsync_dir(path: str | os.PathLike) -> None:
    """Make the folder's entries (a rename into it) durable; a no-op where folders cannot be
    opened (some platforms and network file systems)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(folder: Path) -> None:
    """fsync every file under `folder` (whoever wrote them: safetensors, save_pretrained, copies)
    and every folder in it, making each owner-only on the way (their writers used the umask)."""
    for root, dirs, files in os.walk(folder):
        os.chmod(root, DIR_MODE)
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY | os.O_NOFOLLOW)
            try:
                os.fchmod(fd, FILE_MODE)
                os.fsync(fd)
            finally:
                os.close(fd)
        for name in dirs:  # os.walk lists a symlink to a folder here without entering it
            if os.path.islink(os.path.join(root, name)):
                raise OSError(f"{os.path.join(root, name)} is a symlink; an artifact folder holds none")
        fsync_dir(root)


def move_into_place(src: str | os.PathLike, final: str | os.PathLike, *, replace: bool = False) -> Path:
    """Rename the finished folder `src` to `final` (same file system), durably.

    replace=False: FileExistsError if `final` exists (src is left where it is).
    replace=True: an existing `final` is swapped out first and removed once `src` is in place.
    """
    src, final = Path(src), Path(final)
    old = None
    if final.exists() or final.is_symlink():
        if not replace:
            raise FileExistsError(errno.EEXIST, "already exists", str(final))
        old = _sibling(final, "old")
        os.replace(final, old)
    try:
        if replace:
            os.replace(src, final)
        else:
            # A non-empty folder that appeared since the check fails with ENOTEMPTY/EEXIST: the
            # same "someone else made it" case. (An empty one is replaced: nothing is lost.)
            try:
                os.rename(src, final)
            except OSError as exc:
                if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
                    raise FileExistsError(errno.EEXIST, "already exists", str(final)) from exc
                raise
    except BaseException:
        if old is not None:
            os.replace(old, final)  # the new folder did not make it: the old one is back
        raise
    fsync_dir(final.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return final


@contextlib.contextmanager
def atomic_folder(final: str | os.PathLike, *, replace: bool = False) -> Iterator[Path]:
    """Yield an empty temporary sibling of `final`; when the block succeeds it is fsynced and
    renamed to `final` (see `move_into_place` for `replace`); when the block raises, it is removed
    and `final` is as it was. FileExistsError before the block runs when `final` exists and
    `replace` is False."""
    final = Path(final)
    if not replace and (final.exists() or final.is_symlink()):
        raise FileExistsError(errno.EEXIST, "already exists", str(final))
    private_dir(final.parent)
    tmp = _sibling(final, "tmp")
    tmp.mkdir(mode=DIR_MODE)
    try:
        yield tmp
        fsync_tree(tmp)
        move_into_place(tmp, final, replace=replace)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, private: bool = False) -> Path:
    """Write `data` to `path` through a temporary sibling file, fsynced, then renamed over `path`:
    a reader sees the old content or the new, never a part. Parent folders are created. `private`:
    owner-only (a file under the home); else an ordinary file whose mode the umask decides, as for
    open() (a report a person asked for, in a folder of theirs)."""
    path = Path(path)
    if private:
        private_dir(path.parent)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _sibling(path, "tmp")
    mode = FILE_MODE if private else 0o666
    try:
        with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode), "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def atomic_write_text(path: str | os.PathLike, text: str, *, private: bool = False) -> Path:
    """`atomic_write_bytes` of `text` encoded as UTF-8."""
    return atomic_write_bytes(path, text.encode("utf-8"), private=private)
