"""The OpenAI request -> spec mapping and the job objects, on SQLite and PostgreSQL."""

from __future__ import annotations

import os
import re
from datetime import timedelta
from pathlib import Path

import pytest

from orchestrator.config import load_settings
from orchestrator.services.datasets import upload_dataset
from orchestrator.services.fine_tuning import (
    RequestProblems,
    create_fine_tuning_job,
    default_lr,
    metadata_problems,
)
from orchestrator.services.fine_tuning_views import get_fine_tuning_job, list_fine_tuning_jobs
from orchestrator.services.tenants import create_tenant

pytest_plugins = ["registry_fixtures"]
TINY = {"rank": 4, "max_steps": 2}


@pytest.fixture
def settings(registry_url: str, tmp_path: Path):
    return load_settings({
        "LORAFLEET_HOME": str(tmp_path / "home"), "LORAFLEET_DATABASE_URL": registry_url,
        "LORAFLEET_ARTIFACTS": str(tmp_path / "artifacts"),
        "LORAFLEET_DATA_DIR": os.environ["LORAFLEET_DATA_DIR"],
        "LORAFLEET_DATA_ROOTS": str(tmp_path), "LORAFLEET_ALLOWED_BASE_MODELS": "tiny-bert,tiny-llama",
    })


def _rows(path: Path, n: int, kind: str = "classification") -> Path:
    if kind == "classification":
        path.write_text("".join(f'{{"text": "row {i}", "label": {i % 2}}}\n' for i in range(n)))
    else:
        path.write_text("".join(f'{{"prompt": "say {i}", "completion": "{i}"}}\n' for i in range(n)))
    return path


def _problems(session, body, settings) -> list[str]:
    with pytest.raises(RequestProblems) as caught:
        create_fine_tuning_job(session, "acme", body, settings)
    return caught.value.problems


def test_the_learning_rate_multiplier_multiplies_the_methods_default(session, settings) -> None:
    create_tenant(session, "acme")
    body = {"model": "tiny-bert", "training_file": "builtin-glue-rte", "seed": 3,
            "hyperparameters": {"learning_rate_multiplier": 0.5, "batch_size": 8},
            "lorafleet": {**TINY, "method": "dora"}}
    job = create_fine_tuning_job(session, "acme", body, settings)
    assert (job.task, job.method, job.rank) == ("rte", "dora", 4)
    assert (job.spec["seed"], job.spec["batch_size"]) == (3, 8)
    assert job.spec["lr"] == pytest.approx(0.5 * default_lr({"task": "rte", "method": "dora", "rank": 4,
                                                             "base_model": "tiny-bert"}))
    view = get_fine_tuning_job(session, job.id, "acme")
    assert view["hyperparameters"] == {"n_epochs": "auto", "batch_size": 8, "learning_rate_multiplier": 0.5}


def test_the_operators_list_of_bases_and_never_a_path(session, settings) -> None:
    create_tenant(session, "acme")
    for model, expected in (("tiny-gpt2", "not a base model tenants may fine-tune"),
                            ("./models/x", "is a path"), ("/etc", "is a path"), ("a/../../b", "is a path"),
                            (7, "must be a non-empty string")):
        problems = _problems(session, {"model": model, "training_file": "builtin-glue-sst2"}, settings)
        assert any(p.startswith("model:") and expected in p for p in problems), (model, problems)


