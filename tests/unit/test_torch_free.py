"""The torch-free engine modules, declared once (`lora_engine.TORCH_FREE`): each imports neither
torch nor transformers, and the orchestrator imports no other engine module outside its
commands that run models (a CLI command may import e.g. `lora_engine.predict` when it runs)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import lora_engine

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "transformers")
PROBE = "import sys, {0}; print(sorted(m for m in {1!r} if m in sys.modules))"


def test_each_torch_free_module_imports_no_torch_in_a_fresh_interpreter():
    probes = {name: subprocess.Popen([sys.executable, "-c", PROBE.format(name, HEAVY)], cwd=ROOT,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
              for name in lora_engine.TORCH_FREE}
    loaded = {}
    for name, probe in probes.items():
        out, err = probe.communicate(timeout=120)
        assert probe.returncode == 0, f"{name}: {err}"
        loaded[name] = out.strip()
    assert {name: seen for name, seen in loaded.items() if seen != "[]"} == {}


def _engine_imports(tree: ast.Module, *, local: bool) -> set[str]:
    """The lora_engine modules imported at module level (and, with `local`, inside functions)."""
    nodes = ast.walk(tree) if local else (n for top in tree.body for n in ast.walk(top)
                                         if not isinstance(top, (ast.FunctionDef, ast.AsyncFunctionDef)))
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
    modules = {".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
               for p in (ROOT / "lora_engine").rglob("*.py")}
    return found & modules


def test_the_orchestrator_imports_only_torch_free_engine_modules():
    # Module level anywhere; and every import of the services, the registry and the reports
    # (what an API calls runs no model). Only the CLI's commands may import more, inside them.
    outside = {}
    for path in (ROOT / "orchestrator").rglob("*.py"):
        tree = ast.parse(path.read_text(), str(path))
        local = path.relative_to(ROOT).parts[1] != "cli"
        for name in _engine_imports(tree, local=local) - set(lora_engine.TORCH_FREE):
            outside.setdefault(name, []).append(str(path.relative_to(ROOT)))
    assert outside == {}


def test_the_api_process_imports_no_torch_transformers_or_celery():
    # The tenants' API trains nothing: its app, every router included, loads none of them.
    probe = ("import sys, orchestrator.api.app as a; a.create_app(); "
             "print(sorted(m for m in ('torch', 'transformers', 'celery') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
