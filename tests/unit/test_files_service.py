"""Files as the tenants' API sees them, on SQLite and PostgreSQL: uploads over the network whose
format decides the kind, the built-in data sets every tenant lists, the job's training source,
and a chat data set rendered by the worker with the base model's chat template."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from lora_engine.data import load_examples
from lora_engine.errors import DataValidationError
from orchestrator import errors
from orchestrator.config import get_settings
from orchestrator.services.datasets import get_dataset, upload_stream
from orchestrator.services.files import (
    BUILTIN_TASKS,
    delete_file,
    file_content,
    get_file,
    list_files,
    training_source,
)
from orchestrator.services.jobs import submit_job
from orchestrator.services.tenants import create_tenant, set_tenant_quota
from worker.inputs import JobInputs, resolve_inputs

pytest_plugins = ["registry_fixtures"]

CHAT = [{"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]}
        for i in range(12)]


@pytest.fixture
def roots(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, registry_url: str) -> Path:
    monkeypatch.setenv("LORAFLEET_DATA_ROOTS", str(tmp_path))
    monkeypatch.setenv("LORAFLEET_ARTIFACTS", str(tmp_path / "artifacts"))
    monkeypatch.setenv("LORAFLEET_DATABASE_URL", registry_url)  # the worker's look-ups
    get_settings.cache_clear()
    yield tmp_path
    get_settings.cache_clear()


def jsonl(rows) -> io.BytesIO:
    return io.BytesIO(b"".join(json.dumps(r).encode() + b"\n" for r in rows))


def test_upload_stream_decides_the_kind_by_format_and_keeps_a_hostile_name_for_display(session, roots):
    create_tenant(session, "acme")
    name = "../../etc/passwd\x00\u202e.jsonl"
    chat = upload_stream(session, "acme", jsonl(CHAT), name)
    assert (chat.kind, chat.format, chat.rows) == ("generation", "chat", 12)
    assert chat.name == "../../etc/passwd\ufffd\u202e.jsonl"
    assert Path(chat.path).parent == get_settings().artifacts / chat.tenant_id / "datasets"
    assert get_dataset(session, chat.id).format == "chat"  # as the registry keeps it
    pc = upload_stream(session, "acme", jsonl([{"prompt": "p", "completion": "c"}] * 2), "pc.jsonl")
    tl = upload_stream(session, "acme", jsonl([{"text": "t", "label": i % 2} for i in range(4)]), "t.jsonl")
    assert (pc.kind, pc.format, tl.kind, tl.format) == ("generation", "prompt_completion", "classification",
                                                        "text_label")
    assert upload_stream(session, "acme", jsonl(CHAT), "again.jsonl").id == chat.id  # the same bytes

    no_answer = {"messages": [{"role": "user", "content": "q"}]}
    bad = jsonl([CHAT[0], no_answer, {"prompt": "p", "completion": "c"}])
    with pytest.raises(DataValidationError) as info:
        upload_stream(session, "acme", bad, "bad.jsonl")
    assert [n for n, _ in info.value.problems] == [2, 3] and str(info.value).startswith("bad.jsonl:")
    with pytest.raises(errors.TooLarge, match="LORAFLEET_MAX_DATASET_BYTES"):
        upload_stream(session, "acme", jsonl(CHAT), "big.jsonl",
                      settings=get_settings().model_copy(update={"max_dataset_bytes": 100}))
    set_tenant_quota(session, "acme", max_storage_bytes=chat.bytes + pc.bytes + tl.bytes + 10)
    with pytest.raises(errors.QuotaExceeded):
        upload_stream(session, "acme", jsonl(CHAT[:5]), "more.jsonl")
    leftovers = [p for p in get_settings().artifacts.rglob("*") if p.name.startswith(".incoming")]
    assert leftovers == []  # nothing staged survives a refusal


def test_builtin_and_own_files_list_page_and_stay_each_tenants_own(session, roots):
    create_tenant(session, "acme")
    create_tenant(session, "globex")
    mine = [upload_stream(session, "acme", jsonl(CHAT[i:i + 2]), f"f{i}.jsonl") for i in range(3)]
    theirs = upload_stream(session, "globex", jsonl(CHAT), "g.jsonl")
    every = [v.id for v in list_files(session, "acme", limit=100)[0]]
    assert every[:3] == [d.id for d in reversed(mine)]  # newest first, the built-ins last
    assert set(every[3:]) == set(BUILTIN_TASKS) and theirs.id not in every
    assert "builtin-glue-sst2" in BUILTIN_TASKS and "builtin-e2e" in BUILTIN_TASKS and len(BUILTIN_TASKS) == 9
    page, more = list_files(session, "acme", limit=2, order="asc")
    page2, _ = list_files(session, "acme", limit=2, order="asc", after=page[-1].id)
    assert more and [v.id for v in page + page2] == every[::-1][:4]
    assert list_files(session, "acme", purpose="assistants") == ([], False)

    sst2 = get_file(session, "builtin-glue-sst2", "acme").to_dict()
    glue = Path(get_settings().data_dir) / "glue" / "sst2"
    assert sst2["bytes"] == (glue / "train.jsonl").stat().st_size + (glue / "validation.jsonl").stat().st_size
    assert (sst2["object"], sst2["purpose"], sst2["status"]) == ("file", "fine-tune", "processed")
    assert get_file(session, mine[0].id, "acme").to_dict()["filename"] == "f0.jsonl"
    assert file_content(session, mine[0].id, "acme").read_bytes() == jsonl(CHAT[0:2]).getvalue()
    for call in (get_file, file_content, delete_file):
        for other in (theirs.id, "builtin-glue-nope", "x" * 5000, "../../etc"):
            with pytest.raises(errors.NotFound):
                call(session, other, "acme")
    with pytest.raises(errors.InvalidInput, match="read-only: it cannot be deleted"):
        delete_file(session, "builtin-e2e", "acme")
    with pytest.raises(errors.InvalidInput, match="not served"):
        file_content(session, "builtin-e2e", "acme")
    assert delete_file(session, mine[0].id, "acme") == mine[0].id
    assert mine[0].id not in [v.id for v in list_files(session, "acme", limit=100)[0]]


def test_training_source_maps_builtins_to_tasks_and_refuses_what_is_in_use(session, roots):
    create_tenant(session, "acme")
    create_tenant(session, "globex")
    data = upload_stream(session, "acme", jsonl(CHAT), "chat.jsonl")
    assert training_source(session, "builtin-glue-sst2", "acme") == ("task", "sst2")
    assert training_source(session, "builtin-e2e", "acme") == ("task", "e2e")
    kind, row = training_source(session, data.id, "acme")
    assert (kind, row.id, row.format) == ("dataset", data.id, "chat")
    session.commit()
    with pytest.raises(errors.NotFound):
        training_source(session, data.id, "globex")
    session.rollback()
    job = submit_job(session, "acme", {"task": "custom-generation", "base_model": "tiny-gpt2", "max_steps": 1,
                                       "dataset": data.id})
    with pytest.raises(errors.InvalidState, match=job.id):
        delete_file(session, data.id, "acme")


def test_the_worker_renders_a_chat_data_set_with_the_jobs_base_model(session, roots):
    create_tenant(session, "acme")
    data = upload_stream(session, "acme", jsonl(CHAT), "chat.jsonl")
    spec = {"task": "custom-generation", "base_model": "tiny-gpt2", "max_steps": 1, "dataset": data.id}
    job = submit_job(session, "acme", spec)
    settings = get_settings()
    plain = resolve_inputs(settings, JobInputs.of(job), job.spec)["dataset"]
    (first, *_) = load_examples("custom-generation", "train", data_dir=settings.data_dir, dataset=plain)
    assert first.prompt.startswith("user: q") and first.prompt.endswith("\nassistant: ")
    smol_job = submit_job(session, "acme", {**spec, "base_model": "smollm2-135m"})
    smol = resolve_inputs(settings, JobInputs.of(smol_job), smol_job.spec)["dataset"]
    examples = load_examples("custom-generation", "train", data_dir=settings.data_dir, dataset=smol)
    assert all(e.prompt.endswith("<|im_start|>assistant\n") for e in examples) and len(examples) == 11
    assert Path(smol).is_relative_to(Path(data.path) / "rendered")
