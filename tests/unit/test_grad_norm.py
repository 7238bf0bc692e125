"""The gradient norm of each optimizer step (before clipping): what the recipe reports equals the
norm computed by hand from the gradients of a step replayed by hand, and the worker records it in
the metric history (`grad_norm`), its progress events and `job metrics`."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

DATA = Path(os.environ["LORAFLEET_DATA_DIR"])

from lora_engine.forward import training_loss  # noqa: E402
from lora_engine.recipe import GRAD_CLIP, TrainHooks, begin_step, setup, train, training_batches  # noqa: E402
from lora_engine.spec import validate_spec  # noqa: E402
from orchestrator.cli.main import cli  # noqa: E402
from orchestrator.config import get_settings  # noqa: E402
from orchestrator.registry.db import forget_engine, session_scope  # noqa: E402
from orchestrator.services.jobs import job_events, submit_job  # noqa: E402
from orchestrator.services.metrics import metric_history  # noqa: E402
from orchestrator.services.tenants import create_tenant  # noqa: E402

# Accumulation (the norm is of the whole step's gradient) and a rate high enough that a step's
# norm exceeds the clip (so "before clipping" is told apart from after).
SPEC = {"task": "sst2", "base_model": "tiny-bert", "rank": 4, "max_steps": 3, "batch_size": 4,
        "grad_accum": 2, "max_length": 32, "eval_size": 8, "lr": 0.3, "seed": 7}


def norms_by_hand(spec: dict) -> list[float]:
    """Each step of `spec` replayed without the recipe's loop: its gradient's L2 norm summed by
    hand (float64) before clipping, then the clip and the optimizer step as torch documents them."""
    run = setup(validate_spec(spec).resolved(), data_dir=DATA)
    batches, params, norms = training_batches(run), list(run.trainable.values()), []
    run.model.train()
    for _ in range(run.total_steps):
        begin_step(run)
        for _ in range(run.spec.grad_accum):
            inputs = next(batches).inputs
            (training_loss(run.model, inputs, run.info.kind) / run.spec.grad_accum).backward()
        norm = math.sqrt(sum(float(p.grad.double().pow(2).sum()) for p in params if p.grad is not None))
        norms.append(norm)
        with torch.no_grad():
            for p in params:
                if p.grad is not None:
                    p.grad.mul_(min(1.0, GRAD_CLIP / (norm + 1e-6)))
        run.optimizer.step()
        run.optimizer.zero_grad(set_to_none=True)
        run.step += 1
    return norms


@pytest.fixture(scope="module")
def by_hand() -> list[float]:
    return norms_by_hand(SPEC)


def test_each_step_reports_its_gradient_norm_before_clipping(tmp_path, by_hand):
    seen = []
    train(SPEC, tmp_path / "a", data_dir=DATA, hooks=TrainHooks(on_progress=seen.append))
    assert [p.step for p in seen] == [1, 2, 3]
    assert len(by_hand) == 3 and max(by_hand) > GRAD_CLIP  # a clipped step is among them
    assert [p.grad_norm for p in seen] == pytest.approx(by_hand, rel=1e-5)


def test_the_worker_records_grad_norm_in_the_metric_history(tmp_path, monkeypatch, by_hand):
    """A real job (tiny-bert, the Celery task in this process): one `grad_norm` point per step,
    equal to the norms by hand; in the progress events and in `job metrics`."""
    monkeypatch.setenv("LORAFLEET_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("LORAFLEET_DEVICE", "cpu")
    for var in ("LORAFLEET_DATABASE_URL", "LORAFLEET_BROKER_URL", "LORAFLEET_ARTIFACTS"):
        monkeypatch.delenv(var, raising=False)
    get_settings.cache_clear()
    try:
        with session_scope() as s:
            create_tenant(s, "acme")
            job_id = submit_job(s, "acme", SPEC).id
        from worker.tasks import run_job

        assert run_job.apply(args=[job_id]).state == "SUCCESS"
        with session_scope() as s:
            recorded = metric_history(s, job_id, names=["grad_norm"])
            progress = [e.data for e in job_events(s, job_id) if e.kind == "progress"]
        assert [p.step for p in recorded] == [1, 2, 3]
        assert [p.value for p in recorded] == pytest.approx(by_hand, rel=1e-5)
        # The last step's progress event carries it (what `job watch` shows beside the loss).
        assert progress[-1]["step"] == 3 and progress[-1]["grad_norm"] == pytest.approx(by_hand[-1], rel=1e-5)
        curves = json.loads(CliRunner().invoke(cli, ["job", "metrics", job_id[:8], "--format", "json"],
                                               catch_exceptions=False).output)
        assert {"loss", "lr", "grad_norm"} <= set(curves)
        table = CliRunner().invoke(cli, ["job", "metrics", job_id]).output
        row = next(line for line in table.splitlines() if line.startswith("grad_norm"))
        assert row.split()[1:3] == ["3", "1-3"]
    finally:
        forget_engine(get_settings().database_url)
        get_settings.cache_clear()


def test_the_live_view_shows_the_latest_gradient_norm():
    from orchestrator.cli.live import Rate, progress_text

    view = {"state": "running", "progress": {"step": 12, "total": 40, "loss": 0.5}, "spec": {},
            "phase": None, "grad_norm": 1.2345}
    assert progress_text(view, Rate()).startswith("training  step 12/40  loss 0.5  grad norm 1.23")
    assert "grad norm" not in progress_text({**view, "grad_norm": None}, Rate())
