"""Webhooks end to end, embedded (SQLite; the worker's own sender thread) and cluster (PostgreSQL
+ Redis; the `lorafleet reconcile --every` process, as the compose file runs it): a tenant's
endpoint registered with the CLI, a real job's end caught by a real local HTTP receiver and
verified with the official openai client's `webhooks.unwrap`; a receiver that is down, then
answers 503, then is up: each event arrives (2xx) exactly once under its `webhook-id`, every
attempt recorded. The back-off is shortened through the environment."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator

import openai
import pytest

from orchestrator.announce import announce_jobs
from orchestrator.registry.db import session_scope
from orchestrator.services.jobs import cancel_job, get_job, submit_job
from orchestrator.services.tenants import create_tenant
from orchestrator.services.webhooks import DeliveryDetail, webhook_deliveries
from tests.integration.faults import start_reconciler, stop_process
from tests.integration.workers import ROOT, LiveWorker, wait_for
from tests.webhook_receiver import Receiver

pytestmark = pytest.mark.integration

TINY = {"task": "sst2", "method": "lora", "rank": 4, "base_model": "tiny-bert", "max_steps": 2,
        "batch_size": 4, "eval_size": 8}


@pytest.fixture(scope="module")
def worker_settings_env() -> dict[str, str]:
    return {"LORAFLEET_WEBHOOK_POLL_S": "0.2", "LORAFLEET_WEBHOOK_RETRY_FIRST_S": "0.4",
            "LORAFLEET_WEBHOOK_RETRY_CAP_S": "0.8", "LORAFLEET_WEBHOOK_TIMEOUT_S": "3"}


@pytest.fixture(scope="module")
def sender(live_worker: LiveWorker, tmp_path_factory) -> Iterator[None]:
    """Embedded: the worker's own thread sends. Cluster: the reconciler process does."""
    proc = None
    if live_worker.mode == "cluster":
        proc = start_reconciler(live_worker.env, tmp_path_factory.mktemp("reconciler") / "log", every=1.0)
    yield
    stop_process(proc)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def _cli(worker: LiveWorker, *args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "orchestrator.cli.main", *args], cwd=ROOT, env=worker.env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


def _register(worker: LiveWorker, slug: str, url: str, max_running: int) -> str:
    with session_scope(worker.settings) as s:
        create_tenant(s, slug, max_running=max_running)
    created = json.loads(_cli(worker, "tenant", "webhook", "add", slug, url, "--json"))
    assert set(created) == {"id", "url", "secret"} and created["secret"].startswith("whsec_")
    listed = _cli(worker, "tenant", "webhook", "list", slug, "--json")
    assert created["id"] in listed and created["secret"] not in listed
    return created


def _deliveries(worker: LiveWorker, webhook_id: str, job_id: str) -> list[DeliveryDetail]:
    with session_scope(worker.settings) as s:
        return [d for d in webhook_deliveries(s, webhook_id) if d.delivery.job_id == job_id]


def test_a_jobs_end_reaches_the_receiver_signed(live_worker: LiveWorker, sender, receiver: Receiver):
    slug = f"hooked-{live_worker.mode}"
    webhook = _register(live_worker, slug, receiver.url, max_running=2)
    secret = webhook["secret"]
    with session_scope(live_worker.settings) as s:
        job_id = submit_job(s, slug, dict(TINY), settings=live_worker.settings).id
    announce_jobs([job_id], settings=live_worker.settings)
    [(webhook_id, [got])] = wait_for(lambda: list(receiver.delivered().items()), 120,
                                     "the job's webhook", live_worker, interval=0.1)
    with session_scope(live_worker.settings) as s:
        job = get_job(s, job_id).job
    assert job.state == "succeeded"
    client = openai.OpenAI(api_key="unused", base_url="http://127.0.0.1:9/v1", max_retries=0)
    event = client.webhooks.unwrap(got.body, got.headers, secret=secret)
    assert (event.type, event.data.id, event.object) == ("fine_tuning.job.succeeded", job_id, "event")
    assert event.created_at == int(job.finished_at.timestamp())
    with pytest.raises(openai.InvalidWebhookSignatureError):
        client.webhooks.unwrap(got.body, got.headers, secret="whsec_" + "QUFB" * 8)
    [detail] = wait_for(lambda: [d for d in _deliveries(live_worker, webhook["id"], job_id)
                                 if d.delivery.state == "delivered"], 10, "the delivery's record")
    assert detail.delivery.id == webhook_id and [a.status_code for a in detail.attempts] == [200]


def test_a_receiver_down_then_up_gets_each_event_once(live_worker: LiveWorker, sender, receiver: Receiver):
    slug = f"flaky-{live_worker.mode}"
    webhook = _register(live_worker, slug, receiver.url, max_running=0)  # its jobs stay queued
    secret = webhook["secret"]
    receiver.close()  # down: connection refused
    with session_scope(live_worker.settings) as s:
        job_ids = [submit_job(s, slug, dict(TINY), settings=live_worker.settings).id for _ in range(2)]
        for job_id in job_ids:
            cancel_job(s, job_id)

    def refused_attempts() -> bool:
        details = [d for job_id in job_ids for d in _deliveries(live_worker, webhook["id"], job_id)]
        return len(details) == 2 and all(
            len(d.attempts) >= 2 and all(a.status_code is None for a in d.attempts) for d in details)

    wait_for(refused_attempts, 30, "refused attempts while the receiver is down", live_worker)
    receiver.answer = 503
    receiver.open()  # the same port, answering 503
    wait_for(lambda: len(receiver.received) >= 4, 30, "503 answers", live_worker)
    time.sleep(1.0)  # a later attempt carries a later webhook-timestamp
    receiver.answer = 200
    wait_for(lambda: len(receiver.delivered()) == 2, 30, "both events delivered", live_worker)
    time.sleep(1.0)  # several sender passes: long enough for any duplicate to show up
    delivered = receiver.delivered()
    assert [len(v) for v in delivered.values()] == [1, 1]
    client = openai.OpenAI(api_key="unused", base_url="http://127.0.0.1:9/v1", max_retries=0)
    seen = set()
    for webhook_id, [got] in delivered.items():
        event = client.webhooks.unwrap(got.body, got.headers, secret=secret)
        assert event.type == "fine_tuning.job.cancelled"
        seen.add(event.data.id)
        rejected = [r for r in receiver.received if r.headers["webhook-id"] == webhook_id and r.status == 503]
        assert rejected and all(r.body == got.body for r in rejected)  # the same event every time
        assert int(got.headers["webhook-timestamp"]) > int(rejected[0].headers["webhook-timestamp"])
    assert seen == set(job_ids)
    shown = json.loads(_cli(live_worker, "tenant", "webhook", "deliveries", webhook["id"], "--json"))
    assert sorted(d["job_id"] for d in shown) == sorted(job_ids)
    for row in shown:
        codes = [t["status_code"] for t in row["tries"]]
        assert row["state"] == "delivered" and row["attempts"] == len(codes)
        assert codes[-1] == 200 and 503 in codes and codes[:2] == [None, None]
        assert all(t["error"] for t in row["tries"][:-1])
