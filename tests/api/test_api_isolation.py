"""The door as a whole: every route of the tenants' API against a real uvicorn process per registry.

The routes are enumerated from `create_app().routes`, so a route added later without a row in
ROUTES fails `test_every_route_has_a_row`. Each route is asked with another tenant's ids (a file,
a result file, a job, its events and checkpoints, an `ft:` model name, a webhook endpoint) and
must answer exactly as it does for an id that exists nowhere (same status, same body with the id
masked): a 404 that does not confirm the object. Then, for every route: no key, a revoked or
expired key -> 401; an operator key without / with the OpenAI-Organization header; a declared
body over the cap -> 413; over the per-key rate -> 429 with retry-after; hostile path ids and
queries -> a 4xx in OpenAI's shape, never a 500. The JSON routes: malformed JSON, wrong types,
unknown fields, hostile values (NUL, lone surrogates, 1e309, deep nesting) -> 400 naming the field.

Objects are made through the real services (no worker: jobs are claimed and finished through the
lease services, as a worker would)."""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx
import openai
import pytest

from orchestrator.api.app import create_app
from orchestrator.config import load_settings

pytestmark = pytest.mark.integration

BODY_CAP = 64 * 1024
RATE = 60  # requests per key per minute: every test below uses fresh keys, each fewer requests
OUTSIDE = {"/healthz", "/docs", "/docs/oauth2-redirect", "/openapi.json", "/v1/{path:path}"}
SHAPE = {"message", "type", "param", "code"}
CHAT = b"".join(json.dumps({"messages": [{"role": "user", "content": f"q{i}"},
                                         {"role": "assistant", "content": f"a{i}"}]}).encode() + b"\n"
                for i in range(4))


@pytest.fixture(scope="module")
def api_settings_env() -> dict[str, str]:
    return {"LORAFLEET_API_MAX_BODY_BYTES": str(BODY_CAP), "LORAFLEET_API_RATE_LIMIT_PER_MINUTE": str(RATE),
            "LORAFLEET_API_AUTH_FAILURE_LIMIT": "100000"}


def app_routes() -> set[tuple[str, str]]:
    """(method, path) of every route the app serves, as its OpenAPI schema lists them (built from
    app.routes, included routers and all; the catch-all, /healthz and the docs are not in it)."""
    app = create_app(load_settings({"LORAFLEET_HOME": "/nonexistent-lorafleet-home"}))
    return {(method.upper(), path) for path, methods in app.openapi()["paths"].items()
            if path not in OUTSIDE for method in methods}


# ---- the world: acme calls, globex owns what acme must not see ------------------------------------------

@dataclass
class World:
    api: Any
    ids: dict[str, str]  # globex's objects (file, result, job, event, model, webhook)
    missing: dict[str, str]  # the same shapes, naming nothing
    own: dict[str, str]  # acme's own job and file (for `after=` on its own pages)
    http: httpx.Client  # one connection pool: a client per request costs more than the request


    def key(self, tenant: str = "acme", **kwargs: Any) -> str:
        from orchestrator.services.keys import create_key

        with self.api.session() as s:
            return create_key(s, tenant, **kwargs)[1]

    def operator_key(self) -> str:
        from orchestrator.services.keys import create_operator_key

        with self.api.session() as s:
            return create_operator_key(s)[1]

    def request(self, method: str, path: str, key: str | None, **kwargs: Any) -> httpx.Response:
        headers = dict(kwargs.pop("headers", {}))
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        return self.http.request(method, self.api.base_url + path, headers=headers, **kwargs)


def _finished_job(api: Any, tenant: str) -> tuple[str, str, str]:
    """(job id, its checkpoint's event id, the adapter's id): a job a worker would have run."""
    from sqlalchemy import select

    from orchestrator.registry.models import JobEvent, new_id
    from orchestrator.services.adapters import new_adapter_path
    from orchestrator.services.jobs import submit_job
    from orchestrator.services.leases import AdapterRecord, claim_job, finish_job_success, record_checkpoint
    from tests.registry_fixtures import fake_adapter_files

    settings, adapter_id = api.settings, new_id()
    with api.session() as s:
        job = submit_job(s, tenant, {"task": "sst2", "rank": 4, "base_model": "tiny-bert", "max_steps": 2},
                         settings=settings)
        claim_job(s, job.id, "w1", 60)
        record_checkpoint(s, job.id, "w1", 1)
        path = fake_adapter_files(new_adapter_path(settings, job.tenant_id, adapter_id))
        finish_job_success(s, job.id, "w1", AdapterRecord(adapter_id, str(path), "0" * 64, 64, 1, 2),
                           {"validation": {"accuracy": 0.5}})
        event = s.scalars(select(JobEvent.id).where(JobEvent.job_id == job.id, JobEvent.kind == "checkpoint"))
        return job.id, str(event.one()), adapter_id


