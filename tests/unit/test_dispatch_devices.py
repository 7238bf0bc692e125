"""Each job's message goes to the queue of its class, its device count and whether it needs CUDA
(`dispatch.job_class`, `dispatch.job_queue`), on every path that sends one: a submit
(`announce.sending_session`) and the reconciler's re-send; a worker consumes only the queues of
jobs it can claim. A real Redis broker and an embedded registry; the queues are read back as Redis
lists."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import redis

from orchestrator.announce import reconcile_once, sending_session
from orchestrator.config import load_settings
from orchestrator.dispatch import JobClass, close_clients, job_class, job_queue, worker_queues
from orchestrator.registry.db import forget_engine, session_scope
from orchestrator.services.jobs import submit_job
from orchestrator.services.tenants import create_tenant

REDIS_URL = os.environ.get("LORAFLEET_TEST_REDIS_URL", "redis://127.0.0.1:6379/11")
SPEC = {"task": "sst2", "method": "lora", "rank": 4, "base_model": "tiny-bert", "max_steps": 2}
NF4 = {"task": "e2e", "method": "lora", "rank": 4, "base_model": "tiny-llama", "max_steps": 2,
       "quantize": "nf4"}


def test_queue_names_keep_gpu_for_one_device_and_grow_with_the_devices_and_cuda():
    assert [job_queue("gpu", JobClass(n)) for n in (1, 2, 8)] == ["gpu", "gpu.devices-2", "gpu.devices-8"]
    assert [job_queue("gpu", JobClass(n, cuda=True)) for n in (1, 2)] == ["gpu.cuda", "gpu.cuda.devices-2"]
    assert (job_class(None, None), job_class(2, None), job_class(1, "nf4")) == (
        JobClass(1, False), JobClass(2, False), JobClass(1, True))
    assert worker_queues("gpu", 1) == ["gpu"]
    assert worker_queues("gpu", 3) == ["gpu", "gpu.devices-2", "gpu.devices-3"]
    # A CUDA worker takes the CPU-compatible jobs too; a CPU worker never hears a CUDA job.
    assert worker_queues("gpu", 2, cuda=True) == ["gpu", "gpu.devices-2", "gpu.cuda", "gpu.cuda.devices-2"]
    assert worker_queues("gpu", 1, cuda=True) == ["gpu", "gpu.cuda"]


def test_a_cpu_worker_consumes_no_cuda_queue(tmp_path):
    """The real worker app's queue list, with its kind from `LORAFLEET_DEVICE` as `pick_device`
    reads it (in a fresh process: the app reads its settings at import)."""
    env = {**os.environ, "LORAFLEET_HOME": str(tmp_path), "LORAFLEET_DEVICE": "cpu",
           "LORAFLEET_WORKER_DEVICES": "2", "LORAFLEET_QUEUE": "q",
           "LORAFLEET_BROKER_URL": f"sqla+sqlite:///{tmp_path / 'broker.sqlite'}"}
    out = subprocess.run([sys.executable, "-c", "from worker.celery_app import consumed_queues; "
                          "print(','.join(consumed_queues()))"],
                         env=env, capture_output=True, text=True, timeout=120, check=True).stdout
    assert out.split() == ["q,q.devices-2"]


def test_submit_and_the_reconciler_send_each_message_to_its_devices_queue(tmp_path):
    settings = load_settings({"LORAFLEET_HOME": str(tmp_path), "LORAFLEET_BROKER_URL": REDIS_URL,
                              "LORAFLEET_DATA_DIR": os.environ["LORAFLEET_DATA_DIR"],
                              "LORAFLEET_QUEUE": "dispatch-devices-test"})
    client = redis.Redis.from_url(REDIS_URL)
    queues = worker_queues(settings.queue, 2, cuda=True)

    def sent() -> dict[str, list[str]]:
        return {queue: [json.loads(m)["headers"]["argsrepr"] for m in client.lrange(queue, 0, -1)]
                for queue in queues}

    client.delete(*queues)
    try:
        with sending_session(settings) as s:
            create_tenant(s, "acme", max_running=2)
            narrow = submit_job(s, "acme", SPEC, settings=settings).id
            wide = submit_job(s, "acme", dict(SPEC, devices=2), settings=settings).id
            nf4 = submit_job(s, "acme", NF4, settings=settings).id
        assert sent() == {"dispatch-devices-test": [repr([narrow])],
                          "dispatch-devices-test.devices-2": [repr([wide])],
                          "dispatch-devices-test.cuda": [repr([nf4])],
                          "dispatch-devices-test.cuda.devices-2": []}

        client.delete(*queues)  # the messages are lost: the reconciler sends them again
        with session_scope(settings) as s:  # not a sending session: no message for this one
            lost = submit_job(s, "acme", dict(SPEC, devices=2), settings=settings).id
        report = reconcile_once(settings=settings, redispatch_after_s=0, webhooks=False)
        assert sorted(report["dispatched"]) == sorted([narrow, wide, nf4, lost])
        assert {q: sorted(ids) for q, ids in sent().items()} == {
            "dispatch-devices-test": [repr([narrow])],
            "dispatch-devices-test.devices-2": sorted([repr([wide]), repr([lost])]),
            "dispatch-devices-test.cuda": [repr([nf4])],
            "dispatch-devices-test.cuda.devices-2": []}
    finally:
        client.delete(*queues)
        close_clients()
        forget_engine(settings.database_url)
