"""A tenant's whole session through the official openai client against a real `lorafleet api serve`
and a real Celery worker sharing its registry and broker, embedded (SQLite) and cluster
(PostgreSQL + Redis): create a job on a tiny model, follow its events to `succeeded`, retrieve
it (fine-tuned model name, trained tokens, the metrics history as its result file); pause a
running job and resume it from its checkpoint; cancel one; a validation file that replaces the
held-out split; the fine-tuned model listed, then deleted."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from orchestrator import artifacts
from orchestrator.services.jobs import get_job
from orchestrator.services.keys import create_key
from orchestrator.services.tenants import create_tenant
from tests.api_server import ApiProcess, start_api
from tests.integration.workers import LiveWorker, wait_for

pytestmark = pytest.mark.integration

TERMINAL = ("succeeded", "failed", "cancelled")
# The worker tests' tiny budget: a random-init 2-layer BERT, a few steps on small batches.
TINY = {"method": "lora", "rank": 4, "max_steps": 3, "batch_size": 4, "eval_size": 16}
# Long enough that a pause lands mid-training, short enough to finish soon after the resume.
LONG_STEPS = 100_000  # never ends by itself: the pause always lands mid-training


@pytest.fixture(scope="module")
def api(live_worker: LiveWorker) -> Iterator[ApiProcess]:
    """The API on the worker's own registry, broker and artifacts."""
    server = start_api(dict(live_worker.env), mode=live_worker.mode)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def client(api: ApiProcess) -> openai.OpenAI:
    with api.session() as s:
        create_tenant(s, "acme", max_running=2)
        _, key = create_key(s, "acme")
    return api.client(key)


def _follow(client: openai.OpenAI, job_id: str, worker: LiveWorker, timeout: float = 120,
            until: tuple[str, ...] = TERMINAL) -> tuple[Any, list[Any]]:
    """Poll the job as a tenant would, collecting its events (oldest first) until its status is
    in `until`."""
    seen: dict[str, Any] = {}

    def done() -> Any:
        for event in client.fine_tuning.jobs.list_events(job_id, limit=100).data:
            seen[event.id] = event
        job = client.fine_tuning.jobs.retrieve(job_id)
        return job if job.status in until else None

    job = wait_for(done, timeout, f"job {job_id} to reach {until}", worker, interval=0.3)
    for event in client.fine_tuning.jobs.list_events(job_id, limit=100).data:
        seen[event.id] = event
    return job, sorted(seen.values(), key=lambda e: int(e.id))


def _training(client: openai.OpenAI, job_id: str, worker: LiveWorker) -> None:
    def stepping() -> bool:
        events = client.fine_tuning.jobs.list_events(job_id, limit=5).data
        return any(e.type == "metrics" and e.data.get("step", 0) >= 1 for e in events)

    wait_for(stepping, 90, "the job to start training", worker, interval=0.2)


def test_create_follow_events_to_succeeded_and_retrieve(client: openai.OpenAI, live_worker: LiveWorker):
    job = client.fine_tuning.jobs.create(model="tiny-bert", training_file="builtin-glue-sst2", suffix="demo",
                                         metadata={"session": "1"}, extra_body={"lorafleet": TINY})
    assert job.status == "queued"
    done, events = _follow(client, job.id, live_worker)
    assert done.status == "succeeded", [e.message for e in events]
    assert done.fine_tuned_model.startswith("ft:tiny-bert:acme:demo:")
    assert done.trained_tokens and done.trained_tokens > 0
    assert done.finished_at >= done.created_at and done.error is None
    metrics = [e for e in events if e.type == "metrics"]
    assert metrics and metrics[-1].data["step"] == TINY["max_steps"] and metrics[-1].data["train_loss"] > 0
    assert events[-1].message == "The job has successfully completed"
    hidden = (str(live_worker.settings.artifacts), str(live_worker.settings.home), "@")  # paths, workers
    assert not any(h in e.message or h in str(e.data) for e in events for h in hidden)
    listed = client.fine_tuning.jobs.list(extra_query={"metadata[session]": "1"}).data
    assert [j.id for j in listed] == [job.id] and listed[0].fine_tuned_model == done.fine_tuned_model

    (result,) = done.result_files
    content = client.files.content(result).text
    lines = content.splitlines()
    assert lines[0].startswith("step,epoch,train_loss,learning_rate") and len(lines) == TINY["max_steps"] + 1
    assert client.files.retrieve(result).bytes == len(content.encode())

    assert done.fine_tuned_model in [m.id for m in client.models.list().data]
    assert client.models.retrieve(done.fine_tuned_model).owned_by == "acme"
    assert client.models.delete(done.fine_tuned_model).deleted
    assert done.fine_tuned_model not in [m.id for m in client.models.list().data]


