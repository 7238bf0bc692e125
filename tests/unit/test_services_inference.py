"""The registry side of the inference server, on SQLite and PostgreSQL: a tenant's `ft:` name
finds only that tenant's live adapter (another tenant's, a deleted one, a malformed name: the same
NotFound) in one statement, whether the adapter was trained on chat rows (its job's data set), the
sha256 check before a load, and each request's cost summed per tenant (rows written in one batch)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from lora_engine.adapters.digest import adapter_files_digest
from lora_engine.errors import AdapterError
from orchestrator import errors
from orchestrator.config import load_settings
from orchestrator.registry.models import InferenceUsage, new_id, utcnow
from orchestrator.services.adapters import delete_adapter, model_names_of, new_adapter_path
from orchestrator.services.datasets import upload_dataset
from orchestrator.services.inference import (
    InferenceRecord,
    inference_totals,
    record_inference,
    served_adapter,
    served_adapters,
    verified_served,
)
from orchestrator.services.jobs import submit_job
from orchestrator.services.leases import AdapterRecord, claim_job, finish_job_success
from orchestrator.services.tenants import create_tenant
from tests.registry_fixtures import statements
from worker.serve.lookup import AdapterLookup

pytest_plugins = ["registry_fixtures"]

CHAT = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
PAIR = {"prompt": "hi", "completion": "hello"}


@pytest.fixture
def settings(registry_url: str, tmp_path: Path):
    data = tmp_path / "data"
    data.mkdir()
    return load_settings({
        "LORAFLEET_HOME": str(tmp_path / "home"), "LORAFLEET_DATABASE_URL": registry_url,
        "LORAFLEET_ARTIFACTS": str(tmp_path / "artifacts"), "LORAFLEET_DATA_ROOTS": str(data),
        "LORAFLEET_DATA_DIR": os.environ["LORAFLEET_DATA_DIR"],
    })


def trained(session, settings, slug: str, row: dict):
    """An adapter as a finished custom-generation job on a data set of `row`s leaves it."""
    data = settings.data_roots[0] / f"{slug}-{new_id()}.jsonl"
    data.write_text((json.dumps(row) + "\n") * 4)
    dataset = upload_dataset(session, slug, data, kind=None, settings=settings)
    spec = {"task": "custom-generation", "dataset": dataset.id, "base_model": "tiny-llama", "max_steps": 1}
    job = submit_job(session, slug, spec, settings=settings)
    assert claim_job(session, job.id, "w", 60) is not None
    adapter_id = new_id()
    folder = new_adapter_path(settings, job.tenant_id, adapter_id)
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4, "lora_alpha": 8}))
    sha, size = adapter_files_digest(folder)
    record = AdapterRecord(id=adapter_id, path=str(folder), sha256=sha, bytes=size, trainable_params=1,
                           total_params=2)
    return finish_job_success(session, job.id, "w", record, {})


def test_names_find_only_the_tenants_own_live_adapters(session, settings):
    for slug in ("acme", "globex"):
        create_tenant(session, slug)
    chat, pairs = trained(session, settings, "acme", CHAT), trained(session, settings, "acme", PAIR)
    theirs = trained(session, settings, "globex", PAIR)
    names = model_names_of(session, [chat, pairs, theirs])
    acme = chat.tenant_id
    with statements(settings.database_url) as seen:
        served = served_adapter(session, names[chat.id], acme)
    assert len(seen) == 1, seen  # the server looks every uncached request up: one statement
    assert (served.id, served.name, served.sha256) == (chat.id, names[chat.id], chat.sha256)
    assert served.chat is True
    assert served_adapter(session, names[pairs.id], acme).chat is False
    assert {a.id for a in served_adapters(session, "acme")} == {chat.id, pairs.id}
    refused = [names[theirs.id], f"ft:tiny-llama:acme:x:{new_id()}", "tiny-llama", chat.id, chat.id[:8],
               names[chat.id].upper(), "ft:" + ":" * 10]
    for name in refused:
        with pytest.raises(errors.NotFound):
            served_adapter(session, name, acme)
    assert verified_served(session, chat.id, "acme").path == chat.path
    (Path(chat.path) / "adapter_config.json").write_text("{}")
    with pytest.raises(AdapterError):
        verified_served(session, chat.id, "acme")
    delete_adapter(session, pairs.id, "acme", settings=settings)
    with pytest.raises(errors.NotFound):
        served_adapter(session, names[pairs.id], acme)


def test_usage_is_summed_per_tenant(session, settings):
    acme, globex = create_tenant(session, "acme"), create_tenant(session, "globex")
    adapter = trained(session, settings, "acme", PAIR)
    at = utcnow()
    records = [InferenceRecord(acme.id, adapter.id, "tiny-llama", "completions", prompt, completion, seconds,
                               "cpu", at) for prompt, completion, seconds in ((10, 5, 0.5), (3, 0, 0.25))]
    records.append(InferenceRecord(globex.id, None, "tiny-llama", "classify", 7, 0, 1.0, "cuda:H100", at))
    record_inference(session, records)
    assert session.query(InferenceUsage).count() == 3  # a row per request, as a report counts them
    totals = inference_totals(session)
    assert totals[acme.id] == {"requests": 2, "prompt_tokens": 13, "completion_tokens": 5,
                               "device_seconds": pytest.approx(0.75)}
    assert inference_totals(session, "globex") == {globex.id: {"requests": 1, "prompt_tokens": 7,
                                                               "completion_tokens": 0, "device_seconds": 1.0}}


def test_the_servers_lookup_keeps_a_name_until_its_adapter_is_deleted(session, settings):
    """worker/serve/lookup.py: a name found once is answered from memory (no statement) while its
    folder is there; `adapter delete` removes the folder, and the next lookup finds it gone."""
    acme = create_tenant(session, "acme")
    adapter = trained(session, settings, "acme", PAIR)
    name = model_names_of(session, [adapter])[adapter.id]
    lookup = AdapterLookup(ttl_s=300)
    assert lookup.find(session, name, acme.id).id == adapter.id
    with statements(settings.database_url) as seen:
        assert lookup.find(session, name, acme.id).id == adapter.id
    assert seen == []
    with pytest.raises(errors.NotFound):
        lookup.find(session, name, create_tenant(session, "globex").id)  # kept per tenant
    delete_adapter(session, adapter.id, "acme", settings=settings)
    with pytest.raises(errors.NotFound):
        lookup.find(session, name, acme.id)
