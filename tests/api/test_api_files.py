"""`/v1/files` and `/v1/models` through the official openai client against a real uvicorn process
per registry (embedded: SQLite; cluster: PostgreSQL + Redis): upload, list, retrieve, content and
delete; a bad file named line by line; the built-in files; another tenant's ids are 404s; the
bases and the tenant's own `ft:` models."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import openai
import pytest

from orchestrator.services.jobs import submit_job
from orchestrator.services.keys import create_key
from orchestrator.services.tenants import create_tenant, set_tenant_quota

pytestmark = pytest.mark.integration

CHAT = [{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": f"q{i}"},
                      {"role": "assistant", "content": f"a{i}"}]} for i in range(6)]


@pytest.fixture(scope="module")
def keys(api_server) -> dict[str, str]:
    """{tenant: raw key} for acme and globex."""
    out = {}
    with api_server.session() as s:
        for slug in ("acme", "globex"):
            create_tenant(s, slug)
            out[slug] = create_key(s, slug)[1]
    return out


def jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_files_upload_list_retrieve_content_delete(api_server, keys, tmp_path: Path):
    acme, globex = api_server.client(keys["acme"]), api_server.client(keys["globex"])
    path = jsonl(tmp_path / "chat.jsonl", CHAT)
    with path.open("rb") as fh:
        created = acme.files.create(file=fh, purpose="fine-tune")
    assert (created.object, created.purpose, created.status, created.filename) == (
        "file", "fine-tune", "processed", "chat.jsonl")
    assert created.bytes == path.stat().st_size and created.created_at > 1_700_000_000
    second = acme.files.create(file=("../../etc/passwd\u202e.jsonl", jsonl(tmp_path / "pc.jsonl", [
        {"prompt": "p", "completion": "c"}] * 3).read_bytes()), purpose="fine-tune")
    assert second.filename == "../../etc/passwd\u202e.jsonl"  # kept for display; stored by id

    listed = acme.files.list()
    ids = [f.id for f in listed.data]
    assert ids[:2] == [second.id, created.id]  # newest first, then the built-ins
    assert {"builtin-glue-sst2", "builtin-glue-mnli", "builtin-e2e"} <= set(ids) and len(ids) == 11
    first_page = acme.files.list(limit=1, order="asc")
    assert first_page.data[0].id == ids[-1] and first_page.has_more
    after = acme.files.list(limit=100, order="asc", after=first_page.data[0].id)
    assert [f.id for f in after.data] == ids[::-1][1:]
    assert created.id not in [f.id for f in globex.files.list(limit=100).data]

    assert acme.files.retrieve(created.id) == created
    assert acme.files.content(created.id).read() == path.read_bytes()
    sst2 = acme.files.retrieve("builtin-glue-sst2")
    assert (sst2.bytes > 0, sst2.purpose) == (True, "fine-tune")

    for call in (globex.files.retrieve, globex.files.content, globex.files.delete):
        with pytest.raises(openai.NotFoundError):
            call(created.id)
    with pytest.raises(openai.BadRequestError, match="read-only"):
        acme.files.delete("builtin-glue-sst2")
    with pytest.raises(openai.BadRequestError, match="not served"):
        acme.files.content("builtin-e2e")

    with api_server.session() as s:  # a queued job trains on the second file: it stays
        job = submit_job(s, "acme", {"task": "custom-generation", "base_model": "tiny-gpt2", "max_steps": 1,
                                     "dataset": second.id}, settings=api_server.settings)
    with pytest.raises(openai.BadRequestError, match=job.id):
        acme.files.delete(second.id)
    deleted = acme.files.delete(created.id)
    assert (deleted.id, deleted.deleted) == (created.id, True)
    with pytest.raises(openai.NotFoundError):
        acme.files.retrieve(created.id)


def test_bad_uploads_are_400s_that_say_what_is_wrong(api_server, keys, tmp_path: Path):
    acme = api_server.client(keys["acme"])
    before = [f.id for f in acme.files.list(limit=100).data]
    bad = jsonl(tmp_path / "bad.jsonl", [CHAT[0], {"messages": [{"role": "user", "content": "hi"}]},
                                         {"prompt": "p", "completion": "c"}, CHAT[1]])
    with pytest.raises(openai.BadRequestError) as answer:
        acme.files.create(file=bad.open("rb"), purpose="fine-tune")
    message = answer.value.body["message"]
    assert "line 2: no assistant message" in message and "line 3: a prompt/completion row" in message
    assert "line 1:" not in message and "line 4:" not in message
    with pytest.raises(openai.BadRequestError) as wrong:
        acme.files.create(file=jsonl(tmp_path / "ok.jsonl", CHAT).open("rb"), purpose="assistants")
    assert "'fine-tune'" in wrong.value.body["message"] and wrong.value.body["param"] == "purpose"
    with pytest.raises(openai.BadRequestError, match="not valid JSON"):
        acme.files.create(file=("x.jsonl", b"{nope\n"), purpose="fine-tune")
    with api_server.session() as s:
        set_tenant_quota(s, "globex", max_storage_bytes=100)
    with pytest.raises(openai.RateLimitError) as quota:
        api_server.client(keys["globex"]).files.create(file=jsonl(tmp_path / "q.jsonl", CHAT).open("rb"),
                                                       purpose="fine-tune")
    assert quota.value.code == "insufficient_quota" and "100" in quota.value.body["message"]
    for query in ({"limit": 0}, {"limit": 101}, {"order": "sideways"}):
        with pytest.raises(openai.BadRequestError):
            acme.files.list(**query)
    with pytest.raises(openai.NotFoundError):
        acme.files.list(after="not-a-file-of-mine")
    no_file = httpx.post(api_server.base_url + "/v1/files", data={"purpose": "fine-tune"},
                         headers={"Authorization": f"Bearer {keys['acme']}"})
    assert no_file.status_code == 400 and no_file.json()["error"]["param"] == "file"
    assert [f.id for f in acme.files.list(limit=100).data] == before  # nothing was stored


def _adapter_for(api_server, key: str) -> tuple[str, str]:
    """A fine-tuning job created through the API with a suffix, then claimed and finished with an
    adapter (registry-shaped files) by the services a worker calls: (the adapter's id, the job's)."""
    from orchestrator.registry.models import new_id
    from orchestrator.services.adapters import new_adapter_path
    from orchestrator.services.leases import AdapterRecord, claim_job, finish_job_success
    from tests.registry_fixtures import fake_adapter_files

    job = api_server.client(key).fine_tuning.jobs.create(model="tiny-bert", training_file="builtin-glue-sst2",
                                                         suffix="my-bot")
    settings = api_server.settings
    adapter_id = new_id()
    with api_server.session() as s:
        claimed = claim_job(s, job.id, "w1", 60)
        path = fake_adapter_files(new_adapter_path(settings, claimed.tenant_id, adapter_id))
        finish_job_success(s, job.id, "w1", AdapterRecord(adapter_id, str(path), "0" * 64, 64, 1, 2),
                           {"validation": {"accuracy": 0.5}})
    return adapter_id, job.id


def test_models_list_retrieve_and_delete_only_the_tenants_own(api_server, keys):
    acme, globex = api_server.client(keys["acme"]), api_server.client(keys["globex"])
    adapter_id, job_id = _adapter_for(api_server, keys["acme"])
    name = f"ft:tiny-bert:acme:my-bot:{adapter_id}"  # the job's suffix names it
    assert acme.fine_tuning.jobs.retrieve(job_id).fine_tuned_model == name  # one name everywhere
    (result_id,) = acme.fine_tuning.jobs.retrieve(job_id).result_files  # served by /v1/files too
    assert acme.files.retrieve(result_id).purpose == "fine-tune-results"
    assert acme.files.content(result_id).read().decode().startswith("step,epoch")
    with pytest.raises(openai.NotFoundError):
        globex.files.content(result_id)
    with pytest.raises(openai.BadRequestError, match="result file"):
        acme.files.delete(result_id)
    models = {m.id: m for m in acme.models.list().data}
    assert models["smollm2-135m"].owned_by == "lorafleet" and models["tiny-bert"].object == "model"
    assert models[name].owned_by == "acme" and models[name].created > 1_700_000_000
    assert name not in {m.id for m in globex.models.list().data}
    assert acme.models.retrieve(name) == models[name]
    assert acme.models.retrieve("smollm2-135m").owned_by == "lorafleet"
    for missing in (name, "no-such-base", "ft:x:y:z:not-an-id", "org/name:with:colons"):
        with pytest.raises(openai.NotFoundError):
            globex.models.retrieve(missing)
    with pytest.raises(openai.NotFoundError):
        globex.models.delete(name)
    with pytest.raises(openai.PermissionDeniedError, match="base model"):
        acme.models.delete("smollm2-135m")
    deleted = acme.models.delete(name)
    assert (deleted.id, deleted.deleted) == (name, True)
    with pytest.raises(openai.NotFoundError):
        acme.models.retrieve(name)
    assert name not in {m.id for m in acme.models.list().data}
