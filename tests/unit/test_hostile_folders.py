"""Hostile folders through the CLI on an embedded home, and on the worker: `adapter import` follows no
symlink and stores no unconfined base; a job starting from that adapter cannot pass one on; a
base-model folder swapped for links after submit fails its job on the worker; a command run from
`/` has no data root; what lorafleet creates under the home is owner-only."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from lora_engine.adapters.folder import AdapterMeta
from lora_engine.adapters.io import save_adapter
from lora_engine.catalog import TASKS
from lora_engine.inject import LoraSettings, head_module_names, inject_lora
from lora_engine.models import minilm_tokenizer
from orchestrator.cli.main import cli
from orchestrator.config import get_settings, load_settings
from orchestrator.registry.db import forget_engine
from orchestrator.services.jobs import get_job, submit_job
from orchestrator.services.tenants import create_tenant

pytest_plugins = ["registry_fixtures"]
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("LORAFLEET_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("LORAFLEET_DATA_ROOTS", str(tmp_path / "data"))
    for var in ("LORAFLEET_DATABASE_URL", "LORAFLEET_BROKER_URL", "LORAFLEET_ARTIFACTS"):
        monkeypatch.delenv(var, raising=False)
    (tmp_path / "data").mkdir()
    monkeypatch.chdir(tmp_path / "data")
    get_settings.cache_clear()
    yield tmp_path / "home"
    from orchestrator.dispatch import close_clients

    close_clients()
    forget_engine(get_settings().database_url)
    get_settings.cache_clear()


def dump(home: Path) -> tuple:
    """Every row of every registry table, and every file under the artifacts root."""
    with sqlite3.connect(home / "registry.db") as conn:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        rows = {t: sorted(map(repr, conn.execute(f'SELECT * FROM "{t}"'))) for t in sorted(tables)}
    return rows, sorted(str(p) for p in (home / "artifacts").rglob("*"))


def lora_adapter(tiny_model, folder: Path, base_name_or_path: str) -> Path:
    """A LoRA adapter on tiny-bert whose adapter_config.json names `base_name_or_path`."""
    model, _ = tiny_model("tiny-bert", "classification", 2)
    settings = LoraSettings(rank=4, alpha=8)
    inject_lora(model, settings)
    meta = AdapterMeta.for_task(TASKS["sst2"], base_model="tiny-bert", method="lora")
    save_adapter(model, folder, base_model_name="tiny-bert", settings=settings, task_type="classification",
                 modules_to_save=head_module_names(model), meta=meta)
    config = json.loads((folder / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = base_name_or_path
    (folder / "adapter_config.json").write_text(json.dumps(config))
    return folder


def cli_run(*args: str):
    result = CliRunner().invoke(cli, list(args))
    return result, result.output + (result.stderr if result.stderr_bytes is not None else "")


def test_adapter_import_and_init_from_follow_no_link_and_store_no_unconfined_base(home, tiny_model, tmp_path):
    data = tmp_path / "data"
    old_umask = os.umask(0o022)  # what other local users would get without owner-only creation
    try:
        for slug in ("acme", "globex"):
            assert cli_run("tenant", "create", slug)[0].exit_code == 0
        model, _ = tiny_model("tiny-bert", "classification", 2)
        model.save_pretrained(data / "base")  # a base model folder in the data root
        minilm_tokenizer().save_pretrained(data / "base")
        theirs, out = cli_run("adapter", "import", "--tenant", "globex", "--task", "sst2", "--json",
                              str(lora_adapter(tiny_model, data / "globex-adapter", "tiny-bert")))
        assert theirs.exit_code == 0, out
        theirs_path = Path(json.loads(theirs.output)["path"])

        (tmp_path / "shadow").write_text("root:secret-hash:19000")
        leaky = lora_adapter(tiny_model, data / "leaky", "tiny-bert")
        (leaky / "README.md").symlink_to(tmp_path / "shadow")
        (data / "stolen").mkdir()
        for file in theirs_path.iterdir():
            (data / "stolen" / file.name).symlink_to(file)
        refusals = [
            (leaky, "'README.md' is a symlink"),
            (data / "stolen", "'adapter_config.json' is a symlink"),
            (theirs_path, "points into the artifacts root"),
            (lora_adapter(tiny_model, data / "etc-base", "/etc"), "'/etc' is outside the allowed data roots"),
            (lora_adapter(tiny_model, data / "up-base", "../base"), "'../base' contains '..'"),
        ]
        os.mkfifo(data / "jobs.yaml")  # a batch file nobody writes: an open that blocks would hang
        (data / "zero.yaml").symlink_to("/dev/zero")
        before = dump(home)
        for folder, needle in refusals:
            result, output = cli_run("adapter", "import", "--tenant", "acme", "--task", "sst2", str(folder))
            assert result.exit_code == 1 and needle in output and "Traceback" not in output, output
            assert "secret-hash" not in output
            assert dump(home) == before, folder
        for batch, needle in (("jobs.yaml", "'jobs.yaml' is a FIFO; give a regular file"),
                              ("zero.yaml", "'zero.yaml' is outside the allowed data roots (a symlink")):
            result, output = cli_run("job", "submit-batch", batch)
            assert result.exit_code == 1 and needle in output and "Traceback" not in output, output
            assert dump(home) == before, batch

        # A relative base is resolved at import (here: against the data root) and stored resolved.
        ok, out = cli_run("adapter", "import", "--tenant", "acme", "--task", "sst2", "--json",
                          str(lora_adapter(tiny_model, data / "local-base", "./base")))
        assert ok.exit_code == 0, out
        row = json.loads(ok.output)
        assert row["base_model"] == str(data / "base")
        stored = json.loads((Path(row["path"]) / "adapter_config.json").read_text())
        assert stored["base_model_name_or_path"] == str(data / "base")
        job, out = cli_run("job", "submit", "--tenant", "acme", "--task", "sst2", "--init-from",
                           row["id"][:8], "--max-steps", "1", "--json")
        assert job.exit_code == 0, out
        with_id = json.loads(cli_run("job", "show", json.loads(job.output)["id"], "--json")[0].output)
        assert (with_id["base_model"], with_id["init_from_adapter_id"]) == (str(data / "base"), row["id"])

        # The base folder swapped for links: starting from that adapter now passes nothing on.
        (data / "base" / "config.json").rename(tmp_path / "config.json")
        (data / "base" / "config.json").symlink_to(tmp_path / "config.json")
        before = dump(home)
        refused, out = cli_run("job", "submit", "--tenant", "acme", "--task", "sst2", "--init-from",
                               row["id"][:8], "--max-steps", "1")
        assert refused.exit_code == 1 and "'config.json' is a symlink" in out, out
        assert dump(home) == before

        # Owner-only: every folder and file lorafleet created under the home.
        loose = [f"{p} {oct(p.stat().st_mode & 0o777)}" for p in (home, *home.rglob("*"))
                 if p.stat().st_mode & 0o777 != (0o700 if p.is_dir() else 0o600)]
        assert loose == []
    finally:
        os.umask(old_umask)


def test_a_base_folder_swapped_for_links_after_submit_fails_its_job_on_the_worker(registry_url, tmp_path):
    from worker.runner import run_job

    data = tmp_path / "data"
    (data / "model").mkdir(parents=True)
    (data / "model" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    settings = load_settings({"LORAFLEET_HOME": str(tmp_path / "home"), "LORAFLEET_DATA_ROOTS": str(data),
                              "LORAFLEET_DATABASE_URL": registry_url,
                              "LORAFLEET_DATA_DIR": os.environ["LORAFLEET_DATA_DIR"]})
    from orchestrator.registry.db import session_scope

    with session_scope(settings) as session:
        create_tenant(session, "acme")
        job_id = submit_job(session, "acme", {"task": "sst2", "base_model": str(data / "model"),
                                                  "max_steps": 1}, settings=settings).id
    # After the submit, the folder's files become links (to another tenant's weights, /etc, ...).
    (tmp_path / "elsewhere").mkdir()
    (data / "model" / "config.json").rename(tmp_path / "elsewhere" / "config.json")
    (data / "model" / "config.json").symlink_to(tmp_path / "elsewhere" / "config.json")
    result = run_job(job_id, worker_id="w1", settings=settings, cache=None)
    assert result.outcome == "failed", result
    reason = f"base_model: folder {str(data / 'model')!r} cannot be used: 'config.json' is a symlink"
    assert reason in result.detail
    with session_scope(settings) as session:
        job = get_job(session, job_id).job
        assert job.state == "failed" and "'config.json' is a symlink" in job.error


def test_a_command_run_from_the_root_folder_has_no_data_root(tmp_path):
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT), "HOME": str(tmp_path),
           "LORAFLEET_HOME": str(tmp_path / "home")}
    argv = [sys.executable, "-m", "orchestrator.cli.main", "job", "submit-batch", "etc/passwd"]
    done = subprocess.run(argv, env=env, cwd="/", capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert "there is no data root (the current folder is the file system's root (/))" in done.stderr
    assert "set LORAFLEET_DATA_ROOTS" in done.stderr and len(done.stderr.strip().splitlines()) == 1
