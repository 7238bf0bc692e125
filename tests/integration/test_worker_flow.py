"""The job flow end to end with a real worker process, embedded (SQLite) and cluster (PG + Redis).

Each test submits through the services and the dispatch client, exactly as the CLI does, then
watches the registry: the worker is a separate process that only shares the registry, the
broker and the artifacts folder with the test.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import pytest

from lora_engine.adapters.io import adapter_files_digest
from lora_engine.errors import DataValidationError
from orchestrator.announce import announce_jobs, reconcile_once
from orchestrator.dispatch import broker_connection
from orchestrator.errors import InvalidState
from orchestrator.registry.db import session_scope
from orchestrator.registry.models import Job, JobEvent
from orchestrator.services.jobs import cancel_job, get_job, job_events, submit_batch, submit_job
from orchestrator.services.leases import claim_job
from orchestrator.services.tenants import create_tenant
from tests.integration.workers import LiveWorker, wait_for

pytestmark = pytest.mark.integration

TERMINAL = {"succeeded", "failed", "cancelled"}
# Tiny real jobs: a random-init 2-layer BERT, a few optimiser steps on small batches.
TINY = {
    "task": "sst2",
    "method": "lora",
    "rank": 4,
    "base_model": "tiny-bert",
    "max_steps": 3,
    "batch_size": 4,
    "eval_size": 16,
}


def _tenant(worker: LiveWorker, slug: str) -> str:
    with session_scope(worker.settings) as s:
        return create_tenant(s, slug, max_running=2).slug


def _submit(worker: LiveWorker, tenant: str, dispatch: bool = True, **spec: Any) -> str:
    with session_scope(worker.settings) as s:
        job_id = submit_job(s, tenant, {**TINY, **spec}, settings=worker.settings).id
    if dispatch:
        announce_jobs([job_id], settings=worker.settings)
    return job_id


def _detail(worker: LiveWorker, job_id: str) -> dict[str, Any]:
    with session_scope(worker.settings) as s:
        return get_job(s, job_id).to_dict()


def _events(worker: LiveWorker, job_id: str) -> list[dict[str, Any]]:
    with session_scope(worker.settings) as s:
        return [{"kind": e.kind, "message": e.message, "data": e.data} for e in job_events(s, job_id)]


def _wait_terminal(worker: LiveWorker, job_ids: list[str], timeout: float = 90) -> dict[str, dict]:
    def done() -> dict[str, dict] | None:
        details = {j: _detail(worker, j) for j in job_ids}
        return details if all(d["state"] in TERMINAL for d in details.values()) else None

    return wait_for(done, timeout, f"jobs {job_ids} to finish", worker, interval=0.5)


def test_jobs_of_two_tenants_each_run_exactly_once(live_worker: LiveWorker):
    a, b = _tenant(live_worker, "tenant-a"), _tenant(live_worker, "tenant-b")
    jobs = [
        _submit(live_worker, a, seed=1),
        _submit(live_worker, b, seed=2, method="rslora"),
        _submit(live_worker, a, seed=3, task="mrpc"),
        _submit(live_worker, b, seed=4),
    ]
    # A duplicate message (lost ack, redelivery, an eager reconciler) must not run a job twice.
    announce_jobs([jobs[0]], settings=live_worker.settings)
    details = _wait_terminal(live_worker, jobs, timeout=150)

    for job_id, detail in details.items():
        assert detail["state"] == "succeeded", (detail, _events(live_worker, job_id))
        assert detail["attempts"] == 1
        kinds = [e["kind"] for e in _events(live_worker, job_id)]
        assert kinds.count("claimed") == 1 and kinds.count("succeeded") == 1
        adapter = detail["adapter"]
        path = Path(adapter["path"])
        # Paths are built from ids: <artifacts>/<tenant_id>/<adapter_id>.
        assert path == live_worker.settings.artifacts / detail["tenant_id"] / adapter["id"]
        assert (path / "adapter_config.json").is_file()
        assert adapter_files_digest(path) == (adapter["sha256"], adapter["bytes"])
        assert set(detail["metrics"]["validation"]) >= {"accuracy"}
        assert detail["usage"] and detail["usage"][0]["examples"] >= 3 * TINY["batch_size"]
    # Checkpoints of succeeded jobs are cleaned up; no staging folders remain.
    assert not list(live_worker.settings.artifacts.glob("*/checkpoints/*"))
    assert not list(live_worker.settings.artifacts.glob("*/.staging/*"))


def test_running_job_is_cancelled_cooperatively(live_worker: LiveWorker):
    tenant = _tenant(live_worker, "canceller")
    job_id = _submit(live_worker, tenant, max_steps=100_000)
    wait_for(
        lambda: (_detail(live_worker, job_id)["progress"]["step"] or 0) >= 1,
        90,
        "the job to start training",
        live_worker,
    )
    with session_scope(live_worker.settings) as s:
        assert cancel_job(s, job_id).state == "running"  # a flag: the training loop obeys it
    detail = _wait_terminal(live_worker, [job_id], timeout=60)[job_id]
    assert detail["state"] == "cancelled"
    assert detail["adapter"] is None
    assert detail["progress"]["step"] < 100_000
    kinds = [e["kind"] for e in _events(live_worker, job_id)]
    assert kinds.index("cancel_requested") < kinds.index("cancelled")
    # Stopping saved a checkpoint: `job retry` resumes from it.
    assert list(
        (live_worker.settings.artifacts / detail["tenant_id"] / "checkpoints" / job_id).glob("step-*")
    )


def test_changed_data_fails_with_reason_and_worker_survives(live_worker: LiveWorker, tmp_path: Path):
    tenant = _tenant(live_worker, "bad-data")
    data = tmp_path / "reviews.jsonl"
    rows = [{"text": "great", "label": "pos"}, {"text": "awful", "label": "neg"}] * 6
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    bad_rows = tmp_path / "bad.jsonl"
    bad_rows.write_text('{"text": "fine", "label": "a"}\nnot json\n')
    with pytest.raises(DataValidationError, match="line 2: not valid JSON"):  # refused at the door
        _submit(live_worker, tenant, task="custom-classification", dataset=str(bad_rows))
    bad = _submit(
        live_worker, tenant, dispatch=False, task="custom-classification", dataset=str(data), max_steps=2,
        eval_size=None,
    )
    # The stored copy changes after validation: the worker refuses to train on it.
    stored = live_worker.settings.artifacts / _detail(live_worker, bad)["tenant_id"] / "datasets"
    next(stored.glob("*/data.jsonl")).write_text('{"text": "other", "label": "pos"}\n' * 12)
    announce_jobs([bad], settings=live_worker.settings)
    good = _submit(live_worker, tenant, seed=7)
    other = tmp_path / "other.jsonl"  # a second data set, left as uploaded: it trains
    other.write_text("\n".join(json.dumps({"text": f"row {i}", "label": i % 2}) for i in range(12)) + "\n")
    trained = _submit(live_worker, tenant, task="custom-classification", dataset=str(other), max_steps=1,
                      eval_size=None)
    details = _wait_terminal(live_worker, [bad, good, trained])
    assert details[trained]["state"] == "succeeded", details[trained]

    assert details[bad]["state"] == "failed"
    assert details[bad]["attempts"] == 1  # bad input is not retried
    failed = [e for e in _events(live_worker, bad) if e["kind"] == "failed"]
    assert len(failed) == 1 and "DataValidationError" in failed[0]["message"]
    assert "sha256" in failed[0]["message"]
    assert details[good]["state"] == "succeeded"
    assert live_worker.alive()


def test_reconciler_returns_expired_lease_to_the_queue(live_worker: LiveWorker):
    tenant = _tenant(live_worker, "orphans")
    job_id = _submit(live_worker, tenant, dispatch=False, seed=11)
    # A worker that claims the job and dies: its lease expires and nobody heartbeats.
    with session_scope(live_worker.settings) as s:
        assert claim_job(s, job_id, "ghost@dead-host:1", lease_seconds=0.5) is not None
    wait_for(
        lambda: reconcile_once(settings=live_worker.settings, lease_grace_s=0.0)["requeued"] == [job_id],
        10,
        "the reconciler to requeue the job",
        live_worker,
        interval=0.3,
    )
    detail = _wait_terminal(live_worker, [job_id])[job_id]
    assert detail["state"] == "succeeded"
    assert detail["attempts"] == 2
    events = _events(live_worker, job_id)
    kinds = [e["kind"] for e in events]
    assert kinds.count("claimed") == 2 and "requeued" in kinds
    assert kinds.index("requeued") < len(kinds) - 1 - kinds[::-1].index("claimed")
    assert "ghost@dead-host:1" in next(e["message"] for e in events if e["kind"] == "requeued")


def test_untuned_baseline_and_reevaluation_jobs_record_their_rows(live_worker: LiveWorker):
    """An evaluate job records metrics with no adapter; a reevaluate job scores each adapter of
    the tenant again on one resident base, and (same data, same CPU) matches the jobs' own."""
    from sqlalchemy import select

    from orchestrator.registry.models import Adapter, Metric, Usage
    from orchestrator.services.reevaluation import submit_reevaluation

    tenant = _tenant(live_worker, "kinds")
    trained = [_submit(live_worker, tenant, seed=5), _submit(live_worker, tenant, seed=6, task="mnli")]
    baseline = _submit(live_worker, tenant, method="none", rank=0, max_steps=None, batch_size=4)
    details = _wait_terminal(live_worker, [*trained, baseline], timeout=120)
    assert all(d["state"] == "succeeded" for d in details.values()), details

    base = details[baseline]
    assert (base["kind"], base["adapter"], base["rank"]) == ("evaluate", None, 0)
    assert set(base["metrics"]["validation"]) == {"accuracy", "majority_class_rate"}
    assert base["usage"][0]["device_seconds"] > 0 and base["usage"][0]["examples"] == 0

    with session_scope(live_worker.settings) as s:
        (job,) = submit_reevaluation(s, tenant=tenant)
        reeval = job.id
    announce_jobs([reeval], settings=live_worker.settings)
    detail = _wait_terminal(live_worker, [reeval], timeout=60)[reeval]
    assert detail["state"] == "succeeded", (detail, _events(live_worker, reeval))
    own = {details[j]["adapter"]["id"]: details[j]["metrics"] for j in trained}
    assert set(detail["reevaluated"]) == set(own)
    for adapter_id, metrics in own.items():
        for name, value in metrics["validation"].items():
            assert detail["reevaluated"][adapter_id]["validation"][name] == pytest.approx(value, abs=1e-5)
    with session_scope(live_worker.settings) as s:
        rows = s.scalars(select(Metric).where(Metric.job_id.in_([baseline, reeval]))).all()
        assert {(m.job_id == baseline, m.adapter_id is None, m.source) for m in rows} == {
            (True, True, "job"), (False, False, "reevaluation")}
        assert all(m.created_at is not None for m in rows)
        assert s.scalars(select(Adapter).where(Adapter.job_id.in_([baseline, reeval]))).all() == []
        assert len(s.scalars(select(Usage).where(Usage.job_id == reeval)).all()) == 1