@pytest.fixture(scope="module")
def world(api_server) -> Iterator[World]:
    import io

    from orchestrator.services.datasets import upload_stream
    from orchestrator.services.tenants import create_tenant
    from orchestrator.services.webhooks import create_webhook

    with api_server.session() as s:
        for slug in ("acme", "globex"):
            create_tenant(s, slug)
    own_job, _, _ = _finished_job(api_server, "acme")  # first: its events are older than globex's
    job, event, adapter = _finished_job(api_server, "globex")
    with api_server.session() as s:
        own_file = upload_stream(s, "acme", io.BytesIO(CHAT), "mine.jsonl", settings=api_server.settings).id
        file_id = upload_stream(s, "globex", io.BytesIO(CHAT + b"\n"), "theirs.jsonl",
                                settings=api_server.settings).id
        webhook = create_webhook(s, "globex", "http://127.0.0.1:9/hook").endpoint.id
    ids = {"file": file_id, "result": f"result-{job}", "job": job, "event": event, "adapter": adapter,
           "model": f"ft:tiny-bert:globex:sst2:{adapter}", "webhook": webhook}
    fresh = [str(uuid.uuid4()) for _ in range(5)]
    missing = {"file": fresh[0], "result": f"result-{fresh[1]}", "job": fresh[1], "event": "999999999",
               "adapter": fresh[2], "model": f"ft:tiny-bert:globex:sst2:{fresh[2]}", "webhook": fresh[3]}
    with httpx.Client(timeout=30) as http:
        yield World(api_server, ids, missing, {"job": own_job, "file": own_file}, http)


# ---- the table: each route's requests that carry another tenant's ids ------------------------------------

@dataclass(frozen=True)
class Case:
    """One request of a route; `{name}` in its path values, query and body is an id of World.ids
    (another tenant's) or World.missing (nobody's); `{own_job}`, `{own_file}` are acme's."""

    label: str
    path: dict[str, str] = field(default_factory=dict)
    query: dict[str, str] = field(default_factory=dict)
    body: Any = None
    owner_sees: bool = True  # whether the owner's request with the same ids answers 200


JOB_BODY = {"model": "tiny-bert", "training_file": "builtin-glue-sst2",
            "lorafleet": {"rank": 4, "max_steps": 2}}
