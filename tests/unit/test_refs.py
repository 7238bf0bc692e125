"""References are ids, on SQLite and PostgreSQL: a job names its data set, the adapter it starts
from and a full fine-tune it trains on by id in the registry's columns, and the worker reads those
(stored objects, sha256 checked) instead of the spec's strings; every path a tenant gives goes
through the one resolver, and a hostile one is refused with the registry and the artifacts exactly
as they were."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import pytest
from sqlalchemy import inspect, text

from lora_engine.adapters.digest import adapter_files_digest
from lora_engine.errors import AdapterError, SpecError
from orchestrator import errors
from orchestrator.config import load_settings
from orchestrator.registry.models import new_id
from orchestrator.services.adapters import new_adapter_path
from orchestrator.services.datasets import upload_dataset
from orchestrator.services.jobs import plan_job, submit_batch, submit_job
from orchestrator.services.leases import AdapterRecord, claim_job, finish_job_success
from orchestrator.services.tenants import create_tenant
from worker.inputs import JobInputs, resolve_inputs

pytest_plugins = ["registry_fixtures"]
ROWS = "".join(json.dumps({"text": f"row {i}", "label": i % 2}) + "\n" for i in range(12))


def safetensors(names: list[str]) -> bytes:
    """A well-formed safetensors file of 2x2 float32 weights under `names`."""
    header = {n: {"dtype": "F32", "shape": [2, 2], "data_offsets": [16 * i, 16 * i + 16]}
              for i, n in enumerate(names)}
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + b"\0" * 16 * len(names)


BERT_WEIGHTS = [f"bert.encoder.layer.0.attention.self.{n}.weight" for n in ("query", "key", "value")]


@pytest.fixture
def world(registry_url: str, tmp_path: Path, session):
    """Tenants acme and globex, each with a full fine-tune (a BERT folder under the artifacts)
    and a LoRA adapter registered as a job's output, and a data root."""
    data = tmp_path / "data"
    data.mkdir()
    settings = load_settings({
        "LORAFLEET_HOME": str(tmp_path / "home"), "LORAFLEET_DATABASE_URL": registry_url,
        "LORAFLEET_ARTIFACTS": str(tmp_path / "artifacts"), "LORAFLEET_DATA_ROOTS": str(data),
        "LORAFLEET_DATA_DIR": os.environ["LORAFLEET_DATA_DIR"],
    })
    made = {"data": data, "settings": settings, "url": registry_url}
    for slug in ("acme", "globex"):
        create_tenant(session, slug)
        made[slug, "full"] = _registered(session, settings, slug, "full")
        made[slug, "lora"] = _registered(session, settings, slug, "lora")
    return made


def _registered(session, settings, slug: str, method: str):
    """An adapter of `slug` as a finished job leaves it: files under the artifacts, sha256 recorded."""
    spec = {"task": "sst2", "method": method, "rank": 4, "base_model": "tiny-bert", "max_steps": 1}
    job = submit_job(session, slug, spec, settings=settings)
    assert claim_job(session, job.id, "w", 60) is not None
    adapter_id = new_id()
    folder = new_adapter_path(settings, job.tenant_id, adapter_id)
    folder.mkdir(parents=True)
    if method == "full":
        (folder / "config.json").write_text(json.dumps({"model_type": "bert"}))
        (folder / "model.safetensors").write_bytes(safetensors(BERT_WEIGHTS))
    else:
        (folder / "adapter_config.json").write_text(json.dumps(
            {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "base_model_name_or_path": "tiny-bert"}))
        (folder / "adapter_model.safetensors").write_bytes(safetensors(["w.weight"]))
    sha, size = adapter_files_digest(folder)
    record = AdapterRecord(id=adapter_id, path=str(folder), sha256=sha, bytes=size, trainable_params=1,
                               total_params=2)
    return finish_job_success(session, job.id, "w", record, {})


def dump(session, settings) -> tuple:
    """Every row of every registry table, and every file under the artifacts root."""
    tables = sorted(inspect(session.connection()).get_table_names())
    rows = {t: sorted(map(repr, session.execute(text(f'SELECT * FROM "{t}"')))) for t in tables}
    session.commit()
    return rows, sorted(str(p) for p in settings.artifacts.rglob("*"))


