"""The webhook outbox on SQLite and PostgreSQL: every way a job ends writes its event, one
delivery per active endpoint of its tenant, in the job's own final transaction; senders claim
due deliveries exclusively and settle them (delivered, back-off, given up)."""

from __future__ import annotations

import json
import random
import threading
from datetime import timedelta

import pytest
from sqlalchemy import event, select

from orchestrator.errors import InvalidInput, NotFound
from orchestrator.registry.models import WebhookAttempt, WebhookDelivery, new_id, utcnow
from orchestrator.services.jobs import cancel_job, get_job, submit_job
from orchestrator.services.leases import (
    AdapterRecord,
    claim_job,
    fail_job,
    finish_job_success,
    mark_cancelled,
    requeue_job,
    return_job,
)
from orchestrator.services.pausing import pause_job
from orchestrator.services.reconcile import reconcile
from orchestrator.services.tenants import create_tenant
from orchestrator.services.webhook_outbox import RetryPolicy, claim_due, record_attempt
from orchestrator.services.webhooks import (
    create_webhook,
    list_webhooks,
    remove_webhook,
    webhook_deliveries,
    webhook_dict,
)

pytest_plugins = ["registry_fixtures"]

POLICY = RetryPolicy(first_s=10.0, cap_s=40.0, give_up_s=300.0)


def _deliveries(session, job_id=None) -> list[WebhookDelivery]:
    stmt = select(WebhookDelivery).order_by(WebhookDelivery.endpoint_id)
    if job_id is not None:
        stmt = stmt.where(WebhookDelivery.job_id == job_id)
    rows = list(session.scalars(stmt))
    session.commit()
    return rows


def _claimed(session, spec, **kw) -> str:
    job = submit_job(session, "acme", spec, **kw)
    claim_job(session, job.id, "w1", 60)
    return job.id


def _succeed(session, spec):
    job_id = _claimed(session, spec)
    record = AdapterRecord(id=new_id(), path="/unused", sha256="a" * 64, bytes=1, trainable_params=1,
                           total_params=2)
    finish_job_success(session, job_id, "w1", record, {"validation": {"accuracy": 0.5}})
    return job_id


def _fail(session, spec):
    job_id = _claimed(session, spec)
    fail_job(session, job_id, "w1", "bad data")
    return job_id


def _cancel_running(session, spec):
    job_id = _claimed(session, spec)
    mark_cancelled(session, job_id, "w1", step=1)
    return job_id


def _cancel_queued(session, spec):
    job = submit_job(session, "acme", spec)
    cancel_job(session, job.id)
    return job.id


def _cancel_paused(session, spec):
    job = submit_job(session, "acme", spec)
    pause_job(session, job.id)
    cancel_job(session, job.id)
    return job.id


def _requeue_out_of_attempts(session, spec):
    job_id = _claimed(session, spec, max_attempts=1)
    assert requeue_job(session, job_id, "w1", "device lost") == "failed"
    return job_id


def _requeue_cancel_requested(session, spec):
    job_id = _claimed(session, spec)
    cancel_job(session, job_id)
    assert requeue_job(session, job_id, "w1", "device lost") == "cancelled"
    return job_id


def _return_cancel_requested(session, spec):
    job_id = _claimed(session, spec)
    cancel_job(session, job_id)
    assert return_job(session, job_id, "w1", "worker broken") == "cancelled"
    return job_id


def _reconcile_out_of_attempts(session, spec):
    job = submit_job(session, "acme", spec, max_attempts=1)
    t0 = utcnow()
    claim_job(session, job.id, "dead", 10, now=t0)
    assert reconcile(session, now=t0 + timedelta(seconds=60), lease_grace_s=5).failed == [job.id]
    return job.id


def _reconcile_cancel_requested(session, spec):
    job = submit_job(session, "acme", spec)
    t0 = utcnow()
    claim_job(session, job.id, "dead", 10, now=t0)
    cancel_job(session, job.id)
    assert reconcile(session, now=t0 + timedelta(seconds=60), lease_grace_s=5).cancelled == [job.id]
    return job.id


ENDINGS = {
    "succeeded": _succeed, "failed": _fail, "cancelled-running": _cancel_running,
    "cancelled-queued": _cancel_queued, "cancelled-paused": _cancel_paused,
    "requeue-gave-up": _requeue_out_of_attempts,
    "requeue-cancel-requested": _requeue_cancel_requested,
    "return-cancel-requested": _return_cancel_requested,
    "reconcile-gave-up": _reconcile_out_of_attempts,
    "reconcile-cancel-requested": _reconcile_cancel_requested,
}


