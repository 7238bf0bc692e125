"""Paths a user passes, confined: inside the configured data roots, never into the artifacts root.

A tenant names its own files (a JSONL data set, a local model folder) by path, so a path is the
one way it could reach what is not its own: `/etc/passwd` as "training data", `../../` out of its
folder, a symlink pointing elsewhere, or another tenant's adapter or full fine-tune folder under
the artifacts root (those are reached by id only, so lineage is recorded). Checks here run on
the resolved path (symlinks followed), and the refusal names the allowed roots.
"""

from __future__ import annotations

from pathlib import Path

from orchestrator.config import Settings
from orchestrator.errors import InvalidInput


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def confine(value: str | Path, settings: Settings, what: str) -> Path:
    """The resolved path of `value` if it lies inside a data root and outside the artifacts root;
    else InvalidInput saying why and which roots are allowed."""
    raw = Path(value).expanduser()
    roots = ", ".join(str(r) for r in settings.data_roots)
    allowed = f"allowed data roots: {roots} (LORAFLEET_DATA_ROOTS, ':'-separated, sets them)"
    if ".." in raw.parts:
        raise InvalidInput(f"{what}: {str(value)!r} contains '..'; give a path inside a data root; {allowed}")
    resolved = raw.resolve()
    artifacts = settings.artifacts.resolve()
    if _inside(resolved, artifacts):
        raise InvalidInput(f"{what}: {str(value)!r} points into the artifacts root ({artifacts}); adapters "
                           "and data sets stored there are named by id (--init-from ID, --dataset ID)")
    if not any(_inside(resolved, root.resolve()) for root in settings.data_roots):
        via = " (a symlink to a place outside them)" if raw.is_symlink() or resolved != raw.absolute() else ""
        raise InvalidInput(f"{what}: {str(value)!r} is outside the allowed data roots{via}; {allowed}")
    return resolved
