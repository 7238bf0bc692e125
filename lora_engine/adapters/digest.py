"""The checksum and size of an adapter (or any artifact) folder, without torch: the CLI verifies a
folder before `adapter export` and `adapter predict`, and the worker hashes a new adapter once, at
publish."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from lora_engine.errors import AdapterError


def adapter_files_digest(folder: str | os.PathLike) -> tuple[str, int]:
    """(sha256 over the folder's files, names included, in sorted order; total bytes)."""
    folder = Path(folder)
    digest = hashlib.sha256()
    total = 0
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        digest.update(rel.encode() + b"\0")
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
                total += len(chunk)
        digest.update(b"\0")
    return digest.hexdigest(), total


def folder_bytes(folder: str | os.PathLike) -> int:
    """Total size of the files under `folder` (the bytes `adapter_files_digest` hashes)."""
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())


def verify_adapter_files(folder: str | os.PathLike, sha256: str) -> Path:
    """`folder`, if its files hash to `sha256` (the digest recorded when it was made); else
    AdapterError: a folder changed, truncated or swapped since is never loaded."""
    folder = Path(folder)
    if not folder.is_dir():
        raise AdapterError(f"adapter folder {str(folder)!r} is missing")
    found, _ = adapter_files_digest(folder)
    if found != sha256:
        raise AdapterError(f"adapter folder {str(folder)!r} changed since it was registered "
                           f"(sha256 {found} != {sha256}); refusing to load it")
    return folder
