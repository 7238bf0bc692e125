"""A worker with pack_max_jobs > 1 claims compatible queued jobs by the usual fair-share rule and
quotas, trains them in one pack, and settles each as its own job: its own claim, attempt, usage
(its token share), adapter and a `packed` event naming its partners."""

from __future__ import annotations

from sqlalchemy import select

from lora_engine.cache import BaseModelCache
from orchestrator import services as svc
from orchestrator.registry.db import session_scope
from orchestrator.registry.models import Usage
from worker.packed import run_packed

pytest_plugins = ["registry_fixtures"]

SMALL = {"base_model": "tiny-bert", "max_steps": 2, "batch_size": 4, "eval_size": 8, "max_length": 64}


def test_compatible_jobs_train_packed_each_with_its_own_claim(registry_settings):
    settings = registry_settings.model_copy(update={"pack_max_jobs": 4})
    with session_scope(settings) as s:
        svc.create_tenant(s, "acme", max_running=1)
        svc.create_tenant(s, "beta", max_running=2)
        a1 = svc.submit_job(s, "acme", {**SMALL, "task": "rte"}).id
        a2 = svc.submit_job(s, "acme", {**SMALL, "task": "mrpc"}).id  # acme's quota: stays queued
        b1 = svc.submit_job(s, "beta", {**SMALL, "task": "cola", "method": "dora", "rank": 4}).id
        b2 = svc.submit_job(s, "beta", {**SMALL, "task": "rte", "method": "rslora", "seed": 7}).id
        other_base = svc.submit_job(s, "beta", {"task": "e2e", "base_model": "tiny-llama", "max_steps": 1}).id

    results = run_packed(a1, worker_id="w1", settings=settings, cache=BaseModelCache())

    assert {r.job_id: r.outcome for r in results} == {a1: "succeeded", b1: "succeeded", b2: "succeeded"}
    packed = {a1, b1, b2}
    with session_scope(settings) as s:
        for job_id in packed:
            detail = svc.get_job(s, job_id)
            assert (detail.job.state, detail.job.attempts) == ("succeeded", 1)
            assert detail.adapter is not None and detail.metrics["validation"]
            events = svc.job_events(s, job_id)
            assert [e.kind for e in events].count("claimed") == 1
            (event,) = [e for e in events if e.kind == "packed"]
            assert set(event.data["packed_with"]) == packed - {job_id}
        assert svc.get_job(s, a2).job.state == "queued"
        assert svc.get_job(s, other_base).job.state == "queued"
        usage = {u.job_id: u for u in s.scalars(select(Usage).where(Usage.job_id.in_(packed)))}
    assert set(usage) == packed
    for u in usage.values():  # each job pays its own share: examples of its own steps, its tokens
        assert u.examples == 2 * 4 and u.tokens > 0 and 0 < u.device_seconds <= u.wall_seconds + 1.0
