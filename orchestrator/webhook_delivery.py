"""Sending the webhook outbox: take due deliveries, POST each signed afresh, record the answer.

One pass (`deliver_due`): claim at most `webhook_batch` due deliveries (one transaction), send
them concurrently, each with a `webhook_timeout_s` limit, no redirect followed (a 3xx is a
failed attempt) and the answer's body never read (its status is the answer), then record each
attempt (`services.webhook_outbox.record_attempt`: 2xx delivered, else back-off). No registry
transaction is open while a request is in flight. A tenant's endpoint (`restricted`) is
re-checked before each attempt and the request goes to the very address that was checked
(`orchestrator.webhook_urls`); a refused address is a failed attempt with the reason.

Who sends: `WebhookSender`, a thread that runs passes every `webhook_poll_s` (and at once when
this process commits a delivery: the worker that ends a job), started beside the embedded
worker's reconciler thread and by `lorafleet reconcile --every` (the cluster's reconciler); a
plain `reconcile_once` pass sends one batch too. Senders in several processes are safe: a claim
locks the rows it takes and pushes them past their attempt's timeout.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import httpx

from orchestrator.config import Settings
from orchestrator.errors import InvalidInput
from orchestrator.services.webhook_outbox import DueDelivery
from orchestrator.webhook_signing import signed_headers
from orchestrator.webhook_urls import Target, checked_target

log = logging.getLogger(__name__)

USER_AGENT = "lorafleet-webhooks/1"
MAX_CONCURRENT = 32


@dataclass
class DeliveryReport:
    delivered: list[str] = field(default_factory=list)
    retrying: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

    @property
    def taken(self) -> int:
        return len(self.delivered) + len(self.retrying) + len(self.failed)


@dataclass(frozen=True)
class Answer:
    status_code: int | None
    error: str | None
    duration_ms: float


def make_client(settings: Settings) -> httpx.Client:
    # trust_env=False: no proxy from the environment between the checked address and the request.
    # No keep-alive: every attempt opens its own connection, which its deadline may cut.
    return httpx.Client(timeout=httpx.Timeout(settings.webhook_timeout_s), follow_redirects=False,
                        trust_env=False, headers={"user-agent": USER_AGENT},
                        limits=httpx.Limits(max_keepalive_connections=0))


class Deadline:
    """Cuts an attempt's connection `seconds` after it started, whatever it is doing: httpx's
    timeouts bound each read, so a receiver trickling its answer a byte at a time would otherwise
    hold a sender for as long as it likes. The socket comes from httpcore's `trace` extension."""

    def __init__(self, seconds: float):
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._expired = False
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def trace(self, event: str, info: dict) -> None:
        if event == "connection.connect_tcp.complete" and info.get("return_value") is not None:
            sock = info["return_value"].get_extra_info("socket")
            with self._lock:
                self._sockets.append(sock)
                expired = self._expired
            if expired:
                self._cut(sock)

    def _expire(self) -> None:
        with self._lock:
            self._expired = True
            sockets = list(self._sockets)
        for sock in sockets:
            self._cut(sock)

    @staticmethod
    def _cut(sock: socket.socket) -> None:
        with contextlib.suppress(OSError):  # already closed
            sock.shutdown(socket.SHUT_RDWR)  # wakes a read blocked in another thread (close does not)

    @property
    def expired(self) -> bool:
        return self._expired

    def __enter__(self) -> Deadline:
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()


def send(client: httpx.Client, due: DueDelivery, settings: Settings) -> Answer:
    """One attempt of one delivery, signed now (a fresh `webhook-timestamp`, the same `webhook-id`),
    over within `webhook_timeout_s` whatever the receiver does."""
    started = time.monotonic()

    def answer(status: int | None, error: str | None) -> Answer:
        return Answer(status, error, (time.monotonic() - started) * 1000.0)

    try:
        target = (checked_target(due.url, allow_private=settings.webhook_allow_private) if due.restricted
                  else Target(due.url, str(urlsplit(due.url).hostname)))  # the operator's: as given
    except InvalidInput as exc:
        return answer(None, f"refused: {exc}")
    body = due.payload.encode()
    headers = {**signed_headers(due.secret, due.id, int(time.time()), body),
               "content-type": "application/json", "host": target.host_header()}
    with Deadline(settings.webhook_timeout_s) as deadline:
        extensions: dict = {"trace": deadline.trace}
        if target.address is not None:
            extensions["sni_hostname"] = target.host
        try:
            with client.stream("POST", target.connect_url(), content=body, headers=headers,
                               extensions=extensions) as response:
                ok = response.is_success
                return answer(response.status_code, None if ok else f"HTTP {response.status_code}")
        except httpx.HTTPError as exc:
            if deadline.expired:
                return answer(None, f"no answer within {settings.webhook_timeout_s:g} s")
            return answer(None, f"{type(exc).__name__}: {exc}".strip())


def deliver_due(settings: Settings, client: httpx.Client | None = None) -> DeliveryReport:
    """One sender pass (see the module doc)."""
    from orchestrator.registry.db import session_scope
    from orchestrator.services.webhook_outbox import RetryPolicy, claim_due, has_due, record_attempt

    report = DeliveryReport()
    # A claim outlives its attempt: the request's timeout plus the time to record the answer.
    in_flight_s = settings.webhook_timeout_s * 2 + 30
    with session_scope(settings) as session:
        due = claim_due(session, settings.webhook_batch, in_flight_s) if has_due(session) else []
    if not due:
        return report
    own = client is None
    client = client or make_client(settings)
    try:
        with ThreadPoolExecutor(max_workers=min(MAX_CONCURRENT, len(due)),
                                thread_name_prefix="webhook") as pool:
            answers = list(pool.map(lambda d: send(client, d, settings), due))
    finally:
        if own:
            client.close()
    policy = RetryPolicy.of(settings)
    with session_scope(settings) as session:
        for d, a in zip(due, answers, strict=True):
            state = record_attempt(session, d.id, a.status_code, a.error, a.duration_ms, policy)
            {"delivered": report.delivered, "pending": report.retrying}.get(state, report.failed).append(d.id)
            if a.error:
                log.info("webhook %s attempt %d: %s (%s)", d.id, d.attempt, a.error, state)
    return report


class WebhookSender(threading.Thread):
    """Sender passes every `webhook_poll_s`, at once after a local commit wrote deliveries, and
    back to back while a pass finds a full batch."""

    def __init__(self, settings: Settings):
        super().__init__(name="webhook-sender", daemon=True)
        self.settings = settings
        self._wake = threading.Event()
        self._stop_event = threading.Event()

    def run(self) -> None:
        from orchestrator.services.webhook_outbox import off_committed, on_committed

        on_committed(self._wake.set)
        client = make_client(self.settings)
        try:
            while not self._stop_event.is_set():
                self._wake.clear()
                try:
                    full = deliver_due(self.settings, client).taken >= self.settings.webhook_batch
                except Exception:  # a registry hiccup: the next pass tries again
                    log.warning("webhook sender pass failed", exc_info=True)
                    full = False
                if not full:
                    self._wake.wait(self.settings.webhook_poll_s)
        finally:
            off_committed(self._wake.set)
            client.close()

    def stop(self) -> None:
        self._stop_event.set()
        self._wake.set()
