"""Training curves in the registry (metric history) and the checkpoints a job saved: recorded by
the worker through the services, read back by `job metrics` / `job checkpoints`, on SQLite and
PostgreSQL."""

from __future__ import annotations

import csv
import io
import json

import pytest
from click.testing import CliRunner

from orchestrator.cli.job_results import sparkline
from orchestrator.cli.main import cli
from orchestrator.config import get_settings
from orchestrator.errors import LeaseLost
from orchestrator.registry.db import forget_engine, session_scope
from orchestrator.services.jobs import get_job, job_events, submit_job
from orchestrator.services.leases import claim_job, record_checkpoint
from orchestrator.services.metrics import Point, job_checkpoints, metric_history, record_points
from orchestrator.services.tenants import create_tenant

pytest_plugins = ["registry_fixtures"]


def _running_job(session) -> str:
    create_tenant(session, "acme")
    job_id = submit_job(session, "acme", {"task": "sst2", "base_model": "tiny-bert", "max_steps": 4}).id
    assert claim_job(session, job_id, "w1", lease_seconds=60) is not None
    return job_id


def _curve(steps, *, loss0: float = 1.0) -> list[Point]:
    out = []
    for s in steps:
        out += [Point("loss", s, s / 4, loss0 / s), Point("lr", s, s / 4, 1e-3 * (1 - s / 10))]
    return out


def test_points_are_stored_per_step_and_a_resumed_attempt_replaces_redone_steps(session):
    job_id = _running_job(session)
    assert record_points(session, job_id, "w1", _curve([1, 2, 3])) == 6
    # A resume from the checkpoint at step 2 redoes step 3 and goes on: step 3 is replaced, not doubled.
    assert record_points(session, job_id, "w1", _curve([3, 4], loss0=2.0)) == 4
    loss = metric_history(session, job_id[:8], names=["loss"])
    assert [(p.step, p.epoch, p.value) for p in loss] == [(1, 0.25, 1.0), (2, 0.5, 0.5), (3, 0.75, 2 / 3),
                                                          (4, 1.0, 0.5)]
    assert {p.name for p in metric_history(session, job_id)} == {"loss", "lr"}
    with pytest.raises(LeaseLost):
        record_points(session, job_id, "someone-else", _curve([5]))


def test_checkpoints_list_what_the_worker_reported(session, tmp_path):
    job_id = _running_job(session)
    (tmp_path / "step-00000002").mkdir()
    record_checkpoint(session, job_id, "w1", 2, str(tmp_path / "step-00000002"))
    record_checkpoint(session, job_id, "w1", 4, str(tmp_path / "step-00000004"))
    saved = job_checkpoints(session, job_id)
    assert [(c.step, c.path) for c in saved] == [(2, str(tmp_path / "step-00000002")),
                                                 (4, str(tmp_path / "step-00000004"))]


def test_sparkline_follows_the_curve():
    assert sparkline([4.0, 3.0, 2.0, 1.0], width=4) == "█▆▃▁"
    assert len(sparkline([float(i) for i in range(1000)])) == 24


def test_cli_metrics_and_checkpoints(tmp_path, monkeypatch):
    monkeypatch.setenv("LORAFLEET_HOME", str(tmp_path / "home"))
    for var in ("LORAFLEET_DATABASE_URL", "LORAFLEET_BROKER_URL", "LORAFLEET_ARTIFACTS"):
        monkeypatch.delenv(var, raising=False)
    get_settings.cache_clear()
    try:
        with session_scope() as s:
            job_id = _running_job(s)
            record_points(s, job_id, "w1", _curve([1, 2, 3, 4]))
            record_checkpoint(s, job_id, "w1", 2, str(tmp_path / "gone"))
        runner = CliRunner()
        out = runner.invoke(cli, ["job", "metrics", job_id[:8], "--format", "csv"], catch_exceptions=False)
        rows = list(csv.DictReader(io.StringIO(out.output)))
        assert len(rows) == 8 and rows[0] == {"name": "loss", "step": "1", "epoch": "0.25", "value": "1.0"}
        args = ["job", "metrics", job_id, "--format", "json", "--name", "lr"]
        as_json = json.loads(runner.invoke(cli, args).output)
        assert list(as_json) == ["lr"] and as_json["lr"][3] == {"step": 4, "epoch": 1.0, "value": 1e-3 * 0.6}
        table = runner.invoke(cli, ["job", "metrics", job_id]).output.splitlines()
        assert table[0].split() == ["SERIES", "POINTS", "STEPS", "FIRST", "LAST", "MIN", "CURVE"]
        assert table[2].split()[:6] == ["loss", "4", "1-4", "1", "0.25", "0.25"]
        checkpoints = json.loads(runner.invoke(cli, ["job", "checkpoints", job_id, "--json"]).output)
        assert [(c["step"], c["on_disk"]) for c in checkpoints] == [(2, False)]
    finally:
        forget_engine(get_settings().database_url)
        get_settings.cache_clear()


def test_evaluations_during_training_land_as_curves(tmp_path, monkeypatch):
    """A real training job (tiny-bert, in this process through the Celery task) evaluating its
    held-out rows every 2 steps: each evaluation is a `holdout/<metric>` point {step, epoch,
    value}, and `job metrics` shows them beside the loss."""
    monkeypatch.setenv("LORAFLEET_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("LORAFLEET_DEVICE", "cpu")
    for var in ("LORAFLEET_DATABASE_URL", "LORAFLEET_BROKER_URL", "LORAFLEET_ARTIFACTS"):
        monkeypatch.delenv(var, raising=False)
    get_settings.cache_clear()
    spec = {"task": "sst2", "base_model": "tiny-bert", "rank": 4, "max_steps": 6, "batch_size": 4,
            "eval_size": 8, "eval_every": 2, "eval_holdout": 8}
    try:
        with session_scope() as s:
            create_tenant(s, "acme")
            job_id = submit_job(s, "acme", spec).id
        from worker.tasks import run_job

        assert run_job.apply(args=[job_id]).state == "SUCCESS"
        curves = json.loads(CliRunner().invoke(cli, ["job", "metrics", job_id[:8], "--format", "json"],
                                               catch_exceptions=False).output)
        assert {"loss", "lr", "holdout/accuracy"} <= set(curves)
        held = curves["holdout/accuracy"]
        assert [p["step"] for p in held] == [2, 4, 6]
        epochs = [p["epoch"] for p in held]
        assert 0 < epochs[0] < epochs[1] < epochs[2]
        assert all(0.0 <= p["value"] <= 1.0 for p in held)
        # The same points as the run's own record of them (the selection summary counts them).
        with session_scope() as s:
            selection = get_job(s, job_id).to_dict()["metrics"]["selection"]
            phases = [(e.data["phase"], e.data["step"]) for e in job_events(s, job_id)
                      if e.kind == "phase"]
        assert selection["evaluations"] == 3 and selection["best_step"] in (2, 4, 6)
        # What a follower shows between steps: each evaluation, then the final one and the saving.
        assert phases == [("evaluating", 2), ("evaluating", 4), ("evaluating", 6), ("evaluating", 6),
                          ("saving", 6)]
        table = CliRunner().invoke(cli, ["job", "metrics", job_id]).output
        row = next(line for line in table.splitlines() if line.startswith("holdout/accuracy"))
        assert row.split()[1:3] == ["3", "2-6"]
    finally:
        forget_engine(get_settings().database_url)
        get_settings.cache_clear()
