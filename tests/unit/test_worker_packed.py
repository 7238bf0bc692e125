"""A worker with pack_max_jobs > 1 claims compatible queued jobs by the usual fair-share rule and
quotas, trains them in one pack, and settles each as its own job: its own claim, attempt, usage
(its token share), adapter and a `packed` event naming its partners. A waiting compatible job
joins a running pack at a step boundary; unconfigured limits come from a memory probe."""

from __future__ import annotations

from sqlalchemy import select

from lora_engine.cache import BaseModelCache
from orchestrator.registry.db import session_scope
from orchestrator.registry.models import Usage
from orchestrator.services.jobs import get_job, job_events, submit_job
from orchestrator.services.tenants import create_tenant
from worker import packed as packed_worker
from worker.packed import run_packed
from worker.runner import run_job

pytest_plugins = ["registry_fixtures"]

SMALL = {"base_model": "tiny-bert", "max_steps": 2, "batch_size": 4, "eval_size": 8, "max_length": 64}


def test_compatible_jobs_train_packed_each_with_its_own_claim(registry_settings):
    # Both limits configured: no probe, the partners join before the first round.
    settings = registry_settings.model_copy(update={"pack_max_jobs": 4, "pack_max_tokens": 3 * 4 * 64})
    with session_scope(settings) as s:
        create_tenant(s, "acme", max_running=1)
        create_tenant(s, "beta", max_running=2)
        a1 = submit_job(s, "acme", {**SMALL, "task": "rte"}).id
        a2 = submit_job(s, "acme", {**SMALL, "task": "mrpc"}).id  # acme's quota: stays queued
        b1 = submit_job(s, "beta", {**SMALL, "task": "cola", "method": "dora", "rank": 4}).id
        b2 = submit_job(s, "beta", {**SMALL, "task": "rte", "method": "rslora", "seed": 7}).id
        other_base = submit_job(s, "beta", {"task": "e2e", "base_model": "tiny-llama", "max_steps": 1}).id

    results = run_packed(a1, worker_id="w1", settings=settings, cache=BaseModelCache())

    assert {r.job_id: r.outcome for r in results} == {a1: "succeeded", b1: "succeeded", b2: "succeeded"}
    packed = {a1, b1, b2}
    with session_scope(settings) as s:
        for job_id in packed:
            detail = get_job(s, job_id)
            assert (detail.job.state, detail.job.attempts) == ("succeeded", 1)
            assert detail.adapter is not None and detail.metrics["validation"]
            events = job_events(s, job_id)
            assert [e.kind for e in events].count("claimed") == 1
            (event,) = [e for e in events if e.kind == "packed"]
            assert set(event.data["packed_with"]) == packed - {job_id}
        assert get_job(s, a2).job.state == "queued"
        assert get_job(s, other_base).job.state == "queued"
        usage = {u.job_id: u for u in s.scalars(select(Usage).where(Usage.job_id.in_(packed)))}
    assert set(usage) == packed
    for u in usage.values():  # each job pays its own share: examples of its own steps, its tokens
        assert u.examples == 2 * 4 and u.tokens > 0 and 0 < u.device_seconds <= u.wall_seconds + 1.0


def test_a_waiting_job_joins_the_running_pack_and_limits_come_from_a_memory_probe(registry_settings,
                                                                                   monkeypatch):
    monkeypatch.setattr(packed_worker, "_probes", {})  # measured here, not by an earlier test
    settings = registry_settings.model_copy(update={"pack_max_jobs": "auto"})
    with session_scope(settings) as s:
        create_tenant(s, "acme", max_running=1)
        create_tenant(s, "beta", max_running=1)
        a1 = submit_job(s, "acme", {**SMALL, "task": "rte"}).id
        a2 = submit_job(s, "acme", {**SMALL, "task": "mrpc", "seed": 3}).id  # waits for acme's quota
        b1 = submit_job(s, "beta", {**SMALL, "task": "cola", "method": "dora", "max_steps": 6}).id

    # a1 trains its first (measured) round alone, b1 joins after it, a2 when a1 has left.
    results = run_packed(a1, worker_id="w1", settings=settings, cache=BaseModelCache())

    assert {r.job_id: r.outcome for r in results} == {a1: "succeeded", b1: "succeeded", a2: "succeeded"}
    partners = {a1: {b1}, b1: {a1, a2}, a2: {b1}}
    with session_scope(settings) as s:
        events = {j: job_events(s, j) for j in partners}
        usage = {u.job_id: u for u in s.scalars(select(Usage).where(Usage.job_id.in_(partners)))}
    for job_id, expected in partners.items():
        kinds = [e.kind for e in events[job_id]]
        assert kinds.count("claimed") == 1 and kinds[-1] == "succeeded"
        (packed,) = [e for e in events[job_id] if e.kind == "packed"]
        assert set(packed.data["packed_with"]) == expected
        limits = packed.data["limits"]
        assert limits["bytes_per_token"] > 0 and limits["probe_tokens"] > 0 and limits["fraction"] == 0.5
        assert 2 <= limits["max_jobs"] <= 16 and limits["max_tokens"] >= 3 * 4 * 64
    assert usage[a2].examples == 2 * 4 and usage[b1].examples == 6 * 4
    # a2 was claimed only after a1 had succeeded (acme's quota), into the pack b1 was still in.
    a1_done = next(e.ts for e in events[a1] if e.kind == "succeeded")
    a2_claimed = next(e.ts for e in events[a2] if e.kind == "claimed")
    b1_done = next(e.ts for e in events[b1] if e.kind == "succeeded")
    assert a1_done <= a2_claimed < b1_done


