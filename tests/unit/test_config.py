"""Settings: typed LORAFLEET_* variables, one-line errors, the home found like git finds a repository,
and `lorafleet config show`. The CLI's start-up loads no pydantic (`--help` stays fast)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.config import ConfigError, Settings, env_var, load_settings

ROOT = Path(__file__).resolve().parents[2]


def lorafleet(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """The console script in a fresh process, with exactly `env` (plus PATH/PYTHONPATH)."""
    full = {"PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT), "HOME": env.get("HOME", str(cwd)), **env}
    return subprocess.run([sys.executable, "-m", "orchestrator.cli.main", *args], env=full, cwd=cwd,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(("variable", "value", "allowed"), [
    ("LORAFLEET_LEASE_SECONDS", "abc", "a whole number of seconds > 0"),
    ("LORAFLEET_LEASE_SECONDS", "0", "a whole number of seconds > 0"),
    ("LORAFLEET_MAX_ATTEMPTS", "1.5", "an integer >= 1"),
    ("LORAFLEET_CHECKPOINT_EVERY", "-2", "an integer >= 1"),
    ("LORAFLEET_VISIBILITY_TIMEOUT", "soon", "a whole number of seconds > 0"),
    ("LORAFLEET_TENANT_MAX_RUNNING", "0", "an integer >= 1"),
    ("LORAFLEET_PRICES", "cuda", "comma-separated device=price pairs"),
    ("LORAFLEET_PRICES", "cuda=cheap", "comma-separated device=price pairs"),
    ("LORAFLEET_METRICS_PORT", "70000", "a TCP port 1..65535"),
    ("LORAFLEET_LOG_FORMAT", "xml", "text or json"),
])
def test_a_bad_value_names_the_variable_and_what_is_allowed(tmp_path, variable, value, allowed):
    with pytest.raises(ConfigError) as raised:
        load_settings({"LORAFLEET_HOME": str(tmp_path), variable: value})
    message = str(raised.value)
    assert message.startswith(f"{variable}={value!r} is not valid")
    assert allowed in message and "\n" not in message


def test_values_are_typed_and_the_registry_defaults_under_the_home(tmp_path):
    s = load_settings({"LORAFLEET_HOME": str(tmp_path / "h"), "LORAFLEET_LEASE_SECONDS": "30",
                       "LORAFLEET_PRICES": "cuda=3, tpu=1", "LORAFLEET_METRICS_PORT": ""})
    assert s.lease_seconds == 30 and s.metrics_port is None
    assert s.prices == {"cpu": 0.05, "cuda": 3.0, "tpu": 1.0}
    assert s.database_url == f"sqlite:///{tmp_path / 'h' / 'registry.db'}"
    assert s.artifacts == tmp_path / "h" / "artifacts"
    sources = (s.source_of("home"), s.source_of("lease_seconds"), s.source_of("queue"))
    assert sources == ("env", "env", "default")
    with pytest.raises(ValueError, match="frozen"):
        s.queue = "cpu"  # type: ignore[misc]


def test_the_home_is_the_nearest_dot_lorafleet_else_a_per_user_folder(tmp_path):
    project = tmp_path / "project"
    (project / ".lorafleet").mkdir(parents=True)
    (project / "a" / "b").mkdir(parents=True)
    found = load_settings({}, cwd=project / "a" / "b")
    assert (found.home, found.source_of("home")) == (project / ".lorafleet", "discovered")
    assert load_settings({"LORAFLEET_HOME": str(tmp_path / "x")}, cwd=project).home == tmp_path / "x"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    per_user = load_settings({"XDG_DATA_HOME": str(tmp_path / "xdg")}, cwd=elsewhere)
    # platformdirs reads XDG_DATA_HOME from os.environ; whatever it picks, it is not the cwd.
    assert per_user.source_of("home") == "default (per-user)"
    assert elsewhere not in (per_user.home, *per_user.home.parents)


def test_every_field_is_a_listed_variable():
    names = [env_var(n) for n in Settings.model_fields]
    assert len(names) == len(set(names))
    for name, info in Settings.model_fields.items():
        assert info.description, f"{name} needs a description (config show and the README list it)"
        assert (info.json_schema_extra or {}).get("allowed"), f"{name} needs `allowed` text for its errors"


def test_cli_prints_a_bad_variable_as_one_line_without_traceback(tmp_path):
    out = lorafleet("tenant", "list", env={"LORAFLEET_HOME": str(tmp_path), "LORAFLEET_LEASE_SECONDS": "abc"},
                    cwd=tmp_path)
    assert out.returncode == 1
    assert out.stderr.strip().splitlines() == [
        "Error: LORAFLEET_LEASE_SECONDS='abc' is not valid (Input should be a valid integer, unable to parse "
        "string as an integer); allowed: a whole number of seconds > 0"
    ]


def test_config_show_and_init_and_the_new_registry_notice(tmp_path):
    work = tmp_path / "work"
    (work / "sub").mkdir(parents=True)
    env = {"HOME": str(tmp_path / "user"), "XDG_DATA_HOME": str(tmp_path / "user" / "data"),
           "LORAFLEET_QUEUE": "cpu"}
    assert lorafleet("config", "init", env=env, cwd=work).returncode == 0
    shown = lorafleet("config", "show", "--json", env=env, cwd=work / "sub")
    rows = {row["variable"]: row for row in json.loads(shown.stdout)}
    assert set(rows) == {env_var(n) for n in Settings.model_fields}
    assert rows["LORAFLEET_HOME"] == {"variable": "LORAFLEET_HOME", "value": str(work / ".lorafleet"),
                                      "source": "discovered"}
    assert (rows["LORAFLEET_QUEUE"]["value"], rows["LORAFLEET_QUEUE"]["source"]) == ("cpu", "env")
    assert rows["LORAFLEET_LEASE_SECONDS"]["source"] == "default"
    first = lorafleet("tenant", "list", env=env, cwd=work / "sub")
    again = lorafleet("tenant", "list", env=env, cwd=work)
    assert f"new registry {work / '.lorafleet' / 'registry.db'}" in first.stderr
    assert "new registry" not in again.stderr
    assert not (work / "sub" / ".lorafleet").exists()


@pytest.mark.parametrize("args", [["--help"], ["job", "--help"]])
def test_help_loads_no_pydantic(args):
    probe = ("import sys; from click.testing import CliRunner; from orchestrator.cli.main import cli; "
             f"CliRunner().invoke(cli, {args!r}); print(sorted(m for m in ('pydantic', 'pydantic_settings', "
             "'platformdirs', 'rich', 'sqlalchemy', 'torch', 'celery', 'kombu') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]"


SUBMIT_PROBE = """
import gc, json, sys
from click.testing import CliRunner
from orchestrator.cli.main import cli