WEBHOOK_BODY = {"url": "https://93.184.216.34/hook"}  # public, and no name to resolve
ROUTES: dict[tuple[str, str], list[Case]] = {
    ("GET", "/v1/files"): [Case("after another's file", query={"after": "{file}"}),
                           Case("after another's result file", query={"after": "{result}"})],
    ("POST", "/v1/files"): [],  # no id in; what it makes is checked in test_made_objects_are_the_makers
    ("GET", "/v1/files/{file_id}"): [Case("file", {"file_id": "{file}"}),
                                     Case("result", {"file_id": "{result}"})],
    ("DELETE", "/v1/files/{file_id}"): [Case("file", {"file_id": "{file}"}),
                                        Case("result", {"file_id": "{result}"})],
    ("GET", "/v1/files/{file_id}/content"): [Case("file", {"file_id": "{file}"}),
                                             Case("result", {"file_id": "{result}"})],
    ("GET", "/v1/fine_tuning/jobs"): [Case("after another's job", query={"after": "{job}"})],
    ("POST", "/v1/fine_tuning/jobs"): [
        Case("training_file", body={**JOB_BODY, "training_file": "{file}"}),
        Case("result file as training_file", body={**JOB_BODY, "training_file": "{result}"}),
        Case("validation_file", body={**JOB_BODY, "training_file": "{own_file}", "validation_file": "{file}",
                                      "model": "smollm2-135m", "lorafleet": {}}),
        Case("model", body={**JOB_BODY, "model": "{model}"}),
        Case("model by adapter id", body={**JOB_BODY, "model": "{adapter}"}),
        Case("lorafleet.init_from", body={**JOB_BODY, "lorafleet": {"init_from": "{adapter}"}})],
    ("POST", "/v1/fine_tuning/merges"): [
        Case("models", body={"models": ["{model}", "{model}"], "method": "linear"}),
        Case("models by adapter id", body={"models": ["{adapter}", "{adapter}"], "method": "ties"})],
    ("GET", "/v1/fine_tuning/jobs/{job_id}"): [Case("job", {"job_id": "{job}"})],
    ("POST", "/v1/fine_tuning/jobs/{job_id}/cancel"): [Case("job", {"job_id": "{job}"})],
    ("POST", "/v1/fine_tuning/jobs/{job_id}/pause"): [Case("job", {"job_id": "{job}"})],
    ("POST", "/v1/fine_tuning/jobs/{job_id}/resume"): [Case("job", {"job_id": "{job}"})],
    ("GET", "/v1/fine_tuning/jobs/{job_id}/events"): [
        Case("job", {"job_id": "{job}"}),
        Case("own job, after another's event", {"job_id": "{own_job}"}, {"after": "{event}"})],
    ("GET", "/v1/fine_tuning/jobs/{job_id}/checkpoints"): [
        Case("job", {"job_id": "{job}"}),
        Case("own job, after another's checkpoint", {"job_id": "{own_job}"}, {"after": "{event}"})],
    ("GET", "/v1/models"): [],  # no id in; test_lists_show_none_of_anothers
    ("GET", "/v1/models/{model}"): [Case("model", {"model": "{model}"}),
                                    Case("model under the caller's slug",
                                         {"model": "ft:tiny-bert:acme:sst2:{adapter}"}),
                                    Case("adapter id alone", {"model": "{adapter}"}, owner_sees=False)],
    ("DELETE", "/v1/models/{model}"): [Case("model", {"model": "{model}"}),
                                       Case("model under the caller's slug",
                                            {"model": "ft:tiny-bert:acme:sst2:{adapter}"})],
    ("GET", "/v1/webhooks"): [],  # no id in; test_lists_show_none_of_anothers
    ("POST", "/v1/webhooks"): [],  # no id in; test_made_objects_are_the_makers
    ("GET", "/v1/webhooks/{webhook_id}"): [Case("webhook", {"webhook_id": "{webhook}"})],
    ("DELETE", "/v1/webhooks/{webhook_id}"): [Case("webhook", {"webhook_id": "{webhook}"})],
    ("GET", "/v1/webhook_endpoints"): [Case("after another's endpoint", query={"after": "{webhook}"})],
    ("POST", "/v1/webhook_endpoints"): [],  # no id in; test_made_objects_are_the_makers
    ("GET", "/v1/webhook_endpoints/{webhook_id}"): [Case("webhook", {"webhook_id": "{webhook}"})],
    ("DELETE", "/v1/webhook_endpoints/{webhook_id}"): [Case("webhook", {"webhook_id": "{webhook}"})],
}
LISTS = {"/v1/files", "/v1/fine_tuning/jobs", "/v1/models", "/v1/webhooks", "/v1/webhook_endpoints"}
MAKERS = {"/v1/files", "/v1/fine_tuning/jobs", "/v1/webhooks", "/v1/webhook_endpoints"}
# A JSON body each route accepts as far as its shape goes (the ids then decide the answer).
BODIES = {("POST", "/v1/fine_tuning/jobs"): JOB_BODY, ("POST", "/v1/webhooks"): WEBHOOK_BODY,
          ("POST", "/v1/webhook_endpoints"): WEBHOOK_BODY,
          ("POST", "/v1/fine_tuning/merges"): {"models": ["{model}", "{model}"], "method": "linear"}}
ROUTE_IDS = sorted(ROUTES)
FOREIGN = [(route, case) for route in ROUTE_IDS for case in ROUTES[route]]


def fill(value: Any, ids: dict[str, str], own: dict[str, str]) -> Any:
    names = {**ids, **{f"own_{k}": v for k, v in own.items()}}
    if isinstance(value, str):
        return re.sub(r"\{(\w+)\}", lambda m: names[m.group(1)], value)
    if isinstance(value, dict):
        return {k: fill(v, ids, own) for k, v in value.items()}
    return value


def url_of(path: str, values: dict[str, str]) -> str:
    """The route's path with its parameters (`{model:path}` keeps its '/')."""
    for name, value in values.items():
        path = path.replace("{" + name + "}", quote(value, safe=":/" if name == "model" else ":"))
    return path


def route_path(path: str) -> str:
    return path.replace("{model:path}", "{model}")


