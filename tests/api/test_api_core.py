"""The API's door against a real uvicorn process per registry, through the official openai client:
keys (missing, bad, revoked, expired, operator), the error shape, body cap, rate limits."""

from __future__ import annotations

import openai
import pytest

from orchestrator.services.keys import create_key
from orchestrator.services.tenants import create_tenant

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def tenant(api_server) -> str:
    with api_server.session() as s:
        create_tenant(s, "acme")
    return "acme"


def new_key(api_server, tenant: str, **kwargs) -> str:
    with api_server.session() as s:
        return create_key(s, tenant, **kwargs)[1]


def test_a_valid_key_is_let_in_and_a_bad_one_gets_401(api_server, tenant):
    client = api_server.client(new_key(api_server, tenant))
    # No route under /v1 is this module's: an authenticated unknown route is a 404 in OpenAI's shape.
    with pytest.raises(openai.NotFoundError) as found:
        client.get("/no-such-route", cast_to=object)
    assert found.value.body["type"] == "invalid_request_error"
    with pytest.raises(openai.AuthenticationError) as refused:
        api_server.client("lf-not-a-key").get("/no-such-route", cast_to=object)
    assert refused.value.code == "invalid_api_key"
