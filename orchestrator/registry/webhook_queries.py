"""Queries on the webhook tables (endpoints, the outbox, attempts). Tenant filtering lives here:
`tenant_id` None means every tenant (the operator's and the senders' view)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from orchestrator.registry.models import WebhookAttempt, WebhookDelivery, WebhookEndpoint


def endpoint(session: Session, endpoint_id: str, tenant_id: str | None = None, *,
             include_removed: bool = False) -> WebhookEndpoint | None:
    """An endpoint (of `tenant_id` when given), not removed unless `include_removed`."""
    stmt = select(WebhookEndpoint).where(WebhookEndpoint.id == endpoint_id)
    if not include_removed:
        stmt = stmt.where(WebhookEndpoint.disabled_at.is_(None))
    if tenant_id is not None:
        stmt = stmt.where(WebhookEndpoint.tenant_id == tenant_id)
    return session.scalars(stmt).one_or_none()


def active_endpoints(session: Session, tenant_id: str | None = None) -> Sequence[WebhookEndpoint]:
    """Endpoints not removed, oldest first."""
    stmt = select(WebhookEndpoint).where(WebhookEndpoint.disabled_at.is_(None))
    if tenant_id is not None:
        stmt = stmt.where(WebhookEndpoint.tenant_id == tenant_id)
    return session.scalars(stmt.order_by(WebhookEndpoint.created_at, WebhookEndpoint.id)).all()


def active_endpoint_count(session: Session, tenant_id: str) -> int:
    return session.scalar(select(func.count()).select_from(WebhookEndpoint).where(
        WebhookEndpoint.tenant_id == tenant_id, WebhookEndpoint.disabled_at.is_(None))) or 0


def due_delivery_ids(session: Session, now: datetime, limit: int, *, lock: bool = True) -> list[str]:
    """Pending deliveries whose time came, oldest due first; `lock`: row-locked, and rows another
    sender has locked are skipped (PostgreSQL; SQLite's IMMEDIATE transaction serialises senders)."""
    stmt = (select(WebhookDelivery.id)
            .where(WebhookDelivery.state == "pending", WebhookDelivery.next_attempt_at <= now)
            .order_by(WebhookDelivery.next_attempt_at).limit(limit))
    if lock:
        stmt = stmt.with_for_update(skip_locked=True)
    return list(session.scalars(stmt))


def deliveries(session: Session, *, tenant_id: str | None = None, job_id: str | None = None,
               endpoint_id: str | None = None, limit: int | None = None) -> Sequence[WebhookDelivery]:
    """Deliveries, newest first."""
    stmt = select(WebhookDelivery)
    if tenant_id is not None:
        stmt = stmt.where(WebhookDelivery.tenant_id == tenant_id)
    if job_id is not None:
        stmt = stmt.where(WebhookDelivery.job_id == job_id)
    if endpoint_id is not None:
        stmt = stmt.where(WebhookDelivery.endpoint_id == endpoint_id)
    stmt = stmt.order_by(WebhookDelivery.created_at.desc(), WebhookDelivery.id.desc())
    return session.scalars(stmt if limit is None else stmt.limit(limit)).all()


def attempts_of(session: Session, delivery_ids: Sequence[str]) -> dict[str, list[WebhookAttempt]]:
    """Each delivery's attempts in order (one query)."""
    found: dict[str, list[WebhookAttempt]] = {d: [] for d in delivery_ids}
    if delivery_ids:
        stmt = select(WebhookAttempt).where(WebhookAttempt.delivery_id.in_(delivery_ids))
        for attempt in session.scalars(stmt.order_by(WebhookAttempt.id)):
            found[attempt.delivery_id].append(attempt)
    return found
