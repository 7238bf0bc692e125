"""The webhook outbox: events written in the transaction that ends a job, taken and settled by
the senders (`orchestrator.webhook_delivery`).

    job_ended(s, job)   inside the job's final transaction: one `webhook_deliveries` row per
                        active endpoint of its tenant (none without endpoints); a rollback
                        leaves none. Every terminal transition calls it (leases._end,
                        jobs.cancel_job).
    claim_due(s, ...)   a sender takes due deliveries: attempts + 1, `next_attempt_at` pushed
                        past the request's timeout (a sender that dies mid-request leaves the
                        delivery to another one: at least once). Row locks, SKIP LOCKED.
    record_attempt(...) one `webhook_attempts` row; 2xx: delivered; otherwise pending again after
                        `retries.backoff` (doubling from the first delay to the cap, jittered
                        like the jobs' back-off), or failed once the next try would come after
                        the give-up age.

The event is OpenAI's webhook event object (`openai.types.webhooks.FineTuningJob*WebhookEvent`):
{"id": "evt_…", "object": "event", "created_at": <Unix s>, "type": "fine_tuning.job.<state>",
"data": {"id": <job id>}}. The delivery id (`msg_…`) is its `webhook-id`, one per endpoint.
"""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import event, select
from sqlalchemy.orm import Session

from orchestrator.registry import webhook_queries as wq
from orchestrator.registry.models import Job, WebhookAttempt, WebhookDelivery, WebhookEndpoint, utcnow
from orchestrator.retries import backoff, jittered
from orchestrator.services._tx import readonly, transactional

EVENT_TYPES = {
    "succeeded": "fine_tuning.job.succeeded",
    "failed": "fine_tuning.job.failed",
    "cancelled": "fine_tuning.job.cancelled",
}
MAX_ERROR_CHARS = 500
_WROTE = "lorafleet.webhooks.wrote"
_listeners: list[Callable[[], None]] = []


def on_committed(callback: Callable[[], None]) -> None:
    """Call `callback` (no arguments, quick) after any transaction of this process that wrote
    deliveries commits: a sender in this process wakes at once instead of at its next poll."""
    if callback not in _listeners:
        _listeners.append(callback)


def off_committed(callback: Callable[[], None]) -> None:
    if callback in _listeners:
        _listeners.remove(callback)


def event_payload(event_id: str, job: Job) -> str:
    """The JSON body of a job's terminal event (sent byte for byte on every attempt)."""
    ended = job.finished_at or utcnow()
    return json.dumps({"id": event_id, "object": "event", "created_at": int(ended.timestamp()),
                       "type": EVENT_TYPES[job.state], "data": {"id": job.id}}, separators=(",", ":"))


def job_ended(session: Session, job: Job) -> list[WebhookDelivery]:
    """Inside the transaction that moved `job` to a terminal state: its event, one delivery per
    active endpoint of its tenant that receives events of its type."""
    if job.state not in EVENT_TYPES:
        raise ValueError(f"job {job.id} is {job.state}: only a job that ended has a webhook event")
    kind = EVENT_TYPES[job.state]
    endpoints = [ep for ep in wq.active_endpoints(session, job.tenant_id)
                 if ep.event_types is None or kind in ep.event_types]
    if not endpoints:
        return []
    now = utcnow()
    event_id = f"evt_{uuid.uuid4().hex}"
    payload = event_payload(event_id, job)
    rows = [WebhookDelivery(id=f"msg_{uuid.uuid4().hex}", endpoint_id=ep.id, tenant_id=job.tenant_id,
                            job_id=job.id, event_id=event_id, event_type=EVENT_TYPES[job.state],
                            payload=payload, state="pending", attempts=0, next_attempt_at=now, created_at=now)
            for ep in endpoints]
    session.add_all(rows)
    session.info[_WROTE] = True
    return rows


@event.listens_for(Session, "after_commit")
def _committed(session: Session) -> None:
    if session.info.pop(_WROTE, False):
        for callback in list(_listeners):
            callback()


@event.listens_for(Session, "after_soft_rollback")
def _rolled_back(session: Session, previous_transaction) -> None:
    if not previous_transaction.nested:
        session.info.pop(_WROTE, None)


@dataclass(frozen=True)
class DueDelivery:
    """What a sender needs to make one attempt (a snapshot: no row travels to the sending threads)."""

    id: str
    tenant_id: str
    url: str
    secret: str
    restricted: bool
    payload: str
    attempt: int


@readonly
def has_due(session: Session, now: datetime | None = None) -> bool:
    """Whether any delivery is due: a read (no write lock on SQLite), so an idle sender polling
    often costs the registry next to nothing."""
    return bool(wq.due_delivery_ids(session, now or utcnow(), 1, lock=False))


@transactional
def claim_due(
    session: Session, limit: int, in_flight_s: float, now: datetime | None = None
) -> list[DueDelivery]:
    """Take up to `limit` due deliveries for one attempt each; the next sender may take one
    again only `in_flight_s` later (this attempt's answer normally settles it first)."""
    now = now or utcnow()
    ids = wq.due_delivery_ids(session, now, limit)
    if not ids:
        return []
    rows = session.execute(
        select(WebhookDelivery, WebhookEndpoint)
        .join(WebhookEndpoint, WebhookEndpoint.id == WebhookDelivery.endpoint_id)
        .where(WebhookDelivery.id.in_(ids))).all()
    due = []
    for delivery, endpoint in rows:
        if delivery.state != "pending" or delivery.next_attempt_at > now:
            continue  # settled by another sender between its scan and ours (SQLite: never)
        if endpoint.disabled_at is not None:
            delivery.state = "failed"
            continue
        delivery.attempts += 1
        delivery.next_attempt_at = now + timedelta(seconds=in_flight_s)
        due.append(DueDelivery(delivery.id, delivery.tenant_id, endpoint.url, endpoint.secret,
                               endpoint.restricted, delivery.payload, delivery.attempts))
    return due


@dataclass(frozen=True)
class RetryPolicy:
    first_s: float
    cap_s: float
    give_up_s: float

    @classmethod
    def of(cls, settings) -> RetryPolicy:
        return cls(settings.webhook_retry_first_s, settings.webhook_retry_cap_s, settings.webhook_give_up_s)


@transactional
def record_attempt(
    session: Session, delivery_id: str, status_code: int | None, error: str | None, duration_ms: float,
    policy: RetryPolicy, now: datetime | None = None, rng: random.Random | None = None,
) -> str:
    """Record one attempt and settle the delivery; returns its state (pending: another try comes)."""
    now = now or utcnow()
    delivery = session.scalars(select(WebhookDelivery).where(WebhookDelivery.id == delivery_id)
                               .with_for_update()).one()
    session.add(WebhookAttempt(delivery_id=delivery.id, tenant_id=delivery.tenant_id, ts=now,
                               status_code=status_code, duration_ms=float(duration_ms),
                               error=None if error is None else error[:MAX_ERROR_CHARS]))
    if delivery.state != "pending":
        return delivery.state  # another sender settled it (or the endpoint was removed) meanwhile
    if status_code is not None and 200 <= status_code < 300:
        delivery.state, delivery.delivered_at = "delivered", now
        return "delivered"
    delay = jittered(backoff(max(delivery.attempts, 1), base=policy.first_s, cap=policy.cap_s), rng)
    retry_at = now + timedelta(seconds=delay)
    if (retry_at - delivery.created_at).total_seconds() > policy.give_up_s:
        delivery.state = "failed"
        return "failed"
    delivery.next_attempt_at = retry_at
    return "pending"