def error_of(response: httpx.Response, status: int | tuple[int, ...]) -> dict:
    """OpenAI's error object of `response`, asserting its status and shape."""
    statuses = (status,) if isinstance(status, int) else status
    assert response.status_code in statuses, (response.status_code, response.text[:500])
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == SHAPE, body
    assert "Traceback" not in response.text and "sqlalchemy" not in response.text.lower()
    return body["error"]


def masked(response: httpx.Response, values: dict[str, str]) -> tuple[int, str]:
    text = response.text
    for name, value in sorted(values.items(), key=lambda kv: -len(kv[1])):
        if len(value) >= 8:  # an event's id is a small number: as text it is in every timestamp
            text = text.replace(value, f"<{name}>")
    return response.status_code, text


def test_every_route_has_a_row() -> None:
    served = {(m, route_path(p)) for m, p in app_routes()}
    assert served == set(ROUTES), (f"routes without a row in ROUTES: {sorted(served - set(ROUTES))}; "
                                   f"rows of no route: {sorted(set(ROUTES) - served)}")
    for route, cases in ROUTES.items():
        assert cases or route[1] in LISTS | MAKERS, f"{route}: no case with another tenant's ids"


@pytest.mark.parametrize(("route", "case"), FOREIGN, ids=[f"{m} {p} [{c.label}]" for (m, p), c in FOREIGN])
def test_another_tenants_ids_answer_as_nobodys(world: World, route: tuple[str, str], case: Case) -> None:
    method, path = route
    key = world.key()
    answers = []
    for ids in (world.ids, world.missing):
        body = fill(case.body if case.body is not None else BODIES.get(route), ids, world.own)
        answer = world.request(method, url_of(path, fill(case.path, ids, world.own)), key,
                               params=fill(case.query, ids, world.own),
                               **({"json": body} if body is not None else {}))
        assert answer.status_code < 500, answer.text
        answers.append(masked(answer, ids))
    foreign, nobody = answers
    assert foreign == nobody, f"another tenant's id is told apart from nobody's:\n{foreign}\n{nobody}"
    if "after" in case.query and "own" in str(case.path):
        assert foreign[0] == 200  # a cursor in its own job's events: a page of its own job only
    else:
        assert foreign[0] in (400, 404), foreign
    for name in ("file", "job", "adapter", "webhook"):
        assert world.ids[name] not in foreign[1]


def test_another_tenants_ids_through_the_openai_client(world: World) -> None:
    acme, ids = world.api.client(world.key()), world.ids
    calls = [lambda: acme.files.retrieve(ids["file"]), lambda: acme.files.content(ids["file"]),
             lambda: acme.files.delete(ids["file"]), lambda: acme.files.retrieve(ids["result"]),
             lambda: acme.files.content(ids["result"]), lambda: acme.files.list(after=ids["file"]),
             lambda: acme.fine_tuning.jobs.retrieve(ids["job"]),
             lambda: acme.fine_tuning.jobs.cancel(ids["job"]),
             lambda: acme.fine_tuning.jobs.pause(ids["job"]),
             lambda: acme.fine_tuning.jobs.resume(ids["job"]),
             lambda: acme.fine_tuning.jobs.list_events(ids["job"]),
             lambda: acme.fine_tuning.jobs.checkpoints.list(ids["job"]),
             lambda: acme.fine_tuning.jobs.list(after=ids["job"]),
             lambda: acme.models.retrieve(ids["model"]), lambda: acme.models.delete(ids["model"]),
             lambda: acme.webhooks.retrieve(ids["webhook"]), lambda: acme.webhooks.delete(ids["webhook"])]
    for call in calls:
        with pytest.raises(openai.NotFoundError) as caught:
            call()
        assert set(caught.value.body) == SHAPE
    with pytest.raises(openai.BadRequestError):
        acme.fine_tuning.jobs.create(model="tiny-bert", training_file=ids["file"])
    # untouched by all that
    with world.api.session() as s:
        from orchestrator.services.adapters import get_adapter
        from orchestrator.services.files import get_file
        from orchestrator.services.webhooks import get_webhook

        assert get_file(s, ids["file"], "globex", world.api.settings).id == ids["file"]
        assert get_adapter(s, ids["adapter"], "globex").id == ids["adapter"]
        assert get_webhook(s, ids["webhook"], "globex").id == ids["webhook"]


