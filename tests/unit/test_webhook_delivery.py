"""One delivery attempt against a real local receiver: signed so the openai client verifies it,
no redirect followed, a timeout honoured, a tenant's URL on a private address refused at send
time; and where a checked request goes (the address pinned, the host name kept)."""

from __future__ import annotations

import ipaddress
import socket
import threading
import time

import openai
import pytest

from orchestrator.config import load_settings
from orchestrator.services.webhook_outbox import DueDelivery
from orchestrator.webhook_delivery import make_client, send
from orchestrator.webhook_signing import new_secret
from orchestrator.webhook_urls import Target
from tests.webhook_receiver import Receiver

BODY = '{"id":"evt_1","object":"event","created_at":1,"type":"fine_tuning.job.succeeded","data":{"id":"j1"}}'


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


def _settings(tmp_path, **extra: str):
    return load_settings({"LORAFLEET_HOME": str(tmp_path), "LORAFLEET_WEBHOOK_TIMEOUT_S": "0.5", **extra})


def _due(url: str, restricted: bool = False) -> DueDelivery:
    return DueDelivery("msg_test", "tenant", url, new_secret(), restricted, BODY, 1)


def test_an_attempt_is_signed_for_the_openai_client(tmp_path, receiver):
    due, settings = _due(receiver.url), _settings(tmp_path)
    with make_client(settings) as client:
        answers = [send(client, due, settings) for _ in range(2)]
    assert [(a.status_code, a.error) for a in answers] == [(200, None), (200, None)]
    first, second = receiver.received
    assert first.headers["webhook-id"] == second.headers["webhook-id"] == "msg_test"
    assert first.headers["content-type"] == "application/json" and first.body == BODY.encode()
    event = openai.OpenAI(api_key="x", base_url="http://127.0.0.1:9").webhooks.unwrap(
        second.body, second.headers, secret=due.secret)
    assert (event.type, event.data.id) == ("fine_tuning.job.succeeded", "j1")


def test_no_redirect_is_followed_and_a_slow_receiver_times_out(tmp_path, receiver):
    settings = _settings(tmp_path)
    receiver.answer = 302
    with make_client(settings) as client:
        moved = send(client, _due(receiver.url), settings)
        assert (moved.status_code, moved.error) == (302, "HTTP 302") and len(receiver.received) == 1
        receiver.answer, receiver.delay = 200, 2.0
        started = time.monotonic()
        slow = send(client, _due(receiver.url), settings)
    assert slow.status_code is None and ("Timeout" in slow.error or slow.error == "no answer within 0.5 s")
    assert time.monotonic() - started < 1.5


def test_a_tenants_private_url_is_refused_when_sent(tmp_path, receiver):
    settings = _settings(tmp_path)
    with make_client(settings) as client:
        refused = send(client, _due(receiver.url, restricted=True), settings)
        assert refused.status_code is None and refused.error.startswith("refused: ")
        assert "loopback" in refused.error and receiver.received == []
        allowed = _settings(tmp_path, LORAFLEET_WEBHOOK_ALLOW_PRIVATE="true")
        assert send(client, _due(receiver.url, restricted=True), allowed).status_code == 200
    # Pinned to the checked address, with the URL's host (and port) as the Host header.
    assert receiver.received[0].headers["host"] == f"127.0.0.1:{receiver.port}"


def test_a_checked_request_goes_to_the_checked_address():
    v4 = Target("https://hooks.example:8443/a?b=1", "hooks.example", ipaddress.ip_address("93.184.216.34"))
    assert (v4.connect_url(), v4.host_header()) == ("https://93.184.216.34:8443/a?b=1", "hooks.example:8443")
    v6 = Target("https://hooks.example/x", "hooks.example", ipaddress.ip_address("2606:4700::1111"))
    assert (v6.connect_url(), v6.host_header()) == ("https://[2606:4700::1111]/x", "hooks.example")
    unpinned = Target("http://hooks.example/x", "hooks.example")
    assert unpinned.connect_url() == "http://hooks.example/x"


def test_a_receiver_trickling_its_answer_is_cut_at_the_deadline(tmp_path):
    """Each byte comes well within the read timeout; the attempt still ends at its deadline."""
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    stop = threading.Event()

    def trickle() -> None:
        conn, _ = server.accept()
        with conn:
            conn.recv(65536)
            for byte in b"HTTP/1.1 200 OK\r\nx-slow: " + b"a" * 200:
                if stop.is_set():
                    return
                try:
                    conn.sendall(bytes([byte]))
                except OSError:
                    return
                time.sleep(0.1)

    thread = threading.Thread(target=trickle, daemon=True)
    thread.start()
    settings = _settings(tmp_path)  # a 0.5 s timeout
    try:
        started = time.monotonic()
        with make_client(settings) as client:
            answer = send(client, _due(f"http://127.0.0.1:{port}/"), settings)
        assert time.monotonic() - started < 1.5
        assert answer.status_code is None and answer.error == "no answer within 0.5 s"
    finally:
        stop.set()
        server.close()
        thread.join(5)
