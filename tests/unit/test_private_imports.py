"""No module of the product imports another module's private (`_name`) names: what a module
shares is public and documented, so a change inside it cannot break a neighbour unseen."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("orchestrator", "worker", "lora_engine", "bench", "examples")


def _private_imports(source: str, name: str) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module != "__future__":
            found += [f"{name}:{node.lineno}: from {'.' * node.level}{node.module or ''} import {a.name}"
                      for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
    return found


def test_no_module_imports_another_modules_private_names():
    files = [p for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py"))]
    assert len(files) > 50  # the packages are where this test thinks they are
    hits = [hit for p in files
            for hit in _private_imports(p.read_text(encoding="utf-8"), str(p.relative_to(ROOT)))]
    assert hits == []


def test_the_check_sees_a_private_import_even_inside_a_function():
    source = "def f():\n    from worker.runner import WARM_CACHE, _model_cache\n"
    assert _private_imports(source, "m.py") == ["m.py:2: from worker.runner import _model_cache"]
