"""`/v1/webhooks` against a real API process (SQLite; PostgreSQL + Redis) through the official
openai client: create (the secret once), list and retrieve (never the secret), delete; bad
bodies and URLs are 400s in OpenAI's shape; another tenant's endpoint is 404; an endpoint made
here receives its tenant's job events signed for `client.webhooks.unwrap`."""

from __future__ import annotations

import json

import openai
import pytest

from orchestrator.services.jobs import cancel_job, submit_job
from orchestrator.services.keys import create_key
from orchestrator.services.tenants import create_tenant
from orchestrator.webhook_delivery import deliver_due
from tests.webhook_receiver import Receiver

pytestmark = pytest.mark.integration

SPEC = {"task": "sst2", "method": "lora", "rank": 4, "base_model": "tiny-bert", "max_steps": 2}


@pytest.fixture(scope="module")
def api_settings_env() -> dict[str, str]:
    # The test's receiver listens on 127.0.0.1: allowed here, refused by default (see the last test).
    return {"LORAFLEET_WEBHOOK_ALLOW_PRIVATE": "true"}


@pytest.fixture(scope="module")
def clients(api_server) -> dict[str, openai.OpenAI]:
    out = {}
    with api_server.session() as s:
        for slug in ("acme", "globex"):
            create_tenant(s, slug, max_running=0)
            out[slug] = api_server.client(create_key(s, slug)[1])
    return out


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


def _post(client: openai.OpenAI, body: object) -> dict:
    return client.post("/webhooks", body=body, cast_to=object)


def test_create_list_retrieve_delete_and_isolation(clients):
    acme, globex = clients["acme"], clients["globex"]
    created = _post(acme, {"url": "https://127.0.0.1:8443/lorafleet"})
    assert created["object"] == "webhook_endpoint" and created["secret"].startswith("whsec_")
    assert created["url"] == "https://127.0.0.1:8443/lorafleet" and isinstance(created["created_at"], int)
    assert "fine_tuning.job.succeeded" in created["event_types"]
    listed = acme.get("/webhooks", cast_to=object)
    assert [w["id"] for w in listed["data"]] == [created["id"]] and listed["object"] == "list"
    assert created["secret"] not in json.dumps(listed)
    got = acme.get(f"/webhooks/{created['id']}", cast_to=object)
    assert got["id"] == created["id"] and "secret" not in got
    assert globex.get("/webhooks", cast_to=object)["data"] == []
    for call in (lambda: globex.get(f"/webhooks/{created['id']}", cast_to=object),
                 lambda: globex.delete(f"/webhooks/{created['id']}", cast_to=object)):
        with pytest.raises(openai.NotFoundError):
            call()
    assert acme.delete(f"/webhooks/{created['id']}", cast_to=object) == {
        "id": created["id"], "object": "webhook_endpoint.deleted", "deleted": True}
    with pytest.raises(openai.NotFoundError):
        acme.delete(f"/webhooks/{created['id']}", cast_to=object)
    assert acme.get("/webhooks", cast_to=object)["data"] == []


@pytest.mark.parametrize("body, says", [
    ({"url": "ftp://127.0.0.1/"}, "http:// or https://"),
    ({"url": "https://user:pw@127.0.0.1/"}, "credentials"),
    ({"url": "https://127.0.0.1/" + "a" * 3000}, "at most 2048"),
    ({"url": "https://no-such-host.invalid/"}, "does not resolve"),
    ({"url": 42}, "url"),
    ({"url": "https://127.0.0.1/", "events": ["x"]}, "events"),
    ({}, "url"),
])
def test_bad_bodies_are_400s_that_say_why(clients, body, says):
    with pytest.raises(openai.BadRequestError) as answer:
        _post(clients["acme"], body)
    assert says in answer.value.message


def test_the_openai_clients_own_webhook_calls(clients):
    acme, globex = clients["acme"], clients["globex"]
    made = [acme.webhooks.create(url=f"https://127.0.0.1/{i}", name=f"hook {i}",
                                 event_types=["fine_tuning.job.failed", "fine_tuning.job.succeeded"])
            for i in range(3)]
    assert all(m.signing_secret.startswith("whsec_") and m.object == "webhook_endpoint" for m in made)
    assert made[0].event_types == ["fine_tuning.job.succeeded", "fine_tuning.job.failed"]
    first = acme.webhooks.list(limit=2)
    assert [e.id for e in first.data] == [made[2].id, made[1].id] and first.has_more  # newest first
    assert [e.id for e in acme.webhooks.list(limit=2, after=made[1].id).data] == [made[0].id]
    assert [e.id for e in acme.webhooks.list(limit=1)] == [m.id for m in reversed(made)]  # pages by `after`
    got = acme.webhooks.retrieve(made[0].id)
    assert (got.name, got.url) == ("hook 0", "https://127.0.0.1/0")
    assert "signing_secret" not in got.model_dump() or got.model_dump().get("signing_secret") is None
    with pytest.raises(openai.NotFoundError):
        globex.webhooks.retrieve(made[0].id)
    with pytest.raises(openai.BadRequestError) as answer:
        acme.webhooks.create(url="https://127.0.0.1/x", name="x", event_types=["batch.completed"])
    assert answer.value.body["param"] == "event_types" and "batch.completed" in answer.value.message
    for m in made:
        assert acme.webhooks.delete(m.id).deleted
    assert acme.webhooks.list().data == []


def test_an_endpoint_made_here_receives_the_tenants_events(api_server, clients, receiver):
    created = _post(clients["acme"], {"url": receiver.url})
    try:
        with api_server.session() as s:
            job_id = submit_job(s, "acme", dict(SPEC), settings=api_server.settings).id
            cancel_job(s, job_id, tenant="acme")
        assert deliver_due(api_server.settings).delivered
        [got] = receiver.received
        event = clients["acme"].webhooks.unwrap(got.body, got.headers, secret=created["secret"])
        assert (event.type, event.data.id) == ("fine_tuning.job.cancelled", job_id)
    finally:
        clients["acme"].delete(f"/webhooks/{created['id']}", cast_to=object)


def test_private_addresses_are_refused_by_default(tmp_path):
    from tests.api_server import api_env, start_api

    api = start_api(api_env(tmp_path / "home"))
    try:
        with api.session() as s:
            create_tenant(s, "acme")
            client = api.client(create_key(s, "acme")[1])
        for url in ("http://127.0.0.1:8080/hook", "http://169.254.169.254/latest", "http://[::1]/",
                    "http://10.0.0.7/"):
            with pytest.raises(openai.BadRequestError) as answer:
                _post(client, {"url": url})
            assert "not allowed" in answer.value.message and answer.value.code == "invalid_url"
        assert client.get("/webhooks", cast_to=object)["data"] == []
    finally:
        api.stop()
