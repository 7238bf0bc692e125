"""The API's door against a real uvicorn process per registry (embedded: SQLite; cluster:
PostgreSQL + Redis), through the official openai client: keys (missing, bad, revoked, expired,
operator), OpenAI's error shape, the body cap, both rate limits, the catch-all 500, health, docs
and metrics.

The server trusts X-Forwarded-For from 127.0.0.1 (LORAFLEET_API_FORWARDED_ALLOW_IPS), so each test
that fails authentications does so from an address of its own and blocks no other test. No route
under /v1 belongs to this part: an authenticated request to an unknown /v1 path is answered 404
after the key and the limits are checked, which is what these tests observe."""

from __future__ import annotations

import time
from datetime import timedelta

import httpx
import openai
import pytest
from sqlalchemy import text, update

from orchestrator.registry.models import ApiKey, utcnow
from orchestrator.services.keys import create_key, create_operator_key, revoke_key
from orchestrator.services.tenants import create_tenant
from tests.api_server import free_port

pytestmark = pytest.mark.integration

PER_MINUTE = 8
FAIL_LIMIT = 2
FAIL_WINDOW_S = 1
BODY_CAP = 64 * 1024
ORG = "OpenAI-Organization"


@pytest.fixture(scope="module")
def api_settings_env() -> dict[str, str]:
    return {"LORAFLEET_API_RATE_LIMIT_PER_MINUTE": str(PER_MINUTE),
            "LORAFLEET_API_AUTH_FAILURE_LIMIT": str(FAIL_LIMIT),
            "LORAFLEET_API_AUTH_FAILURE_WINDOW_S": str(FAIL_WINDOW_S),
            "LORAFLEET_API_MAX_BODY_BYTES": str(BODY_CAP),
            "LORAFLEET_API_METRICS_PORT": str(free_port()),
            "LORAFLEET_API_FORWARDED_ALLOW_IPS": "127.0.0.1"}


@pytest.fixture(scope="module")
def tenant(api_server) -> str:
    with api_server.session() as s:
        create_tenant(s, "acme")
        create_tenant(s, "globex")
    return "acme"


def new_key(api_server, tenant: str, **kwargs) -> tuple[str, str]:
    """(key id, raw key)"""
    with api_server.session() as s:
        row, raw = create_key(s, tenant, **kwargs)
    return row.id, raw


def client(api_server, key: str, address: str = "127.0.0.1", **kwargs) -> openai.OpenAI:
    return api_server.client(key, default_headers={"X-Forwarded-For": address}, **kwargs)


def let_in(api: openai.OpenAI) -> dict:
    """Call an unknown /v1 route: 404 (OpenAI's shape) means the key and the limits let us in."""
    with pytest.raises(openai.NotFoundError) as answer:
        api.get("/no-such-route", cast_to=object)
    assert answer.value.body == {"message": "Invalid URL (GET /v1/no-such-route)",
                                 "type": "invalid_request_error", "param": None, "code": None}
    return answer.value.body


def refused(api: openai.OpenAI) -> openai.AuthenticationError:
    with pytest.raises(openai.AuthenticationError) as answer:
        api.get("/no-such-route", cast_to=object)
    assert answer.value.code == "invalid_api_key" and answer.value.type == "authentication_error"
    return answer.value


def test_health_and_docs_need_no_key(api_server):
    assert httpx.get(api_server.base_url + "/healthz").json() == {"status": "ok"}
    assert "swagger" in httpx.get(api_server.base_url + "/docs").text.lower()
    assert httpx.get(api_server.base_url + "/openapi.json").json()["info"]["title"] == "lorafleet"


def test_missing_and_unknown_keys_get_401_in_openais_shape(api_server, tenant):
    answer = httpx.get(api_server.base_url + "/v1/models", headers={"X-Forwarded-For": "10.0.1.1"})
    assert answer.status_code == 401
    error = answer.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and "API key" in error["message"]
    assert "Incorrect API key" in refused(client(api_server, "lf-not-a-key", "10.0.1.1")).message
    # An unknown route learns nothing without a key either: 401, not 404.
    refused(client(api_server, "lf-" + "x" * 500, "10.0.1.1"))