def test_lists_show_none_of_anothers(world: World) -> None:
    key = world.key()
    for path in sorted(LISTS):
        answer = world.request("GET", path, key, params={"limit": 100})
        assert answer.status_code == 200, answer.text
        for name in ("file", "result", "job", "adapter", "webhook"):
            assert world.ids[name] not in answer.text, (path, name)
    own = world.request("GET", f"/v1/fine_tuning/jobs/{world.own['job']}/events", key,
                        params={"after": world.ids["event"], "limit": 100}).json()
    assert own["data"] and all(e["id"] != world.ids["event"] for e in own["data"])


def test_made_objects_are_the_makers(world: World) -> None:
    acme, globex = world.key(), world.key("globex")
    made = [world.request("POST", "/v1/files", acme, data={"purpose": "fine-tune"},
                          files={"file": ("x.jsonl", CHAT + b"\n\n")}).json()["id"],
            world.request("POST", "/v1/fine_tuning/jobs", acme, json=JOB_BODY).json()["id"]]
    with world.api.session() as s:  # the API refuses loopback URLs: this is the CLI's door
        from orchestrator.services.webhooks import create_webhook

        made.append(create_webhook(s, "acme", "http://127.0.0.1:9/mine").endpoint.id)
    for path in sorted(LISTS):
        listed = world.request("GET", path, globex, params={"limit": 100}).text
        assert not any(m in listed for m in made), path
    for path in ("/v1/files/{}", "/v1/fine_tuning/jobs/{}", "/v1/webhooks/{}"):
        for object_id in made:
            error_of(world.request("GET", path.format(object_id), globex), 404)


# ---- keys ------------------------------------------------------------------------------------------------

def _any_request(world: World, route: tuple[str, str], key: str | None, **kwargs: Any) -> httpx.Response:
    """`route` asked with acme's own ids (so that only the key decides the answer)."""
    method, path = route
    values = {"file_id": world.own["file"], "job_id": world.own["job"], "model": "tiny-bert",
              "webhook_id": world.missing["webhook"]}
    if method == "DELETE":  # nothing of acme's is deleted should a request get through
        values = {"file_id": world.missing["file"], "model": world.missing["model"],
                  "webhook_id": world.missing["webhook"]}
    body = BODIES.get(route)
    return world.request(method, url_of(path, values), key, **({"json": body} if body else {}), **kwargs)


@pytest.mark.parametrize("route", ROUTE_IDS, ids=[f"{m} {p}" for m, p in ROUTE_IDS])
def test_keys_are_checked_on_every_route(world: World, route: tuple[str, str]) -> None:
    from orchestrator.services.keys import create_key, revoke_key

    with world.api.session() as s:
        revoked_row, revoked = create_key(s, "acme")
        revoke_key(s, revoked_row.id)
        expired_row, expired = create_key(s, "acme", expires_days=1)
    with world.api.session() as s:  # expired a second ago
        from datetime import timedelta

        from orchestrator.registry.models import ApiKey, utcnow

        s.get(ApiKey, expired_row.id).expires_at = utcnow() - timedelta(seconds=1)
        s.commit()
    for key in (None, "", revoked, expired, "sk-" + "x" * 40, "x" * 5000, "\u00e9t\u00e9"):
        headers = {"Authorization": "Bearer " + key} if key and key.isascii() else {}
        answer = _any_request(world, route, None, headers=headers)
        error = error_of(answer, 401)
        assert error["type"] == "authentication_error"
    answer = _any_request(world, route, None, headers={"Authorization": "Basic " + revoked})
    error_of(answer, 401)
    # an operator key: the header names the tenant it acts for; none, or an unknown one: 400
    operator = world.operator_key()
    error = error_of(_any_request(world, route, operator), 400)
    assert error["param"] == "OpenAI-Organization"
    error = error_of(_any_request(world, route, operator, headers={"OpenAI-Organization": "nobody"}),
                     400)
    assert error["param"] == "OpenAI-Organization"
    # a tenant key naming another tenant (existing or not: the same answer)
    mismatch = [_any_request(world, route, world.key(), headers={"OpenAI-Organization": org})
                for org in ("globex", "no-such-tenant")]
    assert error_of(mismatch[0], 400) == error_of(mismatch[1], 400)


@pytest.mark.parametrize("route", [r for r in ROUTE_IDS if ROUTES[r] and "{" in r[1]],
                         ids=[f"{m} {p}" for m, p in ROUTE_IDS if ROUTES[m, p] and "{" in p])
