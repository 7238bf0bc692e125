"""Standard Webhooks signatures: the spec's own vector, and the openai client's verifier."""

from __future__ import annotations

import base64
import json
import time

import openai
import pytest

from orchestrator.webhook_signing import SECRET_BYTES, new_secret, secret_key, signature, signed_headers

# The reference libraries' test vector (standard-webhooks, libraries/*/tests: test_sign_function).
VECTOR = {
    "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
    "id": "msg_p5jXN8AQM9LWM0D4loKWxJek",
    "timestamp": 1614265330,
    "body": b'{"test": 2432232314}',
    "signature": "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
}


def test_signature_matches_the_spec_vector():
    got = signature(VECTOR["secret"], VECTOR["id"], VECTOR["timestamp"], VECTOR["body"])
    assert got == VECTOR["signature"]


def test_any_change_changes_the_signature():
    base = (VECTOR["secret"], VECTOR["id"], VECTOR["timestamp"], VECTOR["body"])
    variants = [
        (new_secret(), *base[1:]),
        (base[0], "msg_other", *base[2:]),
        (*base[:2], base[2] + 1, base[3]),
        (*base[:3], b'{"test": 2432232315}'),
    ]
    assert all(signature(*v) != VECTOR["signature"] for v in variants)


def test_new_secret_is_whsec_and_base64_of_random_bytes():
    a, b = new_secret(), new_secret()
    assert a != b and a.startswith("whsec_")
    assert len(base64.b64decode(a.removeprefix("whsec_"))) == SECRET_BYTES
    assert secret_key(a) == base64.b64decode(a[6:])


@pytest.mark.parametrize("bad", ["MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "whsec_", "whsec_not base64!"])
def test_secret_key_refuses_what_is_not_a_secret(bad):
    with pytest.raises(ValueError):
        secret_key(bad)


def test_the_openai_client_verifies_and_unwraps_our_signature():
    secret = new_secret()
    body = json.dumps({"id": "evt_1", "object": "event", "created_at": 1, "type": "fine_tuning.job.failed",
                       "data": {"id": "0f6b7a0e-job"}}).encode()
    headers = signed_headers(secret, "msg_abc", int(time.time()), body)
    client = openai.OpenAI(api_key="unused", base_url="http://127.0.0.1:9/v1")
    event = client.webhooks.unwrap(body, headers, secret=secret)
    assert event.type == "fine_tuning.job.failed" and event.data.id == "0f6b7a0e-job"
    with pytest.raises(openai.InvalidWebhookSignatureError):
        client.webhooks.unwrap(body.replace(b"failed", b"succeeded"), headers, secret=secret)
    with pytest.raises(openai.InvalidWebhookSignatureError):
        client.webhooks.unwrap(body, headers, secret=new_secret())