def test_a_validation_file_is_the_tenants_own_of_the_same_kind(session, settings, tmp_path) -> None:
    create_tenant(session, "acme")
    create_tenant(session, "globex")
    train = upload_dataset(session, "acme", _rows(tmp_path / "t.jsonl", 20), settings=settings)
    held = upload_dataset(session, "acme", _rows(tmp_path / "v.jsonl", 4), settings=settings)
    gen = upload_dataset(session, "acme", _rows(tmp_path / "g.jsonl", 4, "generation"), "generation",
                         settings=settings)
    theirs = upload_dataset(session, "globex", _rows(tmp_path / "o.jsonl", 4), settings=settings)
    base = {"model": "tiny-bert", "training_file": train.id, "lorafleet": TINY}
    job = create_fine_tuning_job(session, "acme", {**base, "validation_file": held.id}, settings)
    assert job.task == "custom-classification"
    assert (job.dataset_id, job.validation_dataset_id) == (train.id, held.id)
    assert any("holds generation rows" in p for p in _problems(session, {**base, "validation_file": gen.id},
                                                                settings))
    assert any(p.startswith("validation_file: no file") for p in
               _problems(session, {**base, "validation_file": theirs.id}, settings))
    assert any("built-in task" in p for p in _problems(
        session, {**base, "training_file": "builtin-glue-sst2", "validation_file": held.id}, settings))


def test_metadata_limits() -> None:
    assert metadata_problems({"a": "b"}) == []
    assert metadata_problems({f"k{i}": "v" for i in range(16)}) == []
    assert "at most 16 pairs" in metadata_problems({f"k{i}": "v" for i in range(17)})[0]
    assert "keys are strings of 1 to 64" in metadata_problems({"k" * 65: "v"})[0]
    assert "at most 512" in metadata_problems({"k": "v" * 513})[0]
    assert "at most 512" in metadata_problems({"k": 1})[0]
    assert "must be an object" in metadata_problems(["k", "v"])[0]


def test_the_job_list_is_keyed_newest_first_and_scoped(session, settings) -> None:
    create_tenant(session, "acme")
    create_tenant(session, "globex")
    body = {"model": "tiny-bert", "training_file": "builtin-glue-sst2", "lorafleet": TINY}
    ids = [create_fine_tuning_job(session, "acme", {**body, "metadata": {"i": str(i % 2)}}, settings).id
           for i in range(5)]
    create_fine_tuning_job(session, "globex", body, settings)
    page, more = list_fine_tuning_jobs(session, "acme", limit=3)
    assert [j["id"] for j in page] == ids[::-1][:3] and more
    page, more = list_fine_tuning_jobs(session, "acme", after=page[-1]["id"], limit=3)
    assert [j["id"] for j in page] == ids[::-1][3:] and not more
    odd, _ = list_fine_tuning_jobs(session, "acme", metadata={"i": "1"})
    assert [j["id"] for j in odd] == [ids[3], ids[1]]


def test_the_default_bases_are_the_aliases_and_the_cached_hub_ids(tmp_path, monkeypatch) -> None:
    from lora_engine.model_ref import MODEL_ALIASES
    from orchestrator.config import ConfigError
    from orchestrator.services.base_models import tenant_bases

    cache = tmp_path / "hub"
    (cache / "models--org--tiny-model" / "snapshots" / "abc").mkdir(parents=True)
    (cache / "models--org--tiny-model" / "snapshots" / "abc" / "config.json").write_text("{}")
    (cache / "models--org--no-snapshot").mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    home = {"LORAFLEET_HOME": str(tmp_path / "home")}
    assert tenant_bases(load_settings(home)) == (*MODEL_ALIASES, "org/tiny-model")
    chosen = load_settings({**home, "LORAFLEET_ALLOWED_BASE_MODELS": "tiny-bert"})
    assert tenant_bases(chosen) == ("tiny-bert",)
    with pytest.raises(ConfigError, match="never trains on a folder"):
        load_settings({**home, "LORAFLEET_ALLOWED_BASE_MODELS": "tiny-bert,/models/x"})


@pytest.mark.parametrize("text, shown", [
    ("DataValidationError: /srv/lf/artifacts/6e9/datasets/ab/data.jsonl line 3: no label",
     "DataValidationError: …/data.jsonl line 3: no label"),
    ("OSError: [Errno 2] No such file: '/root/.cache/hub/models--a/config.json'",
     "OSError: [Errno 2] No such file: '…/config.json'"),
    ("step 1/3 loss 0.5", "step 1/3 loss 0.5"),
    ("see https://example.com/a/b", "see https://example.com/a/b"),
])
def test_messages_shown_to_a_tenant_cut_the_operators_paths(text, shown) -> None:
    from orchestrator.services.fine_tuning_views import redacted

    assert redacted(text) == shown