def test_a_merge_job_runs_on_the_worker_and_links_its_parents(live_worker: LiveWorker):
    """Two trained adapters merged (ties) by the worker process: a new adapter whose files hash to
    its registry sha256, its parents linked, no training metrics, no examples."""
    from orchestrator.services.adapter_merging import submit_merge
    from orchestrator.services.adapters import parents_of, verified_adapter

    tenant = _tenant(live_worker, "blend")
    trained = [_submit(live_worker, tenant, seed=5), _submit(live_worker, tenant, seed=7)]
    details = _wait_terminal(live_worker, trained, timeout=120)
    parents = [details[j]["adapter"]["id"] for j in trained]
    with session_scope(live_worker.settings) as s:
        merge = submit_merge(s, tenant, parents, "ties", [0.6, 0.4]).id
    announce_jobs([merge], settings=live_worker.settings)
    detail = _wait_terminal(live_worker, [merge], timeout=60)[merge]
    assert detail["state"] == "succeeded", (detail, _events(live_worker, merge))
    assert (detail["kind"], detail["metrics"], detail["usage"][0]["examples"]) == ("merge", {}, 0)
    assert detail["adapter"]["parents"] == parents
    with session_scope(live_worker.settings) as s:
        row = verified_adapter(s, detail["adapter"]["id"])
        assert parents_of(s, [row])[row.id] == parents
    assert adapter_files_digest(row.path)[0] == row.sha256


