"""Standard Webhooks signatures (https://www.standardwebhooks.com, the scheme OpenAI's own
webhooks and `openai.OpenAI().webhooks.unwrap` use).

    secret     = "whsec_" + base64(key),  key: SECRET_BYTES random bytes
    signed     = f"{webhook_id}.{webhook_timestamp}.{body}"   (the exact body bytes sent)
    signature  = "v1," + base64(HMAC-SHA256(key, signed))

Three headers carry it: `webhook-id` (the message's id, the same on every attempt: receivers
drop duplicates by it), `webhook-timestamp` (Unix seconds of this attempt: receivers refuse a
stale one, so every attempt is signed afresh) and `webhook-signature`. Pure functions, standard
library only.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32  # the spec asks for 24 to 64


def new_secret() -> str:
    """A fresh endpoint secret: `whsec_` + base64 of SECRET_BYTES random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode("ascii")


def secret_key(secret: str) -> bytes:
    """The HMAC key a `whsec_…` secret stands for (ValueError if it is not one)."""
    if not secret.startswith(SECRET_PREFIX):
        raise ValueError("a webhook secret starts with 'whsec_'")
    try:
        key = base64.b64decode(secret[len(SECRET_PREFIX):], validate=True)
    except binascii.Error:
        raise ValueError("a webhook secret is 'whsec_' + base64") from None
    if not key:
        raise ValueError("a webhook secret's key is empty")
    return key


def signature(secret: str, webhook_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` header value for one attempt."""
    mac = hmac.new(secret_key(secret), f"{webhook_id}.{timestamp}.".encode(), hashlib.sha256)
    mac.update(body)
    return "v1," + base64.b64encode(mac.digest()).decode("ascii")


def signed_headers(secret: str, webhook_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The three Standard Webhooks headers of one attempt sent at `timestamp` (Unix seconds)."""
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(int(timestamp)),
        "webhook-signature": signature(secret, webhook_id, int(timestamp), body),
    }