def test_a_fine_tuned_model_is_a_base_only_as_the_tenants_full_fine_tune(session, settings, adapter_files,
                                                                         tmp_path) -> None:
    from orchestrator.services.leases import AdapterRecord, claim_job, finish_job_success
    from orchestrator.services.model_names import model_name

    create_tenant(session, "acme")
    create_tenant(session, "globex")
    body = {"model": "tiny-bert", "training_file": "builtin-glue-sst2", "lorafleet": TINY}
    job = create_fine_tuning_job(session, "acme", body, settings)
    claim_job(session, job.id, "w1", 60)
    folder = adapter_files(tmp_path / "adapter")
    lora = finish_job_success(session, job.id, "w1", AdapterRecord("11111111-2222-4333-8444-555555555555",
                                                                   str(folder), "0" * 64, 128, 10, 100), {})
    name = model_name(lora, "acme")
    problems = _problems(session, {**body, "model": name}, settings)
    assert any(p.startswith("model:") and "is a lora fine-tune; only a full fine-tune" in p for p in problems)
    with pytest.raises(RequestProblems, match="no fine-tuned model"):
        create_fine_tuning_job(session, "globex", {**body, "model": name}, settings)  # not theirs
    with pytest.raises(RequestProblems, match="no fine-tuned model"):
        create_fine_tuning_job(session, "acme", {**body, "model": "00000000-0000-4000-8000-000000000000"},
                               settings)


def test_a_page_of_a_tenant_whose_jobs_are_the_oldest_reads_its_own_index(session, settings) -> None:
    """The page query walks ix_jobs_tenant_id_created_at_id, never the registry's newest jobs of
    every tenant: with `tenant_id = :id`, PostgreSQL walked ix_jobs_created_at and filtered."""
    from sqlalchemy import event, insert, text

    from orchestrator.registry.models import Job

    for slug in ("old", "new"):
        create_tenant(session, slug)
    body = {"model": "tiny-bert", "training_file": "builtin-glue-sst2", "lorafleet": TINY}
    template = create_fine_tuning_job(session, "old", body, settings)
    new_id = create_fine_tuning_job(session, "new", body, settings).tenant_id
    row = {c.key: getattr(template, c.key) for c in Job.__mapper__.column_attrs}
    start = template.created_at
    # The old tenant's 6,000 jobs first, then 4,000 newer ones of another tenant.
    rows = [{**row, "id": f"{i:08d}-0000-0000-0000-000000000000", "state": "succeeded",
             "tenant_id": template.tenant_id if i < 6000 else new_id,
             "created_at": start + timedelta(seconds=i)} for i in range(10_000)]
    session.execute(insert(Job), rows)
    session.execute(text("ANALYZE"))
    session.commit()
    statements = []

    def record(conn, cursor, statement, parameters, context, executemany):
        if "ORDER BY" in statement and "FROM jobs" in statement:
            statements.append((statement, parameters))

    engine = session.get_bind()
    event.listen(engine, "before_cursor_execute", record)
    try:
        page, more = list_fine_tuning_jobs(session, "old", limit=20)
    finally:
        event.remove(engine, "before_cursor_execute", record)
    assert [j["id"] for j in page] == [r["id"] for r in rows[5999:5979:-1]] and more
    (statement, parameters), = statements
    explain = "EXPLAIN " if engine.dialect.name == "postgresql" else "EXPLAIN QUERY PLAN "
    with engine.connect() as conn:
        cursor = conn.connection.dbapi_connection.cursor()
        cursor.execute(explain + statement, parameters)
        plan = "\n".join(str(r) for r in cursor.fetchall())
    assert "ix_jobs_tenant_id_created_at_id" in plan and not re.search(r"\bix_jobs_created_at\b", plan), plan