def test_every_terminal_transition_writes_one_delivery_per_endpoint(session, job_spec):
    create_tenant(session, "acme", max_running=5)
    create_tenant(session, "other")
    mine = {create_webhook(session, "acme", f"https://hooks.example/{i}").endpoint.id for i in range(2)}
    removed = create_webhook(session, "acme", "https://hooks.example/gone").endpoint.id
    remove_webhook(session, removed)
    create_webhook(session, "other", "https://other.example/")
    for ending, end in ENDINGS.items():
        job_id = end(session, job_spec)
        state = get_job(session, job_id).job.state
        rows = _deliveries(session, job_id)
        assert {r.endpoint_id for r in rows} == mine and len(rows) == 2, ending
        assert len({r.id for r in rows}) == 2 and all(r.id.startswith("msg_") for r in rows)
        for row in rows:
            body = json.loads(row.payload)
            assert body["type"] == f"fine_tuning.job.{state}" == row.event_type, ending
            assert body["data"] == {"id": job_id} and body["object"] == "event"
            assert body["id"] == row.event_id and row.event_id.startswith("evt_")
            assert isinstance(body["created_at"], int)
            assert (row.state, row.attempts, row.job_id) == ("pending", 0, job_id)
        assert rows[0].event_id == rows[1].event_id  # one event, delivered to each endpoint
    assert len(_deliveries(session)) == 2 * len(ENDINGS)  # nothing for the other tenant's endpoint


def test_no_endpoints_no_outbox_rows(session, job_spec):
    create_tenant(session, "acme")
    create_tenant(session, "other")
    create_webhook(session, "other", "https://other.example/")
    _fail(session, job_spec)
    _cancel_queued(session, job_spec)
    assert _deliveries(session) == []


def test_an_endpoint_gets_only_the_event_types_it_asked_for(session, job_spec):
    create_tenant(session, "acme")
    failures = create_webhook(session, "acme", "https://hooks.example/f", name="pager",
                              event_types=["fine_tuning.job.failed"]).endpoint
    everything = create_webhook(session, "acme", "https://hooks.example/all").endpoint
    cancelled, failed = _cancel_queued(session, job_spec), _fail(session, job_spec)
    assert [r.endpoint_id for r in _deliveries(session, cancelled)] == [everything.id]
    assert {r.endpoint_id for r in _deliveries(session, failed)} == {everything.id, failures.id}
    view = webhook_dict(list_webhooks(session, "acme")[0])
    assert (view["name"], view["event_types"]) == ("pager", ["fine_tuning.job.failed"])
    for bad, says in ((["fine_tuning.job.paused"], "no event of type"), ([], "non-empty"),
                      ("fine_tuning.job.failed", "list")):
        with pytest.raises(InvalidInput, match=says):
            create_webhook(session, "acme", "https://hooks.example/", event_types=bad)
    with pytest.raises(InvalidInput, match="printable"):
        create_webhook(session, "acme", "https://hooks.example/", name="two\nlines")


def test_a_rolled_back_ending_leaves_no_delivery(session, job_spec):
    create_tenant(session, "acme")
    create_webhook(session, "acme", "https://hooks.example/")
    job_id = _claimed(session, job_spec)

    def refuse(s):
        raise RuntimeError("the commit fails")

    event.listen(session, "before_commit", refuse)
    try:
        with pytest.raises(RuntimeError):
            fail_job(session, job_id, "w1", "bad data")
    finally:
        event.remove(session, "before_commit", refuse)
    assert get_job(session, job_id).job.state == "running"
    assert _deliveries(session) == []
    fail_job(session, job_id, "w1", "bad data")
    assert len(_deliveries(session)) == 1


def test_claim_settle_backoff_and_give_up(session, job_spec):
    create_tenant(session, "acme")
    create_webhook(session, "acme", "https://hooks.example/")
    job_id = _fail(session, job_spec)
    t0 = utcnow() + timedelta(seconds=1)
    [due] = claim_due(session, 10, in_flight_s=30, now=t0)
    assert due.attempt == 1 and due.url == "https://hooks.example/" and due.secret.startswith("whsec_")
    assert claim_due(session, 10, in_flight_s=30, now=t0 + timedelta(seconds=29)) == []  # in flight
    rng = random.Random(0)
    assert record_attempt(session, due.id, 503, "HTTP 503", 12.5, POLICY, now=t0, rng=rng) == "pending"
    [row] = _deliveries(session, job_id)
    wait = (row.next_attempt_at - t0).total_seconds()
    assert POLICY.first_s / 2 <= wait <= POLICY.first_s  # backoff(1) = first, jittered down to half
    assert claim_due(session, 10, 30, now=t0 + timedelta(seconds=wait - 0.5)) == []
    [again] = claim_due(session, 10, 30, now=t0 + timedelta(seconds=wait))
    assert again.id == due.id and again.attempt == 2
    assert record_attempt(session, due.id, None, "ConnectError: refused", 1.0, POLICY, now=t0) == "pending"
    [row] = _deliveries(session, job_id)
    assert POLICY.first_s <= (row.next_attempt_at - t0).total_seconds() <= 2 * POLICY.first_s
    late = row.created_at + timedelta(seconds=POLICY.give_up_s)
    [third] = claim_due(session, 10, 30, now=late)
    assert record_attempt(session, third.id, 500, "HTTP 500", 1.0, POLICY, now=late) == "failed"
    assert claim_due(session, 10, 30, now=late + timedelta(days=2)) == []
    attempts = list(session.scalars(select(WebhookAttempt).where(WebhookAttempt.delivery_id == due.id)
                                    .order_by(WebhookAttempt.id)))
    session.commit()
    assert [(a.status_code, a.error) for a in attempts] == [
        (503, "HTTP 503"), (None, "ConnectError: refused"), (500, "HTTP 500")]