def test_pause_a_running_job_then_resume_it_from_its_checkpoint(client: openai.OpenAI, live_worker, api):
    job = client.fine_tuning.jobs.create(model="tiny-bert", training_file="builtin-glue-sst2",
                                         extra_body={"lorafleet": {**TINY, "max_steps": LONG_STEPS}})
    _training(client, job.id, live_worker)
    asked = client.post(f"/fine_tuning/jobs/{job.id}/pause", cast_to=httpx.Response).json()
    assert asked["status"] in ("running", "paused")  # running until its next checkpoint
    paused, _ = _follow(client, job.id, live_worker, until=("paused", *TERMINAL))
    assert paused.status == "paused"
    checkpoints = client.fine_tuning.jobs.checkpoints.list(job.id).data
    assert checkpoints and checkpoints[0].object == "fine_tuning.job.checkpoint"
    step = checkpoints[0].step_number
    assert 1 <= step < LONG_STEPS
    assert checkpoints[0].fine_tuned_model_checkpoint.endswith(f":ckpt-step-{step}")
    with api.session() as s:  # the registry: lease released, the checkpoint's files on disk
        row = get_job(s, job.id).job
    assert (row.state, row.lease_owner, row.pause_requested) == ("paused", None, False)
    assert list(artifacts.checkpoint_path(live_worker.settings, row.tenant_id, job.id).glob("step-*"))
    time.sleep(1.0)
    assert client.fine_tuning.jobs.retrieve(job.id).status == "paused"  # nothing picks it up

    resumed = client.post(f"/fine_tuning/jobs/{job.id}/resume", cast_to=httpx.Response).json()
    assert resumed["status"] == "queued"

    def continued() -> Any:
        events = client.fine_tuning.jobs.list_events(job.id, limit=20).data
        return next((e for e in events if e.type == "metrics" and int(e.id) > int(checkpoints[0].id)), None)

    after = wait_for(continued, 90, "the resumed job to step again", live_worker, interval=0.2)
    assert after.data["step"] > step  # continued from its checkpoint, not restarted from step 0
    client.fine_tuning.jobs.cancel(job.id)  # the job is endless; its end is the cancel test's
    done, events = _follow(client, job.id, live_worker)
    assert done.status == "cancelled", [e.message for e in events]
    assert any(e.message == f"resumed from the checkpoint at step {step}" for e in events)
    with api.session() as s:
        detail = get_job(s, job.id)
    # Two attempts, each with its usage; the pause gave its attempt back (budget + 1).
    assert (detail.job.attempts, len(detail.usage)) == (2, 2)
    assert detail.job.max_attempts == live_worker.settings.max_attempts + 1


def test_cancel_a_running_job(client: openai.OpenAI, live_worker: LiveWorker):
    job = client.fine_tuning.jobs.create(model="tiny-bert", training_file="builtin-glue-sst2",
                                         extra_body={"lorafleet": {**TINY, "max_steps": 100_000}})
    _training(client, job.id, live_worker)
    assert client.fine_tuning.jobs.cancel(job.id).status == "running"  # a flag the loop obeys
    done, events = _follow(client, job.id, live_worker, timeout=60)
    assert done.status == "cancelled" and done.fine_tuned_model is None
    assert events[-1].message == "Fine-tuning job cancelled"


def test_a_validation_file_replaces_the_held_out_split(client: openai.OpenAI, live_worker, tmp_path):
    """40 training rows, batch 4, one epoch: 10 steps when the validation file is the scored split,
    9 when a tenth of the rows is held out of training instead."""
    train, validation = tmp_path / "train.jsonl", tmp_path / "validation.jsonl"
    train.write_text("".join(f'{{"text": "row {i} is {"good" if i % 2 else "bad"}", "label": {i % 2}}}\n'
                             for i in range(40)))
    validation.write_text("".join(f'{{"text": "held {i}", "label": {i % 2}}}\n' for i in range(6)))
    train_id = client.files.create(file=train.open("rb"), purpose="fine-tune").id
    validation_id = client.files.create(file=validation.open("rb"), purpose="fine-tune").id
    budget = {"method": "lora", "rank": 4, "eval_every": 0}
    hyper = {"n_epochs": 1, "batch_size": 4}
    jobs = [client.fine_tuning.jobs.create(model="tiny-bert", training_file=train_id, hyperparameters=hyper,
                                           extra_body={"lorafleet": budget}, **extra)
            for extra in ({"validation_file": validation_id}, {})]
    assert jobs[0].validation_file == validation_id and jobs[1].validation_file is None
    totals = []
    for job in jobs:
        done, events = _follow(client, job.id, live_worker)
        assert done.status == "succeeded", [e.message for e in events]
        totals.append(max(e.data["total_steps"] for e in events if e.type == "metrics"))
    assert totals == [10, 9]
    leftovers = list(live_worker.settings.artifacts.glob("*/.staging/*.inputs"))
    assert leftovers == []  # the attempt's assembled inputs are removed with its staging