def test_a_job_the_pack_refuses_goes_back_to_the_queue_and_trains_alone(registry_settings):
    settings = registry_settings.model_copy(update={"pack_max_jobs": 4, "pack_max_tokens": 4096})
    with session_scope(settings) as s:
        create_tenant(s, "acme", max_running=2)
        a1 = submit_job(s, "acme", {**SMALL, "task": "rte"}).id
        # LoRA on the embeddings: packed rounds route linear layers only, alone it trains.
        targets = ["word_embeddings", "query"]
        embed = submit_job(s, "acme", {**SMALL, "task": "mrpc", "targets": targets}).id

    first = run_packed(a1, worker_id="w1", settings=settings, cache=BaseModelCache())
    assert {r.job_id: r.outcome for r in first} == {a1: "succeeded", embed: "requeued"}
    with session_scope(settings) as s:
        assert get_job(s, embed).job.state == "queued"

    # Its own message: it is now the head, the pack refuses it again, the single path trains it.
    second = run_packed(embed, worker_id="w1", settings=settings, cache=BaseModelCache())
    assert [(r.job_id, r.outcome) for r in second] == [(embed, "requeued"), (embed, "succeeded")]
    with session_scope(settings) as s:
        detail = get_job(s, embed)
        kinds = [e.kind for e in job_events(s, embed)]
    assert detail.job.state == "succeeded" and detail.adapter is not None
    assert "packed" not in kinds and kinds.count("claimed") == 3


def test_a_pack_takes_partners_of_its_own_pooling(registry_settings):
    # [CLS] jobs pack with [CLS] jobs and mean-pooled ones with their own kind: the others are not
    # claimed (no requeue, no attempt spent) and train in the next pack.
    settings = registry_settings.model_copy(update={"pack_max_jobs": 4, "pack_max_tokens": 4096})
    with session_scope(settings) as s:
        create_tenant(s, "acme", max_running=4)
        c1 = submit_job(s, "acme", {**SMALL, "task": "rte"}).id
        m1 = submit_job(s, "acme", {**SMALL, "task": "mrpc", "pooling": "mean"}).id
        c2 = submit_job(s, "acme", {**SMALL, "task": "cola", "seed": 3}).id
        m2 = submit_job(s, "acme", {**SMALL, "task": "stsb", "pooling": "mean"}).id

    first = run_packed(c1, worker_id="w1", settings=settings, cache=BaseModelCache())
    assert {r.job_id: r.outcome for r in first} == {c1: "succeeded", c2: "succeeded"}
    second = run_packed(m1, worker_id="w1", settings=settings, cache=BaseModelCache())
    assert {r.job_id: r.outcome for r in second} == {m1: "succeeded", m2: "succeeded"}
    with session_scope(settings) as s:
        for job_id, partner in ((m1, m2), (m2, m1), (c1, c2)):
            detail = get_job(s, job_id)
            assert detail.job.attempts == 1
            (event,) = [e for e in job_events(s, job_id) if e.kind == "packed"]
            assert event.data["packed_with"] == [partner]


def test_a_packed_run_records_its_phases_as_a_solo_run_does(registry_settings):
    settings = registry_settings.model_copy(update={"pack_max_jobs": 2, "pack_max_tokens": 2 * 4 * 64})
    with session_scope(settings) as s:
        create_tenant(s, "acme", max_running=3)
        a1 = submit_job(s, "acme", {**SMALL, "task": "rte"}).id
        a2 = submit_job(s, "acme", {**SMALL, "task": "mrpc", "seed": 3}).id
    cache = BaseModelCache()
    results = run_packed(a1, worker_id="w1", settings=settings, cache=cache)
    assert {r.job_id: r.outcome for r in results} == {a1: "succeeded", a2: "succeeded"}
    with session_scope(settings) as s:
        solo = submit_job(s, "acme", {**SMALL, "task": "rte"}).id
    assert run_job(solo, worker_id="w1", settings=settings, cache=cache).outcome == "succeeded"

    def phases(job_id: str) -> list[str]:
        with session_scope(settings) as s:
            events = job_events(s, job_id)
        assert any(e.kind == "packed" for e in events) == (job_id != solo)
        return [e.data["phase"] for e in events if e.kind == "phase"]

    assert phases(solo) == ["evaluating", "saving"]
    assert phases(a1) == phases(a2) == phases(solo)
