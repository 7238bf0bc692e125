"""Each job's message goes to the queue of its device count (`dispatch.devices_queue`), on every
path that sends one: a submit (`announce.sending_session`) and the reconciler's re-send. A real
Redis broker and an embedded registry; the queues are read back as Redis lists."""

from __future__ import annotations

import json
import os

import redis

from orchestrator.announce import reconcile_once, sending_session
from orchestrator.config import load_settings
from orchestrator.dispatch import close_clients, devices_queue, worker_queues
from orchestrator.registry.db import forget_engine, session_scope
from orchestrator.services.jobs import submit_job
from orchestrator.services.tenants import create_tenant

REDIS_URL = os.environ.get("LORAFLEET_TEST_REDIS_URL", "redis://127.0.0.1:6379/11")
SPEC = {"task": "sst2", "method": "lora", "rank": 4, "base_model": "tiny-bert", "max_steps": 2}


def test_queue_names_keep_gpu_for_one_device_and_grow_with_the_devices():
    assert [devices_queue("gpu", n) for n in (1, 2, 8)] == ["gpu", "gpu.devices-2", "gpu.devices-8"]
    assert worker_queues("gpu", 1) == ["gpu"]
    assert worker_queues("gpu", 3) == ["gpu", "gpu.devices-2", "gpu.devices-3"]


def test_submit_and_the_reconciler_send_each_message_to_its_devices_queue(tmp_path):
    settings = load_settings({"LORAFLEET_HOME": str(tmp_path), "LORAFLEET_BROKER_URL": REDIS_URL,
                              "LORAFLEET_DATA_DIR": os.environ["LORAFLEET_DATA_DIR"],
                              "LORAFLEET_QUEUE": "dispatch-devices-test"})
    client = redis.Redis.from_url(REDIS_URL)
    queues = worker_queues(settings.queue, 2)

    def sent() -> dict[str, list[str]]:
        return {queue: [json.loads(m)["headers"]["argsrepr"] for m in client.lrange(queue, 0, -1)]
                for queue in queues}

    client.delete(*queues)
    try:
        with sending_session(settings) as s:
            create_tenant(s, "acme", max_running=2)
            narrow = submit_job(s, "acme", SPEC, settings=settings).id
            wide = submit_job(s, "acme", dict(SPEC, devices=2), settings=settings).id
        assert sent() == {"dispatch-devices-test": [repr([narrow])],
                          "dispatch-devices-test.devices-2": [repr([wide])]}

        client.delete(*queues)  # the messages are lost: the reconciler sends them again
        with session_scope(settings) as s:  # not a sending session: no message for this one
            lost = submit_job(s, "acme", dict(SPEC, devices=2), settings=settings).id
        report = reconcile_once(settings=settings, redispatch_after_s=0, webhooks=False)
        assert sorted(report["dispatched"]) == sorted([narrow, wide, lost])
        assert {q: sorted(ids) for q, ids in sent().items()} == {
            "dispatch-devices-test": [repr([narrow])],
            "dispatch-devices-test.devices-2": sorted([repr([wide]), repr([lost])])}
    finally:
        client.delete(*queues)
        close_clients()
        forget_engine(settings.database_url)