def test_a_revoked_key_is_refused_from_the_next_request_on(api_server, tenant):
    key_id, key = new_key(api_server, tenant, name="ci")
    api = client(api_server, key, "10.0.2.1")
    let_in(api)
    with api_server.session() as s:
        revoke_key(s, key_id)
    assert "revoked" in refused(api).message
    _, other = new_key(api_server, tenant)
    let_in(client(api_server, other, "10.0.2.1"))  # the tenant's other keys still work


def test_an_expired_key_is_refused(api_server, tenant):
    key_id, key = new_key(api_server, tenant, expires_days=1)
    api = client(api_server, key, "10.0.3.1")
    let_in(api)
    with api_server.session() as s:  # a day passes
        past = utcnow() - timedelta(seconds=1)
        s.execute(update(ApiKey).where(ApiKey.id == key_id).values(expires_at=past))
        s.commit()
    assert "expired" in refused(api).message


def test_an_operator_key_acts_for_the_tenant_its_organization_header_names(api_server, tenant):
    with api_server.session() as s:
        _, key = create_operator_key(s, name="ops")
    let_in(client(api_server, key, organization="acme"))
    for organization in (None, "no-such-tenant"):
        with pytest.raises(openai.BadRequestError) as answer:
            client(api_server, key, organization=organization).get("/no-such-route", cast_to=object)
        assert answer.value.param == ORG and ORG in answer.value.message
    # A tenant's key cannot borrow another tenant through the header.
    _, tenant_key = new_key(api_server, tenant)
    let_in(client(api_server, tenant_key, organization="acme"))
    with pytest.raises(openai.BadRequestError) as answer:
        client(api_server, tenant_key, organization="globex").get("/no-such-route", cast_to=object)
    assert answer.value.param == ORG


def test_a_body_over_the_cap_is_413(api_server, tenant):
    _, key = new_key(api_server, tenant)
    with pytest.raises(openai.APIStatusError) as answer:
        client(api_server, key).post("/files", cast_to=object, body={"pad": "x" * (BODY_CAP + 1)})
    assert answer.value.status_code == 413
    assert answer.value.body["code"] == "request_too_large" and str(BODY_CAP) in answer.value.message


def test_a_key_over_its_requests_per_minute_gets_429_with_retry_after(api_server, tenant):
    _, key = new_key(api_server, tenant)
    api = client(api_server, key, "10.0.4.1")
    # Fixed one-minute windows: of 2 x limit + 1 requests one window holds more than the limit,
    # wherever the minute turns.
    let_through = 0
    for _ in range(2 * PER_MINUTE + 1):
        try:
            let_in(api)
            let_through += 1
        except openai.RateLimitError as exc:
            limited = exc
            break
    else:
        pytest.fail(f"{2 * PER_MINUTE + 1} requests in a row were all let through")
    assert let_through >= PER_MINUTE
    assert 1 <= int(limited.response.headers["retry-after"]) <= 60
    assert limited.code == "rate_limit_exceeded" and f"{PER_MINUTE} requests per minute" in limited.message
    _, other = new_key(api_server, tenant)
    let_in(client(api_server, other, "10.0.4.1"))  # per key: another key is not held back


def test_counts_are_kept_where_every_api_process_sees_them(api_server, tenant):
    key_id, key = new_key(api_server, tenant)
    let_in(client(api_server, key))
    import redis

    from tests.api_server import REDIS_URL

    in_redis = redis.Redis.from_url(REDIS_URL).mget(redis.Redis.from_url(REDIS_URL).keys(
        f"lorafleet:api:rate:key:{key_id}:*") or ["-"])
    with api_server.session() as s:
        rows = s.execute(text("SELECT count FROM rate_counters WHERE bucket = :bucket"),
                         {"bucket": f"key:{key_id}"})
        in_registry = [count for (count,) in rows]
    # Cluster mode: Redis, shared by every API process of every machine; embedded: the registry.
    assert (in_redis, in_registry) == (([b"1"], []) if api_server.mode == "cluster" else ([None], [1]))


