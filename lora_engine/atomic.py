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
    and every folder in it."""
    for root, _dirs, files in os.walk(folder):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
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
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = _sibling(final, "tmp")
    tmp.mkdir()
    try:
        yield tmp
        fsync_tree(tmp)
        move_into_place(tmp, final, replace=replace)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` through a temporary sibling file, fsynced, then renamed over `path`:
    a reader sees the old content or the new, never a part. Parent folders are created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _sibling(path, "tmp")
    try:
        with open(tmp, "xb") as f:  # an ordinary file: the umask decides its mode, as for open()
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """`atomic_write_bytes` of `text` encoded as UTF-8."""
    return atomic_write_bytes(path, text.encode("utf-8"))
