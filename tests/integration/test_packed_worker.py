"""Packed training through a real worker process: a job submitted while another trains joins its
pack at a step boundary, both succeed, and the registry records them as packed together."""

from __future__ import annotations

from typing import Any

import pytest

from orchestrator.announce import announce_jobs
from orchestrator.registry.db import session_scope
from orchestrator.services.jobs import get_job, job_events, submit_job
from orchestrator.services.tenants import create_tenant
from tests.integration.workers import LiveWorker, wait_for

pytestmark = pytest.mark.integration

TINY = {"task": "sst2", "method": "lora", "rank": 4, "base_model": "tiny-bert", "batch_size": 4,
        "eval_size": 16, "max_length": 64}


@pytest.fixture(scope="module")
def worker_settings_env() -> dict[str, str]:
    # K and the token budget unset: the worker measures the pack's first round and plans them.
    return {"LORAFLEET_PACK_MAX_JOBS": "auto", "LORAFLEET_CHECKPOINT_EVERY": "1000"}


def _submit(worker: LiveWorker, tenant: str, **spec: Any) -> str:
    with session_scope(worker.settings) as s:
        job_id = submit_job(s, tenant, {**TINY, **spec}, settings=worker.settings).id
    announce_jobs([job_id], settings=worker.settings)
    return job_id


def _job(worker: LiveWorker, job_id: str):
    with session_scope(worker.settings) as s:
        return get_job(s, job_id).to_dict(), [(e.kind, e.data) for e in job_events(s, job_id)]


def test_a_job_submitted_while_another_trains_joins_its_pack(live_worker: LiveWorker):
    with session_scope(live_worker.settings) as s:
        create_tenant(s, "first", max_running=1)
        create_tenant(s, "second", max_running=1)
    first = _submit(live_worker, "first", max_steps=200)
    wait_for(lambda: (_job(live_worker, first)[0]["progress"]["step"] or 0) >= 2, 90,
             "the first job to train", live_worker)
    second = _submit(live_worker, "second", task="rte", method="dora", max_steps=3, seed=5)

    def done():
        jobs = {j: _job(live_worker, j) for j in (first, second)}
        finished = all(d["state"] in ("succeeded", "failed", "cancelled") for d, _ in jobs.values())
        return jobs if finished else None

    jobs = wait_for(done, 120, "both jobs to finish", live_worker, interval=0.5)
    for job_id, partner in ((first, second), (second, first)):
        detail, events = jobs[job_id]
        assert detail["state"] == "succeeded", (detail, live_worker.log()[-3000:])
        assert detail["adapter"] is not None
        (packed,) = [data for kind, data in events if kind == "packed"]
        assert packed["packed_with"] == [partner]
        assert packed["limits"]["bytes_per_token"] > 0 and packed["limits"]["max_jobs"] >= 2
    claimed = {j: [d["worker"] for k, d in jobs[j][1] if k == "claimed"] for j in jobs}
    assert claimed[first] == claimed[second] and len(claimed[first]) == 1  # one worker, one claim each
    assert "join the pack on tiny-bert" in live_worker.log()