def test_too_many_failed_authentications_block_the_address(api_server, tenant):
    _, key = new_key(api_server, tenant)
    # Of 2 x limit + 2 tries one window holds more than the limit, wherever it turns.
    failures = 0
    for _ in range(2 * FAIL_LIMIT + 2):
        try:
            refused(client(api_server, "lf-guess", "10.0.5.1"))
            failures += 1
        except openai.RateLimitError:
            break
    else:
        pytest.fail("failed authentications were never limited")
    assert failures > FAIL_LIMIT
    with pytest.raises(openai.RateLimitError) as blocked:  # now even a good key from there
        client(api_server, key, "10.0.5.1").get("/no-such-route", cast_to=object)
    wait = int(blocked.value.response.headers["retry-after"])
    assert 1 <= wait <= 2 * FAIL_WINDOW_S and "failed authentications" in blocked.value.message
    let_in(client(api_server, key, "10.0.5.2"))  # another address is not blocked
    time.sleep(wait + 0.1)
    let_in(client(api_server, key, "10.0.5.1"))


def test_an_internal_error_is_a_500_without_its_traceback(api_server, tenant):
    _, key = new_key(api_server, tenant)
    with api_server.session() as s:  # the registry loses a table under the running server
        s.execute(text("ALTER TABLE api_keys RENAME TO api_keys_away"))
        s.commit()
    try:
        with pytest.raises(openai.InternalServerError) as answer:
            client(api_server, key, "10.0.6.1").get("/no-such-route", cast_to=object)
    finally:
        with api_server.session() as s:
            s.execute(text("ALTER TABLE api_keys_away RENAME TO api_keys"))
            s.commit()
    assert answer.value.body == {"message": "internal error", "type": "server_error", "param": None,
                                 "code": "internal_error"}
    assert "Traceback" in api_server.log() and "api_keys" not in answer.value.response.text
    let_in(client(api_server, key, "10.0.6.1"))


def test_metrics_count_requests_by_route_template_and_status(api_server, tenant):
    port = api_server.env["LORAFLEET_API_METRICS_PORT"]
    scraped = httpx.get(f"http://127.0.0.1:{port}/metrics").text
    assert 'lorafleet_api_requests_total{method="GET",route="/v1/{path:path}",status="404"}' in scraped
    assert 'route="/v1/{path:path}",status="401"' in scraped
    assert 'route="unmatched",status="413"' in scraped
    assert 'lorafleet_api_request_seconds_bucket{' in scraped and "no-such-route" not in scraped


def test_a_streamed_upload_over_the_cap_is_413_and_malformed_json_a_400(api_server, tenant):
    _, key = new_key(api_server, tenant)
    auth = {"authorization": f"Bearer {key}"}
    boundary = "lorafleetboundary"

    def upload():  # no Content-Length: chunked, counted as the form parser reads it
        yield (f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nfine-tune\r\n'
               f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.jsonl"\r\n'
               "Content-Type: application/jsonl\r\n\r\n").encode()
        for _ in range(2 * BODY_CAP // 1024):
            yield b'{"text": "x", "label": 0}\n' * 40

    answer = httpx.post(api_server.base_url + "/v1/files", content=upload(), timeout=30,
                        headers={**auth, "content-type": f"multipart/form-data; boundary={boundary}"})
    assert answer.status_code == 413 and answer.json()["error"]["code"] == "request_too_large"
    answer = httpx.post(api_server.base_url + "/v1/fine_tuning/jobs", content=b'{"model": "tiny-bert", ',
                        headers={**auth, "content-type": "application/json"})
    assert answer.status_code == 400 and "not valid JSON" in answer.json()["error"]["message"]