def test_a_2xx_delivers_and_a_late_answer_changes_nothing(session, job_spec):
    create_tenant(session, "acme")
    create_webhook(session, "acme", "https://hooks.example/")
    job_id = _fail(session, job_spec)
    now = utcnow() + timedelta(seconds=1)
    [due] = claim_due(session, 10, 30, now=now)
    assert record_attempt(session, due.id, 204, None, 3.0, POLICY, now=now) == "delivered"
    assert record_attempt(session, due.id, 503, "HTTP 503", 3.0, POLICY, now=now) == "delivered"
    [row] = _deliveries(session, job_id)
    assert (row.state, row.delivered_at, row.attempts) == ("delivered", now, 1)


def test_removing_an_endpoint_drops_its_pending_deliveries(session, job_spec):
    create_tenant(session, "acme")
    endpoint = create_webhook(session, "acme", "https://hooks.example/").endpoint
    _fail(session, job_spec)
    remove_webhook(session, endpoint.id, tenant="acme")
    assert [r.state for r in _deliveries(session)] == ["failed"]
    [shown] = webhook_deliveries(session, endpoint.id[:8], tenant="acme")  # history stays readable
    assert (shown.to_dict()["state"], shown.attempts) == ("failed", [])
    create_tenant(session, "other")
    with pytest.raises(NotFound):
        webhook_deliveries(session, endpoint.id, tenant="other")
    assert claim_due(session, 10, 30, now=utcnow() + timedelta(seconds=1)) == []
    assert list_webhooks(session, "acme") == []
    with pytest.raises(NotFound):
        remove_webhook(session, endpoint.id)


def test_senders_in_parallel_never_take_the_same_delivery(session, session_maker, job_spec):
    create_tenant(session, "acme", max_running=50)
    for i in range(3):
        create_webhook(session, "acme", f"https://hooks.example/{i}")
    for _ in range(4):
        _cancel_queued(session, job_spec)  # 4 events x 3 endpoints = 12 deliveries
    taken: list[list[str]] = [[] for _ in range(4)]
    barrier = threading.Barrier(4)
    errors: list[BaseException] = []
    now = utcnow() + timedelta(seconds=1)

    def sender(i: int) -> None:
        try:
            with session_maker() as s:
                barrier.wait(timeout=10)
                while batch := claim_due(s, 2, 60, now=now):
                    taken[i].extend(d.id for d in batch)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=sender, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors
    everything = [d for ids in taken for d in ids]
    assert len(everything) == len(set(everything)) == 12


def test_another_tenants_endpoint_is_not_found_and_views_hold_no_secret(session):
    create_tenant(session, "acme")
    create_tenant(session, "other")
    created = create_webhook(session, "acme", "https://hooks.example/")
    with pytest.raises(NotFound):
        remove_webhook(session, created.endpoint.id, tenant="other")
    view = webhook_dict(list_webhooks(session, "acme")[0], "acme")
    assert created.secret not in json.dumps(view) and "secret" not in view


BAD_URLS = [
    ("ftp://hooks.example/", "http:// or https://"),
    ("https://user:pw@hooks.example/", "credentials"),
    ("https://hooks.example/" + "a" * 2048, "at most 2048"),
    ("https:///nohost", "name a host"),
    ("https://hooks.example/\x1b[2J", "printable ASCII"),
    ("https://hooks.example/#frag", "fragment"),
]
PRIVATE_URLS = ["http://127.0.0.1:8080/", "http://localhost/", "http://10.1.2.3/",
                "http://169.254.169.254/latest/meta-data", "http://[::1]/", "http://[::ffff:192.168.0.1]/",
                "http://224.0.0.1/", "http://0.0.0.0/", "http://100.64.0.1/", "http://240.0.0.1/"]


def test_bad_urls_are_refused_with_the_reason(session):
    create_tenant(session, "acme")
    for url, reason in BAD_URLS:
        with pytest.raises(InvalidInput, match=reason):
            create_webhook(session, "acme", url)
    assert list_webhooks(session, "acme") == []


def test_the_api_door_refuses_private_addresses_unless_allowed(session):
    create_tenant(session, "acme")
    for url in PRIVATE_URLS:
        with pytest.raises(InvalidInput, match="not allowed"):
            create_webhook(session, "acme", url, restricted=True)
    assert list_webhooks(session, "acme") == []
    url = PRIVATE_URLS[0]
    assert create_webhook(session, "acme", url, restricted=True, allow_private=True).endpoint.restricted
    assert not create_webhook(session, "acme", url).endpoint.restricted  # the operator may