# Fair share: as cheap as a job gets (the untuned evaluate kind of tiny-bert on 2 rows). Last in
# this module so that the worker is warm: the test pays for claims, not for a cold start.
CHEAP = {"task": "sst2", "method": "none", "base_model": "tiny-bert", "eval_size": 2}
A_JOBS, B_JOBS = 200, 5
# Claims after B's jobs were queued within which all of B's must have started: strict
# alternation gives B, A, B, A, B, A, B, A, B (9); one A claim may be in flight while B queues.
WITHIN_CLAIMS = 2 * B_JOBS + 1


def _queue(worker: LiveWorker, tenant: str, n: int) -> list[str]:
    """n jobs of `tenant` in one transaction, then a message each (as `job submit-batch` does)."""
    with session_scope(worker.settings) as s:
        jobs = submit_batch(s, [{"tenant": tenant, "spec": CHEAP}] * n, settings=worker.settings)
        ids = [j.id for j in jobs]
    announce_jobs(ids, settings=worker.settings)
    return ids


def _claims(worker: LiveWorker) -> list[tuple[int, str]]:
    """(event id, job id) of every claim so far, in the order the worker made them."""
    with session_scope(worker.settings) as s:
        rows = s.query(JobEvent.id, JobEvent.job_id).filter(JobEvent.kind == "claimed").order_by(JobEvent.id)
        return [(int(i), str(j)) for i, j in rows]


