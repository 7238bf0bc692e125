"""`/v1/fine_tuning/jobs` against a real uvicorn process per registry, through the official openai
client: the request's mapping and its refusals (every problem at once, OpenAI's error shape), the
job object, keyset pages and the metadata filter, pause / resume / cancel of a queued job, events,
checkpoints, and another tenant's ids (404). No worker runs here: jobs stay queued (the whole
session with a worker is tests/integration/test_api_session.py)."""

from __future__ import annotations

import httpx
import openai
import pytest

from orchestrator.services.keys import create_key
from orchestrator.services.tenants import create_tenant

pytestmark = pytest.mark.integration

TINY = {"method": "lora", "rank": 4, "max_steps": 2, "batch_size": 4, "eval_size": 8}


@pytest.fixture(scope="module")
def keys(api_server) -> dict[str, str]:
    with api_server.session() as s:
        create_tenant(s, "acme")
        create_tenant(s, "globex")
        return {slug: create_key(s, slug)[1] for slug in ("acme", "globex")}


@pytest.fixture(scope="module")
def acme(api_server, keys) -> openai.OpenAI:
    return api_server.client(keys["acme"])


def create(client: openai.OpenAI, **kwargs):
    body = {"model": "tiny-bert", "training_file": "builtin-glue-sst2", **kwargs}
    extra = body.pop("extra_body", {"lorafleet": TINY})
    return client.fine_tuning.jobs.create(**body, extra_body=extra)


def refused(call) -> dict:
    """OpenAI's error object of a call answered 400 (the client hands over its `error`)."""
    with pytest.raises(openai.BadRequestError) as caught:
        call()
    assert caught.value.status_code == 400
    assert set(caught.value.body) == {"message", "type", "param", "code"}
    return caught.value.body


def test_create_maps_openai_fields_onto_the_spec(acme) -> None:
    job = create(acme, suffix="sst2-demo", seed=7, metadata={"team": "nlp", "run": "1"},
                 method={"type": "supervised", "supervised": {"hyperparameters": {
                     "batch_size": 4, "learning_rate_multiplier": 2.0}}},
                 extra_body={"lorafleet": {"method": "rslora", "rank": 4, "max_steps": 2}})
    assert (job.object, job.status, job.model, job.organization_id) == ("fine_tuning.job", "queued",
                                                                      "tiny-bert", "acme")
    assert (job.training_file, job.validation_file, job.seed) == ("builtin-glue-sst2", None, 7)
    assert job.metadata == {"team": "nlp", "run": "1"} and job.user_provided_suffix == "sst2-demo"
    assert job.hyperparameters.batch_size == 4
    assert job.hyperparameters.learning_rate_multiplier == pytest.approx(2.0)  # x rsLoRA's default lr
    assert job.fine_tuned_model is None and job.trained_tokens is None and job.error is None
    assert job.method.type == "supervised" and job.integrations == [] and job.result_files == []
    again = acme.fine_tuning.jobs.retrieve(job.id)
    assert again.id == job.id and again.status == "queued"


def test_every_problem_of_a_request_in_one_400(acme) -> None:
    error = refused(lambda: acme.fine_tuning.jobs.create(
        model="/etc/passwd", training_file="builtin-glue-nope", seed=-1, suffix="a:b",
        metadata={f"k{i}": "v" for i in range(17)},
        method={"type": "dpo"}, integrations=[{"type": "wandb", "wandb": {"project": "x"}}],
        extra_body={"colour": "red", "lorafleet": {"rank": 5000, "task": "mnli", "warp": 9}}))
    message = error["message"]
    for expected in ("colour", "model: '/etc/passwd' is a path", "training_file: no file 'builtin-glue-nope'",
                     "seed: must be an integer", "suffix:", "metadata: at most 16 pairs",
                     "method.type: 'dpo'", "integrations[0]: integration type 'wandb'",
                     "lorafleet.task: given by training_file", "lorafleet.warp: unknown field"):
        assert expected in message, (expected, message)
    assert error["param"] == "colour" and error["type"] == "invalid_request_error"


def test_a_job_opts_out_of_mlflow_through_integrations(api_server, acme) -> None:
    from orchestrator.services.jobs import get_job

    out = create(acme, integrations=[{"type": "mlflow", "mlflow": {"enabled": False}}])
    opted_out = [{"type": "mlflow", "mlflow": {"enabled": False}}]
    assert [i.model_dump(exclude_none=True) for i in out.integrations] == opted_out
    kept = create(acme, integrations=[{"type": "mlflow", "mlflow": {"enabled": True}}])
    plain = create(acme)
    assert kept.integrations == [] and plain.integrations == []
    with api_server.session() as s:  # what the worker's MLflow sink reads
        assert [get_job(s, j.id).job.tracking for j in (out, kept, plain)] == [False, True, True]
    assert acme.fine_tuning.jobs.retrieve(out.id).integrations[0].type == "mlflow"