def test_stored_objects_are_named_by_id_and_the_worker_reads_the_columns(world, session) -> None:
    settings, data = world["settings"], world["data"]
    full, lora = world["acme", "full"], world["acme", "lora"]
    (data / "d.jsonl").write_text(ROWS)
    on_full = submit_job(session, "acme", {"task": "sst2", "base_model": full.id[:8],
                                               "targets": ["query"], "max_steps": 1}, settings=settings)
    assert (on_full.base_adapter_id, on_full.base_model, on_full.spec["base_model"]) == (full.id,) * 3
    child = submit_job(session, "acme", {"task": "sst2", "init_from": lora.id[:8], "max_steps": 1},
                           settings=settings)
    assert (child.init_from_adapter_id, child.spec["init_from"]) == (lora.id, lora.id)
    assert child.base_model == "tiny-bert"  # the parent's, inherited
    custom = submit_job(session, "acme", {"task": "custom-classification", "base_model": "tiny-bert",
                                              "dataset": str(data / "d.jsonl"), "max_steps": 1},
                            settings=settings)
    assert custom.spec["dataset"] == custom.dataset_id

    # The worker: each id becomes the stored object's verified folder or file; no spec string is opened.
    ran = resolve_inputs(settings, JobInputs.of(on_full), {**on_full.spec})
    assert ran["base_model"] == full.path
    ran = resolve_inputs(settings, JobInputs.of(child), {**child.spec, "init_from": "/etc"})
    assert ran["init_from"] == lora.path
    ran = resolve_inputs(settings, JobInputs.of(custom), {**custom.spec, "dataset": "/etc/passwd"})
    stored = Path(ran["dataset"])
    assert stored.read_text() == ROWS and stored.is_relative_to(settings.artifacts)
    (Path(lora.path) / "adapter_model.safetensors").write_bytes(safetensors(["other.weight"]))
    with pytest.raises(AdapterError, match="changed since it was registered"):
        resolve_inputs(settings, JobInputs.of(child), child.spec)


def test_hostile_references_are_refused_and_change_nothing(world, session) -> None:
    settings, data = world["settings"], world["data"]
    theirs_full, theirs_lora = world["globex", "full"], world["globex", "lora"]
    for name, target in (("links-to-full", theirs_full), ("links-to-lora", theirs_lora)):
        (data / name).mkdir()
        for file in Path(target.path).iterdir():
            (data / name / file.name).symlink_to(file)
    os.mkfifo(data / "fifo.jsonl")
    (data / "zero.jsonl").symlink_to("/dev/zero")
    spec = {"task": "sst2", "max_steps": 1}
    custom = {"task": "custom-classification", "base_model": "tiny-bert", "max_steps": 1}
    cases = [
        ({**spec, "base_model": str(data / "links-to-full")}, "'config.json' is a symlink"),
        ({**spec, "base_model": theirs_full.path}, "points into the artifacts root"),
        ({**spec, "base_model": theirs_full.id}, f"no adapter {theirs_full.id!r} for tenant 'acme'"),
        ({**spec, "base_model": world["acme", "lora"].id}, "is a lora adapter, not a full fine-tune"),
        ({**spec, "init_from": str(data / "links-to-lora")}, "'adapter_config.json' is a symlink"),
        ({**spec, "init_from": theirs_lora.path}, "points into the artifacts root"),
        ({**spec, "init_from": theirs_lora.id[:8]}, "for tenant 'acme'"),
        ({**custom, "dataset": str(data / "fifo.jsonl")}, "is a FIFO; give a regular file"),
        ({**custom, "dataset": str(data / "zero.jsonl")}, "is outside the allowed data roots (a symlink"),
        ({**spec, "base_model": "tiny-bert", "targets": ["q_proj"]},
         "targets: 'q_proj' match no layer of base model 'tiny-bert'; its layers: "),
        ({**spec, "base_model": world["acme", "full"].id, "targets": ["query", "c_attn"]},
         "targets: 'c_attn' match no layer of base model"),
    ]
    before = dump(session, settings)
    for case, needle in cases:
        for submit in (submit_job, plan_job):
            with pytest.raises((errors.InvalidInput, errors.NotFound, SpecError)) as info:
                submit(session, "acme", case, settings=settings)
            assert needle in str(info.value), (case, str(info.value))
        with pytest.raises(errors.BatchError, match="item 1: ") as info:
            submit_batch(session, [{"tenant": "acme", **spec}, {"tenant": "acme", **case}],
                             settings=settings)
        assert needle in str(info.value)
        assert dump(session, settings) == before, case
    layers = "its layers: " + ", ".join(sorted({"query", "key", "value"}))
    with pytest.raises(SpecError, match=layers):  # read from the full fine-tune's safetensors header
        submit_job(session, "acme", cases[-1][0], settings=settings)
    with pytest.raises(errors.InvalidInput, match="is a FIFO"):
        upload_dataset(session, "acme", data / "fifo.jsonl", settings=settings)
    assert dump(session, settings) == before