def _states(worker: LiveWorker, ids: list[str]) -> dict[str, str]:
    with session_scope(worker.settings) as s:
        return {str(i): str(st) for i, st in s.query(Job.id, Job.state).filter(Job.id.in_(ids))}


def test_fair_share_b_starts_within_a_few_claims_after_a_queued_200(live_worker: LiveWorker):
    """Tenant A queues 200 jobs, then tenant B queues 5: B's start within the next few claims.

    The messages reach the worker in the order they were sent (A's 200 first), so only the
    claim's fair-share rule can start B's jobs early: a message claims whichever job fair share
    picks. Once B's 5 have started, A's jobs still queued are cancelled (immediate for a queued
    job) and the waiting messages purged, so the test ends there.
    """
    a, b = _tenant(live_worker, "fair-a"), _tenant(live_worker, "fair-b")
    a_ids = _queue(live_worker, a, A_JOBS)
    wait_for(lambda: any(j in set(a_ids) for _, j in _claims(live_worker)), 60,
             "the worker to claim A's first job", live_worker)
    before_b = max(i for i, _ in _claims(live_worker))
    b_ids = _queue(live_worker, b, B_JOBS)

    def b_all_started() -> list[str] | None:
        after = [job for event_id, job in _claims(live_worker) if event_id > before_b]
        return after if set(b_ids) <= set(after) else None

    after_b = wait_for(b_all_started, 120, "B's 5 jobs to start", live_worker, interval=0.2)
    queued_a = [j for j, st in _states(live_worker, a_ids).items() if st == "queued"]
    with session_scope(live_worker.settings) as s:
        for job_id in queued_a:
            with contextlib.suppress(InvalidState):  # the worker claimed and ran it meanwhile
                cancel_job(s, job_id)
    # The messages of A's cancelled jobs.
    broker_connection(live_worker.settings).default_channel.queue_purge(live_worker.settings.queue)

    last_b = max(after_b.index(j) for j in b_ids)
    assert last_b < WITHIN_CLAIMS, (
        f"B's last job started at claim {last_b + 1} after B queued, expected within {WITHIN_CLAIMS}")
    assert len([j for j in after_b[:last_b] if j in set(a_ids)]) <= B_JOBS + 1, after_b
    # Many of A's jobs (queued before B's) were still waiting: in message order B would wait for them.
    assert len(queued_a) > 2 * WITHIN_CLAIMS, len(queued_a)
    # The claims above were real work: every job the worker started ran to the end.
    started = sorted({j for _, j in _claims(live_worker)} & set(a_ids + b_ids))

    def all_ended() -> dict[str, str] | None:
        states = _states(live_worker, started)
        return states if "running" not in states.values() else None

    states = wait_for(all_ended, 60, "the started jobs to finish", live_worker)
    assert {states[j] for j in b_ids} == {"succeeded"}, states


def test_a_chat_data_set_trains_rendered_with_the_jobs_base_model(live_worker: LiveWorker, tmp_path: Path):
    """OpenAI's chat rows, uploaded as they are, are rendered by the worker when the job starts
    (tiny-gpt2's tokenizer has no chat template: the plain `role: content` prompt)."""
    tenant = _tenant(live_worker, "chatty")
    data = tmp_path / "chat.jsonl"
    rows = [{"messages": [{"role": "user", "content": f"Say {i}."}, {"role": "assistant", "content": f"{i}"}]}
            for i in range(12)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    job_id = _submit(live_worker, tenant, task="custom-generation", base_model="tiny-gpt2", dataset=str(data),
                     max_steps=1, eval_size=2, rank=2)
    detail = _wait_terminal(live_worker, [job_id])[job_id]
    assert detail["state"] == "succeeded", (detail, _events(live_worker, job_id))
    stored = live_worker.settings.artifacts / detail["tenant_id"] / "datasets"
    (rendered,) = stored.glob("*/rendered/*/data.jsonl")
    first = json.loads(rendered.read_text().splitlines()[0])
    assert first["prompt"].startswith("user: Say ") and first["prompt"].endswith("\nassistant: ")
    assert set(detail["metrics"]["validation"]) >= {"rouge_l"}