@pytest.mark.parametrize("integrations, expected", [
    ([{"type": "wandb", "wandb": {"project": "x"}}], "integrations[0]: integration type 'wandb' is not "
                                                     "supported; allowed: 'mlflow'"),
    ([{"type": "mlflow", "mlflow": {"enabled": "no"}}],
     "integrations[0].mlflow.enabled: must be true or false"),
    ([{"type": "mlflow", "mlflow": {"tracking_uri": "http://evil.example"}}],
     "integrations[0].mlflow: unknown field(s) 'tracking_uri'; allowed: enabled"),
    ([{"type": "mlflow", "mlflow": {}, "url": "http://evil.example"}],
     "integrations[0]: unknown field(s) 'url'; allowed: type, mlflow"),
    ([{"type": "mlflow"}, {"type": "mlflow"}], "integrations: at most 1 entry"),
    (["mlflow"], "integrations[0]: must be an object"),
    ({"type": "mlflow"}, "integrations: must be a list"),
])
def test_integrations_are_checked_at_the_door(acme, integrations, expected) -> None:
    error = refused(lambda: create(acme, integrations=integrations))
    assert expected in error["message"] and error["param"].startswith("integrations"), error


def test_spec_problems_come_under_the_requests_own_names(acme) -> None:
    error = refused(lambda: create(acme, hyperparameters={"n_epochs": 0, "batch_size": "auto"},
                                   extra_body={"lorafleet": {"rank": 5000}}))
    message = error["message"]
    assert "hyperparameters.n_epochs: must be > 0" in message
    assert "lorafleet.rank: must be between 1" in message
    error = refused(lambda: create(acme, model="smollm2-135m-not-allowed"))
    assert "not a base model tenants may fine-tune" in str(error)
    error = refused(lambda: create(acme, hyperparameters={"n_epochs": 1},
                                   method={"type": "supervised", "supervised": {"hyperparameters": {}}}))
    assert "give hyperparameters once" in str(error)


def test_pages_are_keyed_and_filtered_by_metadata(acme) -> None:
    ids = [create(acme, metadata={"batch": "paging", "n": str(i)}).id for i in range(5)]
    first = acme.fine_tuning.jobs.list(limit=2, extra_query={"metadata[batch]": "paging"})
    assert [j.id for j in first.data] == ids[::-1][:2] and first.has_more
    rest = acme.fine_tuning.jobs.list(limit=10, after=first.data[-1].id,
                                      extra_query={"metadata[batch]": "paging"})
    assert [j.id for j in rest.data] == ids[::-1][2:] and not rest.has_more
    one = acme.fine_tuning.jobs.list(extra_query={"metadata[n]": "3", "metadata[batch]": "paging"})
    assert [j.id for j in one.data] == [ids[3]]
    with pytest.raises(openai.NotFoundError):
        acme.fine_tuning.jobs.list(after="00000000-0000-4000-8000-000000000000")


def test_pause_resume_cancel_events_of_a_queued_job(acme) -> None:
    job = create(acme)
    paused = acme.post(f"/fine_tuning/jobs/{job.id}/pause", cast_to=httpx.Response).json()
    assert paused["status"] == "paused"
    resumed = acme.post(f"/fine_tuning/jobs/{job.id}/resume", cast_to=httpx.Response).json()
    assert resumed["status"] == "queued"
    assert acme.fine_tuning.jobs.cancel(job.id).status == "cancelled"
    error = refused(lambda: acme.post(f"/fine_tuning/jobs/{job.id}/resume", cast_to=httpx.Response))
    assert "only paused jobs can be resumed" in str(error)
    events = acme.fine_tuning.jobs.list_events(job.id, limit=2)
    assert [e.object for e in events.data] == ["fine_tuning.job.event"] * 2 and events.has_more
    assert events.data[0].message.startswith("Fine-tuning job cancelled")  # newest first
    older = acme.fine_tuning.jobs.list_events(job.id, after=events.data[-1].id, limit=20)
    assert [e.message.split()[0] for e in older.data][-1] == "sst2"  # the submission, oldest
    assert not older.has_more
    assert acme.fine_tuning.jobs.checkpoints.list(job.id).data == []
    assert acme.fine_tuning.jobs.retrieve(job.id).result_files == [f"result-{job.id}"]


def test_another_tenants_job_does_not_exist(api_server, keys, acme) -> None:
    job = create(acme)
    globex = api_server.client(keys["globex"])
    calls = [lambda: globex.fine_tuning.jobs.retrieve(job.id),
             lambda: globex.fine_tuning.jobs.cancel(job.id),
             lambda: globex.fine_tuning.jobs.list_events(job.id),
             lambda: globex.fine_tuning.jobs.checkpoints.list(job.id),
             lambda: globex.post(f"/fine_tuning/jobs/{job.id}/pause", cast_to=httpx.Response),
             lambda: globex.post(f"/fine_tuning/jobs/{job.id}/resume", cast_to=httpx.Response)]
    for call in calls:
        with pytest.raises(openai.NotFoundError):
            call()
    assert job.id not in [j.id for j in globex.fine_tuning.jobs.list(limit=100).data]
    assert acme.fine_tuning.jobs.retrieve(job.id).status == "queued"  # untouched


