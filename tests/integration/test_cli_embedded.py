"""The embedded mode through the console commands only: `lorafleet worker` in one process,
`lorafleet job submit --wait` in another, sharing nothing but LORAFLEET_HOME."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.config import load_settings
from orchestrator.registry import db
from orchestrator.registry.db import session_scope
from orchestrator.services.jobs import get_job, job_events
from tests.integration.workers import ROOT, stop_worker, wait_for, worker_env

pytestmark = pytest.mark.integration


def lorafleet(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "orchestrator.cli.main", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_submit_wait_with_a_lorafleet_worker(tmp_path: Path):
    env = worker_env(tmp_path / "home")  # the data files below lie outside the home
    log = open(tmp_path / "worker.log", "w")  # noqa: SIM115
    worker = subprocess.Popen(
        [sys.executable, "-m", "orchestrator.cli.main", "worker", "--loglevel", "info"],
        env=env,
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    settings = load_settings(env)
    try:
        assert lorafleet(env, "tenant", "create", "acme").returncode == 0
        wait_for(
            lambda: " ready." in (tmp_path / "worker.log").read_text(), 90, "`lorafleet worker` to start"
        )
        done = lorafleet(
            env,
            "job",
            "submit",
            "--tenant",
            "acme",
            "--task",
            "sst2",
            "--rank",
            "4",
            "--base-model",
            "tiny-bert",
            "--max-steps",
            "4",
            "--batch-size",
            "4",
            "--eval-size",
            "16",
            "--wait",
            "--json",
        )
        assert done.returncode == 0, done.stderr + (tmp_path / "worker.log").read_text()[-3000:]
        shown = json.loads(done.stdout)
        assert shown["state"] == "succeeded" and shown["adapter"]["path"].startswith(str(settings.artifacts))
        with session_scope(settings) as s:
            assert get_job(s, shown["id"]).job.state == "succeeded"
            assert [e.kind for e in job_events(s, shown["id"])].count("claimed") == 1

        # Bad data is refused at the door, naming the line and the reason.
        bad = tmp_path / "bad.jsonl"
        bad.write_text('{"text": "fine", "label": "a"}\n{"text": "no label"}\n')
        failed = lorafleet(
            env,
            "job",
            "submit",
            "--tenant",
            "acme",
            "--task",
            "custom-classification",
            "--base-model",
            "tiny-bert",
            "--dataset",
            str(bad),
            "--max-steps",
            "2",
            "--wait",
        )
        assert failed.returncode == 1 and "line 2: missing field 'label'" in failed.stderr
        assert "Traceback" not in failed.stderr
    finally:
        stop_worker(worker)
        db.forget_engine(settings.database_url)