def test_an_operator_key_sees_only_the_tenant_it_names(world: World, route: tuple[str, str]) -> None:
    """Acting for acme, globex's objects do not exist; acting for globex, they do."""
    method, path = route
    case = ROUTES[route][0]
    operator = world.operator_key()
    answers = []
    for org, ids in (("acme", world.ids), ("acme", world.missing)):
        answer = world.request(method, url_of(path, fill(case.path, ids, world.own)), operator,
                               headers={"OpenAI-Organization": org},
                               **({"json": BODIES[route]} if route in BODIES else {}))
        answers.append(masked(answer, ids))
    assert answers[0] == answers[1] and answers[0][0] == 404
    # the control: for their owner the same ids exist (a 404 above is not a broken route)
    for owned in (c for c in ROUTES[route] if method == "GET" and c.owner_sees and "own_" not in str(c.path)):
        answer = world.request(method, url_of(path, fill(owned.path, world.ids, world.own)), operator,
                               headers={"OpenAI-Organization": "globex"})
        assert answer.status_code == 200, (owned.label, answer.text)


# ---- limits ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("route", ROUTE_IDS, ids=[f"{m} {p}" for m, p in ROUTE_IDS])
def test_a_body_over_the_cap_is_413(world: World, route: tuple[str, str]) -> None:
    method, path = route
    key = world.key()
    url = url_of(path, {"file_id": world.own["file"], "job_id": world.own["job"], "model": "tiny-bert",
                        "webhook_id": world.missing["webhook"]})
    answer = world.request(method, url, key, content=b"{" + b" " * BODY_CAP + b"}",
                           headers={"content-type": "application/json"})
    error = error_of(answer, 413)
    assert error["code"] == "request_too_large"
    if method == "POST":  # streamed without a length: counted as it is read
        def chunks():
            for _ in range(BODY_CAP // 4096 + 2):
                yield b" " * 4096

        answer = world.request(method, url, key, content=chunks(),
                               headers={"content-type": "application/json"})
        assert answer.status_code in (400, 404, 413) and "error" in answer.json(), answer.text


def test_over_the_rate_every_route_is_429_with_retry_after(world: World) -> None:
    for _ in range(3):  # the count is per minute of the clock: a new minute, a fresh count; again
        minute, key = time.time() // 60, world.key()
        for _ in range(RATE):
            assert world.request("GET", "/v1/models", key).status_code == 200
        answers = [(route, _any_request(world, route, key)) for route in ROUTE_IDS]
        if time.time() // 60 == minute:
            break
    for route, answer in answers:
        error = error_of(answer, 429)
        assert error["code"] == "rate_limit_exceeded", route
        assert 1 <= int(answer.headers["retry-after"]) <= 60
    assert world.request("GET", "/v1/models", world.key()).status_code == 200  # per key


# ---- hostile input ---------------------------------------------------------------------------------------

HOSTILE_IDS = ["x" * 10_000, "a/b", "..", "../../etc/passwd", "%2e%2e", "abc\x00def",
               "\u202e\u00e9\U0001f600", "' OR '1'='1", "%_*\\", "ft:a:b:c:\x00", "result-",
               "builtin-glue-\x00", " ", "\ud800", "0000"]
HOSTILE_QUERIES = [{"limit": "-1"}, {"limit": str(10**30)}, {"limit": "1e309"}, {"limit": "\x00"},
                   {"after": "x" * 10_000}, {"after": "\x00"}, {"after": "' OR 1=1 --"}, {"after": "9" * 40},
                   {"after": "\ud800"}, {"order": "sideways"}, {"metadata[a]": "\x00"}, {"metadata['] ": "x"}]


def _hostile_urls(path: str) -> list[str]:
    names = re.findall(r"\{(\w+)(?::path)?\}", path)
    if not names:
        return []
    out = []
    for value in HOSTILE_IDS:
        encoded = quote(value.encode("utf-8", "surrogatepass"), safe="")
        raw = re.sub(r"\{\w+(?::path)?\}", encoded, path)
        out.append(raw)
        if "/" in value:
            out.append(re.sub(r"\{\w+(?::path)?\}", value, path))
    return out


@pytest.mark.parametrize("route", ROUTE_IDS, ids=[f"{m} {p}" for m, p in ROUTE_IDS])
def test_hostile_ids_and_queries_are_4xx_in_openais_shape(world: World, route: tuple[str, str]) -> None:
    method, path = route
    own = url_of(path, {"file_id": world.own["file"], "job_id": world.own["job"], "model": "tiny-bert",
                        "webhook_id": world.missing["webhook"]})
    body = BODIES.get(route)
    requests = [(url, {}) for url in _hostile_urls(path)]
    if method == "GET":
        requests += [(own, query) for query in HOSTILE_QUERIES]
    key, wrong = world.key(), []
    for n, (url, query) in enumerate(requests):
        if n % (RATE - 5) == RATE - 6:
            key = world.key()
        target = httpx.URL(world.api.base_url + url.replace("\ud800", "%ED%A0%80"))
        if query:
            encoded = "&".join(f"{quote(k.encode('utf-8', 'surrogatepass'), safe='[]')}="
                               f"{quote(v.encode('utf-8', 'surrogatepass'), safe='')}"
                               for k, v in query.items())
            target = httpx.URL(world.api.base_url + own + "?" + encoded)
        answer = world.http.request(method, target, headers={"Authorization": f"Bearer {key}"},
                                    **({"json": body} if body else {}))
        if answer.status_code == 200:  # an odd query some routes ignore (order= on jobs, say)
            continue
        try:
            assert error_of(answer, (400, 404, 405, 413, 414))["message"]
        except AssertionError as exc:
            wrong.append(f"{method} {str(target)[:120]!r}: {exc}"[:400])
    assert not wrong, "\n".join(wrong)


JSON_ROUTES = [r for r in ROUTE_IDS if r in BODIES]
BAD_BODIES = [
    (b'{"model": ', None),  # malformed
    (b"[1, 2]", None), (b'"text"', None), (b"null", None), (b"1e309", None), (b"", None),
    (b"\xff\xfe{}", None), (b"{" * 5000 + b"}" * 5000, None),  # not UTF-8; deep
]
# Each optional field of each JSON route, and the values thrown at every field.
OPTIONAL = {("POST", "/v1/fine_tuning/jobs"): ["validation_file", "suffix", "seed", "metadata",
                                               "hyperparameters", "method", "integrations", "lorafleet"],
            ("POST", "/v1/fine_tuning/merges"): ["weights", "density", "seed", "suffix"],
            ("POST", "/v1/webhooks"): ["name", "event_types"],
            ("POST", "/v1/webhook_endpoints"): ["name", "event_types"]}
RAW = "@@raw@@"
HOSTILE_VALUES = ["a\x00b", "\ud800", "x" * 30_000, -1, 10**40, True, [[[[[[[[]]]]]]]], {"a" * 300: "b"},
                  {"k\x00": "v"}, {"k": {"k": {"k": 1}}}, RAW + "1e309", RAW + "NaN",
                  RAW + '{"a": ' * 200 + "1" + "}" * 200]


def _raw_json(body: dict) -> bytes:
    """`body` as JSON, with RAW-marked strings written as they are (1e309, NaN: not valid Python JSON)."""
    text = json.dumps(body)
    return re.sub(rf'"{RAW}(.*?)"(?=[,}}])', lambda m: json.loads(f'"{m.group(1)}"'), text).encode()


@pytest.mark.parametrize("route", JSON_ROUTES, ids=[f"{m} {p}" for m, p in JSON_ROUTES])
def test_bad_json_bodies_are_400s_naming_the_field(world: World, route: tuple[str, str]) -> None:
    method, path = route
    keys = iter(world.key() for _ in range(1000))
    key = next(keys)
    for raw, param in BAD_BODIES:
        answer = world.request(method, path, key, content=raw, headers={"content-type": "application/json"})
        error = error_of(answer, 400)
        if param:
            assert param in error["message"], (raw[:60], error)
    base = BODIES[route]
    for field_name, value in [*((name, 12345) for name in base), ("colour", "red")]:
        answer = world.request(method, path, key, json={**base, field_name: value})
        error = error_of(answer, 400)
        assert field_name in error["message"], (field_name, error)
    answer = world.request(method, path, key, json={k: v for k, v in base.items() if k != next(iter(base))})
    assert next(iter(base)) in error_of(answer, 400)["message"]
    wrong = []
    thrown = [(f, v) for f in [*base, *OPTIONAL[route]] for v in HOSTILE_VALUES]
    for n, (field_name, value) in enumerate(thrown):
        if n % 40 == 39:
            key = next(keys)
        answer = world.request(method, path, key, content=_raw_json({**base, field_name: value}),
                               headers={"content-type": "application/json"})
        if answer.status_code == 200:
            continue  # a value the field takes (null for an optional one, say)
        try:
            error = error_of(answer, (400, 409))
            assert answer.status_code == 409 or field_name in error["message"] or error["param"] == field_name
        except AssertionError as exc:
            wrong.append(f"{field_name}={str(value)[:40]!r}: {str(exc)[:300]}")
    assert not wrong, "\n".join(wrong)


def test_hostile_uploads_are_400s(world: World) -> None:
    key = world.key()
    cases = [({"purpose": "fine-tune"}, {"file": ("a\x00b.jsonl", CHAT)}),
             ({"purpose": "fine-tune"}, {"file": ("\u202e" * 300 + ".jsonl", CHAT)}),
             ({"purpose": "fine-tune\x00"}, {"file": ("x.jsonl", CHAT)}),
             ({"purpose": "x" * 10_000}, {"file": ("x.jsonl", CHAT)}),
             ({"purpose": "fine-tune"}, {"file": ("x.jsonl", b'{"text": "a\\u0000", "label": 1}\n' * 3)}),
             ({"purpose": "fine-tune"}, {"file": ("x.jsonl", b"\xff\xfe\x00\x00" * 10)}),
             ({"purpose": "fine-tune"}, {"file": ("x.jsonl", b"")}),
             ({"purpose": "fine-tune"}, {"file": ("x.jsonl", b'{"messages": ' * 3000 + b"\n")}),
             ({"purpose": "fine-tune"}, {"file": ("x.jsonl", b'{"text": 1e309, "label": 1}\n' * 3)}),
             ({"purpose": "fine-tune", "file": "not a file"}, {}), ({}, {"file": ("x.jsonl", CHAT)})]
    for data, files in cases:
        answer = world.request("POST", "/v1/files", key, data=data, files=files or None)
        if answer.status_code == 200:
            assert answer.json()["object"] == "file"
            continue
        error_of(answer, 400)


def test_a_webhook_url_to_loopback_or_private_is_refused(world: World) -> None:
    key = world.key()
    before = world.request("GET", "/v1/webhooks", key).json()["data"]
    for url in ("http://127.0.0.1/h", "http://localhost:8080/h", "http://10.0.0.1/h", "http://[::1]/h",
                "http://169.254.169.254/latest/meta-data", "http://0.0.0.0/h", "http://192.168.1.1/h",
                "http://2130706433/h", "http://0x7f.1/h", "file:///etc/passwd", "gopher://example.com/",
                "http://user:pw@127.0.0.1/h", "http://[::ffff:127.0.0.1]/h"):
        for path in ("/v1/webhooks", "/v1/webhook_endpoints"):
            error = error_of(world.request("POST", path, key, json={"url": url}), 400)
            assert error["param"] == "url", (url, error)
    assert world.request("GET", "/v1/webhooks", key).json()["data"] == before


def test_odd_model_paths(world: World) -> None:
    key = world.key()
    for path in ("/v1/models/", "/v1/models//", "/v1/models/tiny-bert/",
                 "/v1/models/tiny-bert%2F..%2Ftiny-bert",
                 "/v1/models/org/name", "/v1/models/ft:tiny-bert:acme:sst2:", "/v1/models/%2F",
                 "/v1/models/ft%3Atiny-bert%3Aglobex%3Asst2%3A" + world.ids["adapter"] + "/x"):
        for method in ("GET", "DELETE"):
            answer = world.request(method, path, key)
            error_of(answer, (404, 403, 400, 405))
    assert world.request("GET", "/v1/models/tiny-bert", key).json()["id"] == "tiny-bert"


def test_text_the_registry_cannot_hold_is_a_400_naming_where(world: World) -> None:
    key = world.key()
    cases = [("GET", f"/v1/fine_tuning/jobs/{world.own['job']}%00", {}, "job_id"),
             ("GET", "/v1/files", {"params": {"after": "a\x00"}}, "after"),
             ("POST", "/v1/fine_tuning/jobs", {"json": {**JOB_BODY, "metadata": {"team": "a\x00"}}},
              "metadata.team"),
             ("POST", "/v1/fine_tuning/jobs", {"json": {**JOB_BODY, "suffix": "\ud800"}}, "suffix"),
             ("POST", "/v1/webhooks", {"json": {**WEBHOOK_BODY, "name": "n\x00"}}, "name")]
    for method, path, kwargs, where in cases:
        if "json" in kwargs:  # httpx would refuse to encode a lone surrogate: write it as JSON does
            kwargs = {"content": json.dumps(kwargs["json"]).encode(),
                      "headers": {"content-type": "application/json"}}
        error = error_of(world.request(method, path, key, **kwargs), 400)
        assert (error["param"], error["code"]) == (where, "invalid_characters"), error
        assert where in error["message"] and ("NUL" in error["message"] or "surrogate" in error["message"])
