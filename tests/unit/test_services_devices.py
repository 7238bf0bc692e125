"""Jobs across several devices, on SQLite and PostgreSQL: the spec field at the door, the claim
(a worker takes jobs of at most the devices it owns, of its message's device count), the running
quota (a job counts its devices), the status's reason for a job no live worker can take, and the
pack rule."""

from __future__ import annotations

from datetime import timedelta

import pytest

from lora_engine.errors import SpecError
from lora_engine.packing import refusal
from lora_engine.spec import validate_spec
from orchestrator.cli.worker import device_groups
from orchestrator.dispatch import JobClass
from orchestrator.registry.models import utcnow
from orchestrator.services.jobs import submit_job
from orchestrator.services.leases import UsageRecord, claim_next, unclaimable_reason
from orchestrator.services.quotas import tenant_quota_usage
from orchestrator.services.reconcile import by_class
from orchestrator.services.status import fleet_status
from orchestrator.services.tenants import create_tenant
from orchestrator.services.workers import WorkerInfo, register_worker

SPEC = {"task": "sst2", "method": "lora", "rank": 4, "base_model": "tiny-bert", "max_steps": 5}

pytest_plugins = ["registry_fixtures"]


def _worker(session, worker_id: str, devices: int, now) -> None:
    register_worker(session, WorkerInfo(worker_id, "host", 1, "gpu", "cpu", "cpu", 10.0, devices), now=now)


def test_a_worker_claims_only_jobs_of_at_most_its_devices_and_the_status_says_why(session):
    create_tenant(session, "acme", max_running=3)
    wide = submit_job(session, "acme", dict(SPEC, devices=2))
    assert (wide.devices, wide.spec["devices"]) == (2, 2)
    now = utcnow() - timedelta(seconds=1)
    _worker(session, "small:1", 1, now)

    assert claim_next(session, "small:1", 60, devices=1) is None  # never, however often it asks
    assert unclaimable_reason(session, wide.id, 1) == f"job {wide.id} needs 2 devices; this worker owns 1"
    (waiting,) = fleet_status(session, lease_seconds=60).waiting
    assert waiting.why == ("needs 2 devices; no live worker has as many (the most is 1): start one with "
                           "`lorafleet worker --devices 2`")

    narrow = submit_job(session, "acme", SPEC)
    taken = claim_next(session, "small:1", 60, devices=1)
    assert taken.id == narrow.id  # the one-device job behind it is not held up

    _worker(session, "big:2", 2, now)
    assert fleet_status(session, lease_seconds=60).waiting[0].why == "next in line, for the next free worker"
    claimed = claim_next(session, "big:2", 60, devices=2)
    assert claimed is not None and claimed.id == wide.id and claimed.state == "running"


def test_a_job_counts_its_devices_against_the_running_quota(session):
    create_tenant(session, "acme", max_running=2)
    first = submit_job(session, "acme", SPEC)
    wide = submit_job(session, "acme", dict(SPEC, devices=2))
    assert claim_next(session, "w:1", 60, devices=4).id == first.id
    # 1 device running + 2 asked > 2: the wide job waits for the quota, and says so.
    assert claim_next(session, "w:2", 60, devices=4) is None
    assert unclaimable_reason(session, wide.id, 4) == (
        "tenant acme is at its quota (1/2 running; this job needs 2)")
    register_worker(session, WorkerInfo("w:2", "host", 1, "gpu", "cpu", "cpu", 10.0, 4))
    (waiting,) = fleet_status(session, lease_seconds=60).waiting
    assert waiting.why == "tenant acme at its quota (1/2 running; it needs 2)"

    create_tenant(session, "solo", max_running=2)
    alone = submit_job(session, "solo", dict(SPEC, devices=2))
    assert claim_next(session, "w:3", 60, devices=2).id == alone.id
    usage = tenant_quota_usage(session, "solo")
    assert (usage.running, usage.max_running) == (2, 2)  # one job, two devices
    assert claim_next(session, "w:4", 60, devices=4) is None
    assert submit_job(session, "solo", SPEC).state == "queued"
    assert claim_next(session, "w:4", 60, devices=4) is None  # solo is full with its one job


def test_devices_are_checked_at_the_door(session):
    create_tenant(session, "acme", max_running=2)
    for bad, says in [(0, "devices: must be between 1 and 64"), (-1, "devices: must be between 1 and 64"),
                      (65, "devices: must be between 1 and 64"), (1.5, "a whole number"),
                      (True, "devices"), ("2", "devices")]:
        with pytest.raises(SpecError) as refused:
            validate_spec(dict(SPEC, devices=bad))
        assert says in str(refused.value), bad
    with pytest.raises(SpecError, match=r"devices: at most 8 per job on this fleet \(got 9"):
        submit_job(session, "acme", dict(SPEC, devices=9))
    with pytest.raises(SpecError, match=r"may run 2 device\(s\) at once and this job needs 3: it could"):
        submit_job(session, "acme", dict(SPEC, devices=3))
    assert validate_spec(SPEC).devices == 1
    # A quota of 0 holds the tenant's jobs back on purpose: they queue, whatever they need.
    create_tenant(session, "held", max_running=0)
    assert submit_job(session, "held", dict(SPEC, devices=2)).state == "queued"
    assert submit_job(session, "held", SPEC).state == "queued"


def test_a_job_across_devices_is_never_packed_and_bills_each_device():
    assert refusal(method="lora", arch="bert", kind="classification") is None
    assert refusal(method="lora", arch="bert", kind="classification", devices=2) == (
        "a job across 2 devices cannot be packed (a pack runs on one): it trains alone")
    stats = type("Stats", (), {"device": "cpu", "device_s": 3.0, "wall_s": 5.0, "peak_mem_bytes": None,
                               "examples": 8, "tokens": 80})()
    assert UsageRecord.of_run(stats).device_seconds == 3.0
    assert UsageRecord.of_run(stats, devices=2).device_seconds == 10.0  # 2 devices x 5 s of wall time


def test_the_worker_command_splits_gpus_into_groups_of_devices(monkeypatch):
    import click

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert device_groups(None, 2) == [["0", "1"]]
    assert device_groups(4, 2) == [["0", "1"], ["2", "3"]]
    assert device_groups(2, None) == [["0"], ["1"]]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6,7")
    assert device_groups(4, 4) == [["4", "5", "6", "7"]]
    with pytest.raises(click.UsageError, match="--gpus 3 is not a multiple of --devices 2"):
        device_groups(3, 2)


def test_a_message_wakes_a_worker_for_a_job_of_its_own_device_count(session):
    """Each device count has its queue (`dispatch.job_queue`): the worker woken by a message
    claims a job of that message's count, never one whose own message waits on another queue."""
    create_tenant(session, "acme", max_running=4)
    narrow = submit_job(session, "acme", SPEC)  # older: first in fair-share order
    wide = submit_job(session, "acme", dict(SPEC, devices=2))
    assert by_class(session, [narrow.id, wide.id, "no-such-job"]) == {
        JobClass(1, False): [narrow.id, "no-such-job"], JobClass(2, False): [wide.id]}

    claimed = claim_next(session, "big:1", 60, devices=2, message=wide.id)
    assert claimed is not None and claimed.id == wide.id  # not the older one-device job
    assert claim_next(session, "big:2", 60, devices=2, message=wide.id) is None  # no other 2-device job
    assert claim_next(session, "big:2", 60, devices=2, message=narrow.id).id == narrow.id
