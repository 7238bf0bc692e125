"""An adapter answers in serving as in its evaluation: a classifier trained by a real job (a real
worker process, embedded registry and broker) and served by a real `lorafleet serve` process scores,
through /v1/classify on its job's own validation rows, exactly the accuracy the job recorded.

Nothing is told to the server but the adapter's `ft:` name: the pooling (mean, not the base's
[CLS]), the label names and the token limit come from the adapter's folder; the validation rows
come from what the registry holds (the job's task and `eval_size`: the first rows of the split).
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.api_server import ApiProcess, start_api
from tests.integration.workers import start_worker, stop_worker, wait_for, worker_env

pytestmark = pytest.mark.integration

START_TIMEOUT_S = 90
JOB = {"task": "sst2", "base_model": "minilm-l6", "method": "lora", "rank": 4, "max_steps": 12,
       "batch_size": 8, "lr": 0.002, "eval_size": 48, "pooling": "mean", "seed": 3}


def train(env: dict[str, str], home: Path) -> tuple[str, str]:
    """Submit the job through the services, let a real worker run it: (job id, tenant key)."""
    from orchestrator.announce import announce_jobs
    from orchestrator.config import load_settings
    from orchestrator.registry import db
    from orchestrator.services.jobs import get_job, submit_job
    from orchestrator.services.keys import create_key
    from orchestrator.services.tenants import create_tenant

    settings = load_settings(env)
    db.ensure_schema(settings)
    with db.session_scope(settings) as s:
        create_tenant(s, "acme")
        key = create_key(s, "acme")[1]
        job_id = submit_job(s, "acme", dict(JOB), settings=settings).id
    announce_jobs([job_id], settings=settings)
    worker = start_worker(env, home / "worker.log")
    try:
        def finished():
            with db.session_scope(settings) as s:
                state = get_job(s, job_id).job.state
            return state if state in ("succeeded", "failed", "cancelled") else None

        state = wait_for(finished, 180, "the job to finish")
        assert state == "succeeded", (home / "worker.log").read_text()[-4000:]
    finally:
        stop_worker(worker)
    return job_id, key


def start_serve(env: dict[str, str], home: Path) -> ApiProcess:
    return start_api(env, log_path=home / "serve.log", command=("serve",), timeout_s=START_TIMEOUT_S)


def test_a_classifiers_served_accuracy_equals_its_jobs_recorded_metric(tmp_path):
    from lora_engine.data import load_examples
    from lora_engine.predict import load_for_inference
    from orchestrator.config import load_settings
    from orchestrator.registry import db
    from orchestrator.services.jobs import get_job

    home = tmp_path / "home"
    home.mkdir()
    env = worker_env(home)
    settings = load_settings(env)
    job_id, key = train(env, home)
    with db.session_scope(settings) as s:
        job = get_job(s, job_id).to_dict()
    recorded = job["metrics"]["validation"]["accuracy"]
    model, folder, spec = job["adapter"]["model"], job["adapter"]["path"], job["spec"]
    rows = load_examples(spec["task"], "validation", data_dir=env["LORAFLEET_DATA_DIR"],
                         limit=spec["eval_size"])
    assert len(rows) == JOB["eval_size"]

    server = start_serve(env, home)
    try:
        answer = httpx.post(server.base_url + "/v1/classify",
                            json={"model": model, "input": [r.text for r in rows]},
                            headers={"Authorization": f"Bearer {key}"}, timeout=120)
    finally:
        server.stop()
        db.forget_engine(settings.database_url)
    assert answer.status_code == 200, answer.text
    data = answer.json()["data"]
    served = [max(range(len(d["probs"])), key=d["probs"].__getitem__) for d in data]
    assert [d["label"] for d in data] == [("negative", "positive")[i] for i in served]
    accuracy = sum(p == r.label for p, r in zip(served, rows, strict=True)) / len(rows)
    assert accuracy == pytest.approx(recorded, abs=1e-9)
    # The served probabilities are `adapter predict`'s (the folder's mean pooling, not [CLS]).
    reference = load_for_inference(folder).classify([r.text for r in rows])
    for d, ref in zip(data, reference, strict=True):
        assert d["probs"] == pytest.approx(ref.probabilities, abs=1e-5)
    assert 0 < sum(served) < len(served)  # trained enough to answer both labels: accuracy says something
