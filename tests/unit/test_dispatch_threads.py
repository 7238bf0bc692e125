"""Job messages sent from many threads at once (the API's thread pool) all reach the broker."""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor

import redis

from orchestrator.config import load_settings
from orchestrator.dispatch import send_run_jobs

REDIS_URL = os.environ.get("LORAFLEET_TEST_REDIS_URL", "redis://127.0.0.1:6379/11")


def test_concurrent_sends_share_one_connection_safely(tmp_path):
    settings = load_settings({"LORAFLEET_HOME": str(tmp_path), "LORAFLEET_BROKER_URL": REDIS_URL,
                              "LORAFLEET_QUEUE": "dispatch-threads-test"})
    client = redis.Redis.from_url(REDIS_URL)
    client.delete(settings.queue)
    ids = [f"job-{i}" for i in range(400)]
    try:
        with ThreadPoolExecutor(32) as pool:
            list(pool.map(lambda job_id: send_run_jobs([job_id], settings=settings), ids))
        sent = [json.loads(m)["headers"]["argsrepr"] for m in client.lrange(settings.queue, 0, -1)]
        assert sorted(sent) == sorted(repr([job_id]) for job_id in ids)
    finally:
        client.delete(settings.queue)