@pytest.mark.parametrize("body, expected", [
    ("[1, 2]", "body: must be a JSON object"),
    ('"x"', "body: must be a JSON object"),
    ('{"model": "tiny-bert", "training_file": "builtin-glue-sst2", "hyperparameters": {"n_epochs": NaN}}',
     "hyperparameters.n_epochs: must be a number"),
    ('{"model": "tiny-bert", "training_file": "builtin-glue-sst2", "lorafleet": {"targets": '
     + "[" * 5000 + "]" * 5000 + "}}", "parsing the body"),
    ('{"model": "tiny-bert", "training_file": "builtin-glue-sst2", "seed": ' + "9" * 5000 + "}",
     "parsing the body"),
])
def test_hostile_bodies_are_400s_in_openais_shape(api_server, keys, body, expected) -> None:
    headers = {"Authorization": f"Bearer {keys['acme']}", "Content-Type": "application/json"}
    answer = httpx.post(api_server.base_url + "/v1/fine_tuning/jobs", content=body, headers=headers)
    assert answer.status_code == 400 and expected in answer.json()["error"]["message"], answer.text


def test_bad_queries_are_400s_and_unknown_jobs_404s(api_server, keys) -> None:
    base, auth = api_server.base_url + "/v1/fine_tuning/jobs", {"Authorization": f"Bearer {keys['acme']}"}
    for url, status, expected in [
        (f"{base}?colour=red", 400, "unknown query parameter 'colour'"),
        (f"{base}?metadata[a%22b]=1", 400, "a filter is a key"),
        (f"{base}?limit=1000", 400, "limit"),
        (f"{base}/nope/events", 404, "no fine-tuning job 'nope'"),
    ]:
        answer = httpx.get(url, headers=auth)
        assert answer.status_code == status and expected in answer.json()["error"]["message"], answer.text
    answer = httpx.post(f"{base}/{'f' * 36}/pause", headers=auth)
    assert answer.status_code == 404 and "no fine-tuning job" in answer.json()["error"]["message"]


def _generation_adapter(api_server, tenant: str) -> str:
    """A finished E2E job's adapter (files of a config and zeros: the door checks their sha256 and
    rank; the worker, which would read the tensors, does not run here)."""
    from lora_engine.adapters.digest import adapter_files_digest
    from orchestrator.registry.models import new_id
    from orchestrator.services.adapters import new_adapter_path
    from orchestrator.services.jobs import submit_job
    from orchestrator.services.leases import AdapterRecord, claim_job, finish_job_success
    from tests.registry_fixtures import fake_adapter_files

    adapter_id = new_id()
    with api_server.session() as s:
        job = submit_job(s, tenant, {"task": "e2e", "rank": 4, "base_model": "tiny-llama", "max_steps": 2},
                         settings=api_server.settings)
        claim_job(s, job.id, "w1", 60)
        path = fake_adapter_files(new_adapter_path(api_server.settings, job.tenant_id, adapter_id))
        sha256, size = adapter_files_digest(path)
        finish_job_success(s, job.id, "w1", AdapterRecord(adapter_id, str(path), sha256, size, 1, 2), {})
    return f"ft:tiny-llama:{tenant}:e2e:{adapter_id}"


def test_a_merge_of_own_adapters_is_a_job_followed_like_any(api_server, keys, acme) -> None:
    ours = [_generation_adapter(api_server, "acme") for _ in range(2)]
    theirs = _generation_adapter(api_server, "globex")
    job = acme.post("/fine_tuning/merges", cast_to=object,
                    body={"models": ours, "method": "dare_linear", "weights": [0.5, 0.5], "seed": 7})
    assert (job["object"], job["status"], job["lorafleet"]["kind"]) == ("fine_tuning.job", "queued", "merge")
    assert acme.fine_tuning.jobs.retrieve(job["id"]).status == "queued"
    with pytest.raises(openai.NotFoundError):  # another tenant's adapter: as if it did not exist
        acme.post("/fine_tuning/merges", cast_to=object,
                  body={"models": [ours[0], theirs], "method": "linear"})
    error = refused(lambda: acme.post("/fine_tuning/merges", cast_to=object,
                                      body={"models": ours, "method": "svd", "colour": 1}))
    assert "unknown field 'colour'" in error["message"]
    error = refused(lambda: acme.post("/fine_tuning/merges", cast_to=object,
                                      body={"models": ours, "method": "svd"}))
    assert "unknown merge method 'svd'" in error["message"]
