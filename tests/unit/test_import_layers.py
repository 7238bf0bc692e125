"""The import graph of `orchestrator/` has no arrow back up into the services.

The floor is every orchestrator module the services import, directly or through each other
(config, errors, paths, artifacts, retries, the registry, ...). A floor module that imported a
service would make the two one tangle: read statically with `ast`, function-local imports
included, so a lazy import does not hide an arrow.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SERVICES = "orchestrator.services"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """The orchestrator modules `path` imports (a `from pkg import name` counts as `pkg.name`
    when that is a module, else as `pkg`)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in found if name.split(".")[0] == "orchestrator"}


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in (ROOT / "orchestrator").rglob("*.py")}
    return {name: {m for m in _imports(path) if m in modules} for name, path in modules.items()}


def _in_services(name: str) -> bool:
    return name == SERVICES or name.startswith(SERVICES + ".")


def test_no_floor_module_imports_a_service():
    graph = _graph()
    floor: set[str] = set()
    todo = [m for name, deps in graph.items() if _in_services(name) for m in deps]
    while todo:
        name = todo.pop()
        if _in_services(name) or name in floor:
            continue
        floor.add(name)
        todo.extend(graph[name])
    up = sorted(f"{name} -> {dep}" for name in floor for dep in graph[name] if _in_services(dep))
    assert up == [], "floor modules import services (arrows back up):\n" + "\n".join(up)
    assert {f"orchestrator.{m}" for m in ("errors", "paths", "artifacts", "retries")} <= floor