usual, collections = gc.get_threshold(), []
gc.callbacks.append(lambda phase, info: phase == "start" and collections.append(info["generation"]))
result = CliRunner().invoke(cli, ["job", "submit", "--tenant", "a", "--task", "sst2",
                                  "--base-model", "tiny-bert", "--max-steps", "5", "--json"])
during = len(collections)
gc.collect()
unrelated = ("celery", "torch", "transformers", "alembic", "orchestrator.services.leases",
             "orchestrator.services.reevaluation", "orchestrator.services.metrics")
print(json.dumps({"output": result.output, "collections": during, "restored": gc.get_threshold() == usual,
                  "modules": sorted(m for m in sys.modules if m.startswith("orchestrator.cli.")),
                  "unrelated": [m for m in unrelated if m in sys.modules]}))
"""


def test_job_submit_imports_only_its_own_command_and_runs_no_garbage_collection(tmp_path):
    # The root group imports the invoked command's module only (cli/lazy.py); the submit imports
    # neither Celery nor the worker's services; the garbage collector waits for the end of
    # start-up (cli.main.defer_gc), then has its usual thresholds.
    env = {"LORAFLEET_HOME": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    assert lorafleet("tenant", "create", "a", env=env, cwd=tmp_path).returncode == 0
    full = {"PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT), "HOME": str(tmp_path), **env}
    out = subprocess.run([sys.executable, "-c", SUBMIT_PROBE], capture_output=True, text=True, cwd=ROOT,
                         check=True, env=full)
    seen = json.loads(out.stdout)
    assert json.loads(seen["output"])["id"]
    assert seen["modules"] == [f"orchestrator.cli.{m}" for m in (
        "examples", "helpers", "job", "lazy", "main", "output", "spec_options")]
    assert seen["unrelated"] == []
    assert (seen["collections"], seen["restored"]) == (0, True)
    listed = lorafleet("job", "list", "--json", env=env, cwd=tmp_path)
    assert [j["state"] for j in json.loads(listed.stdout)] == ["queued"]
