"""Faults with real processes, embedded (SQLite) and cluster (PostgreSQL + Redis): two workers on
one registry, short leases; every test ends with the exactly-once check of the registry (one
succeeded row, one adapter row, the adapter's sha256 on disk equal to the registry's).

The artifacts folder is a small tmpfs mounted for the module, so a test can fill it or make it
read-only the way a real volume fails (this needs root, as `make test` has for its packages).
The SIGKILL test runs last in each mode: it kills a worker.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from orchestrator.announce import announce_jobs
from orchestrator.registry import db
from orchestrator.registry.db import session_scope
from orchestrator.services.jobs import cancel_job, get_job, job_events, retry_job, submit_job
from orchestrator.services.leases import claim_job
from orchestrator.services.tenants import create_tenant
from tests.integration.faults import (
    NOTICE_BOUND_S,
    TERMINAL,
    Fleet,
    assert_exactly_once,
    fleet_env,
    make_fleet,
    sigkill,
    stop_fleet,
)
from tests.integration.workers import MODES, wait_for, worker_env
from tests.registry_fixtures import PG_ADMIN_URL, create_pg_database, drop_pg_database, pg_database_url

pytestmark = pytest.mark.integration

# Its own Redis database; parallel checkouts set another so their workers never share a queue.
REDIS_URL = os.environ.get("LORAFLEET_TEST_FAULTS_REDIS_URL", "redis://127.0.0.1:6379/5")
TINY = {"task": "sst2", "method": "lora", "rank": 4, "base_model": "tiny-bert", "max_steps": 3,
        "batch_size": 4, "eval_size": 16}
ARTIFACTS_MB = 64


def _mount_tmpfs(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={ARTIFACTS_MB}m", "tmpfs", str(path)], check=True)


@pytest.fixture(scope="module", params=MODES)
def fleet(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    mode = request.param
    home = tmp_path_factory.mktemp(f"faults-{mode}")
    artifacts = home / "artifacts"
    _mount_tmpfs(artifacts)
    env = fleet_env(worker_env(home))
    pg_name = None
    if mode == "cluster":
        import redis

        pg_name = create_pg_database()
        env["LORAFLEET_DATABASE_URL"] = pg_database_url(pg_name)
        env["LORAFLEET_BROKER_URL"] = REDIS_URL
        db.upgrade(env["LORAFLEET_DATABASE_URL"])
        redis.Redis.from_url(REDIS_URL).flushdb()
    fleet = make_fleet(env, home, mode)
    try:
        yield fleet
    finally:
        stop_fleet(fleet)
        from orchestrator.dispatch import close_clients

        close_clients()
        db.forget_engine(fleet.settings.database_url)
        subprocess.run(["umount", "-l", str(artifacts)], check=False)
        if pg_name is not None:
            drop_pg_database(pg_name)
            import redis

            redis.Redis.from_url(REDIS_URL).flushdb()


@pytest.fixture
def live(fleet: Fleet) -> Fleet:
    fleet.ensure_running()
    return fleet


def _tenant(fleet: Fleet, slug: str, max_running: int = 2) -> str:
    with session_scope(fleet.settings) as s:
        return create_tenant(s, f"{slug}-{fleet.mode[:3]}", max_running=max_running).slug


def _submit(fleet: Fleet, tenant: str, dispatch: bool = True, **spec: Any) -> str:
    with session_scope(fleet.settings) as s:
        job_id = submit_job(s, tenant, {**TINY, **spec}).id
    if dispatch:
        announce_jobs([job_id], settings=fleet.settings)
    return job_id


def _detail(fleet: Fleet, job_id: str) -> dict[str, Any]:
    with session_scope(fleet.settings) as s:
        return get_job(s, job_id).to_dict()


def _events(fleet: Fleet, job_id: str) -> list[Any]:
    with session_scope(fleet.settings) as s:
        return list(job_events(s, job_id))


def _wait_state(fleet: Fleet, job_id: str, states: set[str], timeout: float = 120) -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        d = _detail(fleet, job_id)
        return d if d["state"] in states else None

    return wait_for(reached, timeout, f"job {job_id} to be {sorted(states)}\n{fleet.log()}", interval=0.2)


def _wait_step(fleet: Fleet, job_id: str, step: int, timeout: float = 120) -> None:
    wait_for(lambda: (_detail(fleet, job_id)["progress"]["step"] or 0) >= step, timeout,
             f"job {job_id} to reach step {step}\n{fleet.log()}", interval=0.1)


def test_duplicate_messages_and_two_racing_workers_run_each_job_once(live: Fleet):
    tenants = [_tenant(live, f"race{i}") for i in range(3)]
    jobs = [_submit(live, tenants[i % 3], dispatch=False, seed=i + 1) for i in range(6)]
    announce_jobs(jobs, settings=live.settings)
    announce_jobs(jobs, settings=live.settings)  # every message delivered twice
    for job_id in jobs:
        detail = _wait_state(live, job_id, TERMINAL)
        assert_exactly_once(live.settings, job_id)
        assert detail["attempts"] == 1
        assert [e.kind for e in _events(live, job_id)].count("claimed") == 1
    owners = {e.data["worker"] for j in jobs for e in _events(live, j) if e.kind == "claimed"}
    assert len(owners) == 2  # both workers took part in the race


def test_retry_cancel_retry_to_the_end(live: Fleet):
    tenant = _tenant(live, "recancel")
    job_id = _submit(live, tenant, max_steps=400)
    start = 0
    for round_ in (1, 2):
        if round_ == 2:  # the retry resumed from the cancel's checkpoint
            resumed = wait_for(lambda: [e for e in _events(live, job_id) if e.kind == "resumed"], 120,
                               f"the retry to resume\n{live.log()}", interval=0.2)
            start = resumed[-1].data["step"]
        _wait_step(live, job_id, start + 3)
        with session_scope(live.settings) as s:
            cancel_job(s, job_id)
        assert _wait_state(live, job_id, TERMINAL)["state"] == "cancelled"  # every cancel is obeyed
        with session_scope(live.settings) as s:
            retry_job(s, job_id)
        announce_jobs([job_id], settings=live.settings)
    detail = _wait_state(live, job_id, TERMINAL, timeout=180)
    assert_exactly_once(live.settings, job_id)
    assert detail["attempts"] == 3  # counting up: 1, 2, 3
    assert [u["attempt"] for u in detail["usage"]] == [1, 2, 3]
    kinds = [e.kind for e in _events(live, job_id)]
    assert kinds.count("cancelled") == 2 and kinds.count("retried") == 2 and kinds[-1] == "succeeded"
    assert kinds.count("resumed") == 2  # each retry continued from the cancel's checkpoint


def test_a_diverging_run_fails_with_step_and_loss_and_no_adapter(live: Fleet):
    tenant = _tenant(live, "diverge")
    # lr 1.0 (the largest the spec allows) on a random tiny BERT: the loss climbs far above
    # 3 x its start (LORAFLEET_DIVERGENCE_FACTOR) for 3 steps in a row.
    job_id = _submit(live, tenant, max_steps=200, lr=1.0, head_lr=1.0, batch_size=8)
    detail = _wait_state(live, job_id, TERMINAL)
    assert detail["state"] == "failed" and detail["attempts"] == 1, detail
    assert "TrainingDiverged: training diverged at step" in detail["error"] and "(loss " in detail["error"]
    assert detail["adapter"] is None
    root = live.settings.artifacts / detail["tenant_id"]
    assert not [p for p in root.iterdir() if p.name != "checkpoints" and not p.name.startswith(".")]


def test_a_job_cancelled_while_its_worker_is_dead_stays_cancelled(live: Fleet):
    tenant = _tenant(live, "deadcancel")
    job_id = _submit(live, tenant, dispatch=False)
    with session_scope(live.settings) as s:
        assert claim_job(s, job_id, "ghost@dead-host:1", lease_seconds=1) is not None
        assert cancel_job(s, job_id).state == "running"  # a flag the dead worker never reads
    # The embedded workers' reconciler thread, or the cluster's reconciler process, ends it.
    detail = _wait_state(live, job_id, TERMINAL, timeout=NOTICE_BOUND_S)
    assert detail["state"] == "cancelled"
    time.sleep(2)  # a few more reconciler passes: still cancelled, never claimed again
    assert _detail(live, job_id)["state"] == "cancelled"
    assert [e.kind for e in _events(live, job_id)].count("claimed") == 1


def _fill(path: Path) -> Path:
    filler = path / "filler"
    with open(filler, "wb") as f:
        os.posix_fallocate(f.fileno(), 0, os.statvfs(path).f_bavail * os.statvfs(path).f_frsize)
    return filler


def test_artifacts_full_or_read_only_fail_the_job_and_leave_nothing(live: Fleet):
    tenant = _tenant(live, "storage")
    artifacts = live.settings.artifacts
    filler = _fill(artifacts)
    try:
        full = _submit(live, tenant)
        detail = _wait_state(live, full, TERMINAL)
    finally:
        filler.unlink()
    assert detail["state"] == "failed" and detail["attempts"] == 1, detail
    assert "artifacts storage full or read-only" in detail["error"] and "No space left" in detail["error"]
    subprocess.run(["mount", "-o", "remount,ro", str(artifacts)], check=True)
    try:
        read_only = _submit(live, tenant, seed=5)
        ro_detail = _wait_state(live, read_only, TERMINAL)
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(artifacts)], check=True)
    assert ro_detail["state"] == "failed" and "Read-only file system" in ro_detail["error"], ro_detail
    for d in (detail, ro_detail):
        assert d["adapter"] is None
        root = artifacts / d["tenant_id"]
        leftovers = [p for p in root.rglob("*") if p.is_file()] if root.exists() else []
        assert leftovers == [], leftovers  # no partial folder, no staging, none registered
    # The volume back: the same job retried succeeds exactly once.
    with session_scope(live.settings) as s:
        retry_job(s, full)
    announce_jobs([full], settings=live.settings)
    _wait_state(live, full, TERMINAL)
    assert_exactly_once(live.settings, full)


@pytest.mark.parametrize("fleet", ["cluster"], indirect=True)  # the embedded registry is a file
def test_cut_registry_connections_are_survived(live: Fleet):
    tenant = _tenant(live, "pgcut")
    job_id = _submit(live, tenant, max_steps=300)
    _wait_step(live, job_id, 3)
    dbname = live.settings.database_url.rsplit("/", 1)[1]
    admin = psycopg.connect(PG_ADMIN_URL, autocommit=True)
    cut = 0
    try:
        for _ in range(5):  # five cuts while it trains: the heartbeat reconnects with back-off
            cut += admin.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()", (dbname,)).fetchone()[0]
            time.sleep(0.7)
    finally:
        admin.close()
    assert cut >= 1
    detail = _wait_state(live, job_id, TERMINAL)
    assert_exactly_once(live.settings, job_id)
    assert detail["attempts"] == 1  # survived: no requeue, no second attempt


def test_sigkill_mid_training_resumes_on_the_other_worker_from_the_last_checkpoint(live: Fleet):
    tenant = _tenant(live, "sigkill")
    every = int(live.env["LORAFLEET_CHECKPOINT_EVERY"])
    job_id = _submit(live, tenant, max_steps=150, batch_size=8)
    _wait_step(live, job_id, every + 2)
    _, victim = live.owner(job_id)
    sigkill(victim)
    killed_at = time.monotonic()
    requeued = wait_for(lambda: next((e for e in _events(live, job_id) if e.kind == "requeued"), None),
                        NOTICE_BOUND_S, f"the dead worker to be noticed\n{live.log()}", interval=0.2)
    noticed_s = time.monotonic() - killed_at
    resumed = wait_for(lambda: next((e for e in _events(live, job_id) if e.kind == "resumed"), None),
                       120, f"the job to resume\n{live.log()}", interval=0.2)
    resumed_s = time.monotonic() - killed_at
    detail = _wait_state(live, job_id, TERMINAL)
    assert_exactly_once(live.settings, job_id)
    events = _events(live, job_id)
    claims = [e for e in events if e.kind == "claimed"]
    assert len(claims) == 2 and claims[1].data["worker"] != claims[0].data["worker"]
    assert detail["attempts"] == 2
    # Resumed from the last checkpoint of the killed attempt: at most one interval repeated.
    checkpoints = [e.data["step"] for e in events if e.kind == "checkpoint" and e.id < requeued.id]
    # (a kill right after a save and before its event leaves one more checkpoint on disk than
    # in the events: the resume then starts from that newer one)
    assert checkpoints and resumed.data["step"] in (checkpoints[-1], checkpoints[-1] + every)
    # The registry's progress at the requeue trails the killed worker by up to a heartbeat, so
    # the repeated steps read off the events are at most this (and at most one interval anyway:
    # the worker would have saved another checkpoint).
    assert requeued.data["step"] - resumed.data["step"] <= every
    print(f"\n[{live.mode}] SIGKILL -> noticed {noticed_s:.1f}s, resumed {resumed_s:.1f}s "
          f"(lease {live.settings.lease_seconds}s, heartbeat {live.settings.heartbeat_seconds}s)")
