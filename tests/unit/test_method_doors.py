"""LoRA+, PiSSA and OLoRA wherever a method is named: `job submit --method`, a batch file, the
tenants' API (`lorafleet.method`; OpenAI's `method.type` pointed there), the registry (the trained
and the stored rank, on SQLite and PostgreSQL) and `report compare` (every method a row with the
same columns, in the table's order, beside lora, rslora, dora, full and the untuned base)."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from lora_engine.methods import NAMES
from orchestrator.config import load_settings
from orchestrator.registry.models import Adapter, Job, Metric, Tenant, Usage
from orchestrator.reports import compare_report, make_filters
from orchestrator.services.fine_tuning import RequestProblems, create_fine_tuning_job
from orchestrator.services.tenants import create_tenant
from orchestrator.services.views import adapter_dict
from tests.unit.test_cli import home, run  # noqa: F401 - the CLI's embedded home fixture

pytest_plugins = ["registry_fixtures"]


def test_the_cli_and_a_batch_file_take_the_new_methods(home: Path, tmp_path: Path):  # noqa: F811
    from orchestrator.registry.db import session_scope
    from orchestrator.services.jobs import get_job

    run("tenant", "create", "acme")
    common = ("--tenant", "acme", "--task", "sst2", "--base-model", "tiny-bert", "--rank", "4",
              "--max-steps", "2")
    plus = json.loads(run("job", "submit", *common, "--method", "loraplus", "--loraplus-lr-ratio", "8",
                          "--json").stdout)["id"]
    pissa = json.loads(run("job", "submit", *common, "--method", "pissa", "--json").stdout)["id"]
    refused = run("job", "submit", *common, "--method", "pissa", "--loraplus-lr-ratio", "8", ok=False)
    assert "loraplus_lr_ratio: only method 'loraplus' reads it" in refused.output + refused.stderr
    (tmp_path / "batch.yaml").write_text(
        "- {tenant: acme, task: sst2, base_model: tiny-bert, method: olora, rank: 4, max_steps: 2}\n"
        "- {tenant: acme, task: sst2, base_model: tiny-bert, method: loraplus, rank: 4, max_steps: 2}\n")
    out = run("job", "submit-batch", str(tmp_path / "batch.yaml"), "--json").stdout
    batch = [i["id"] for i in json.loads(out)]
    with session_scope() as s:
        jobs = [get_job(s, j).to_dict() for j in (plus, pissa, *batch)]
    assert [(j["method"], j["rank"], j["spec"].get("loraplus_lr_ratio")) for j in jobs] == [
        ("loraplus", 4, 8.0), ("pissa", 4, None), ("olora", 4, None), ("loraplus", 4, 16.0)]


@pytest.fixture
def settings(registry_url: str, tmp_path: Path):
    return load_settings({
        "LORAFLEET_HOME": str(tmp_path / "home"), "LORAFLEET_DATABASE_URL": registry_url,
        "LORAFLEET_ARTIFACTS": str(tmp_path / "artifacts"),
        "LORAFLEET_DATA_DIR": os.environ["LORAFLEET_DATA_DIR"],
        "LORAFLEET_DATA_ROOTS": str(tmp_path), "LORAFLEET_ALLOWED_BASE_MODELS": "tiny-bert",
    })


def test_the_api_takes_them_as_lorafleet_method(session, settings) -> None:
    create_tenant(session, "acme")
    body = {"model": "tiny-bert", "training_file": "builtin-glue-sst2"}
    job = create_fine_tuning_job(session, "acme", {**body, "lorafleet": {
        "method": "loraplus", "loraplus_lr_ratio": 4, "rank": 4, "max_steps": 2}}, settings)
    assert (job.method, job.spec["loraplus_lr_ratio"]) == ("loraplus", 4)
    job = create_fine_tuning_job(session, "acme", {**body, "lorafleet": {"method": "olora", "rank": 4}},
                                 settings)
    assert (job.method, job.rank) == ("olora", 4)
    for kind in ("pissa", ["pissa"]):  # OpenAI's method.type is the paradigm; a hostile type is no crash
        with pytest.raises(RequestProblems) as caught:
            create_fine_tuning_job(session, "acme", {**body, "method": {"type": kind}}, settings)
        assert caught.value.problems[0].startswith("method.type: ")
    assert "'pissa' is a lorafleet method: give it as lorafleet.method" in _problem(session, body, settings)


def _problem(session, body, settings) -> str:
    with pytest.raises(RequestProblems) as caught:
        create_fine_tuning_job(session, "acme", {**body, "method": {"type": "pissa"}}, settings)
    return caught.value.problems[0]


T0 = datetime(2026, 11, 1, tzinfo=UTC)
# method -> (quality, checkpoint bytes, trainable params, device seconds): dyadic, exact.
RUNS = {"none": (0.5, None, None, None), "lora": (0.75, 1024, 100, 900), "rslora": (0.75, 1024, 100, 900),
        "dora": (0.8125, 1152, 108, 1800), "loraplus": (0.8125, 1024, 100, 900),
        "pissa": (0.875, 2048, 100, 900), "olora": (0.8125, 2048, 100, 900),
        "full": (0.875, 65536, 6400, 3600)}


def test_the_registry_records_the_trained_and_the_stored_rank(session, registry_settings, job_spec) -> None:
    from orchestrator.registry.models import new_id
    from orchestrator.services.jobs import get_job, submit_job
    from orchestrator.services.leases import AdapterRecord, claim_job, finish_job_success

    create_tenant(session, "acme")
    for method, stored in (("pissa", 8), ("olora", 8), ("loraplus", 4), ("lora", 4)):
        job = submit_job(session, "acme", {**job_spec, "method": method})
        claim_job(session, job.id, "w1", 60)
        record = AdapterRecord(id=new_id(), path=f"/x/{method}", sha256="0" * 64, bytes=1, trainable_params=1,
                               total_params=2)
        finish_job_success(session, job.id, "w1", record, {"validation": {"accuracy": 0.5}})
        shown = get_job(session, job.id).to_dict()["adapter"]
        assert (shown["method"], shown["rank"], shown["stored_rank"]) == (method, 4, stored)
        assert adapter_dict(session.get(Adapter, record.id))["stored_rank"] == stored


def test_every_method_is_a_compare_row_with_the_same_columns(session) -> None:
    tenant = Tenant(slug="acme", name="Acme", max_running=2)
    session.add(tenant)
    session.flush()
    for i, (method, (quality, size, trainable, seconds)) in enumerate(RUNS.items()):
        kind = "evaluate" if method == "none" else "train"
        rank = 0 if method == "none" else 8
        job = Job(tenant_id=tenant.id, kind=kind, state="succeeded", task="sst2", method=method, rank=rank,
                  base_model="minilm-l6", spec={"task": "sst2", "method": method}, attempts=1, max_attempts=3,
                  created_at=T0 + timedelta(hours=i))
        session.add(job)
        session.flush()
        adapter = None
        if size is not None:
            adapter = Adapter(tenant_id=tenant.id, job_id=job.id, path=f"/a/{method}", sha256="0" * 64,
                              bytes=size, trainable_params=trainable, total_params=6400,
                              base_model="minilm-l6", task="sst2", method=method, rank=rank)
            session.add(adapter)
            session.flush()
        session.add(Usage(job_id=job.id, tenant_id=tenant.id, attempt=1, device="cpu",
                          device_seconds=seconds or 450.0, wall_seconds=451.0, peak_memory_bytes=1 << 30,
                          examples=900, tokens=9000))
        session.add(Metric(job_id=job.id, adapter_id=adapter.id if adapter else None, tenant_id=tenant.id,
                           split="validation", name="accuracy", value=quality, source="job"))
    session.flush()
    assert {a.stored_rank for a in session.query(Adapter)} == {8}  # a row that names none: its rank

    rows = compare_report(session, make_filters()).rows
    assert [r.method for r in rows] == ["none", *(m for m in NAMES if m != "none")]
    for row in rows:
        quality, size, trainable, seconds = RUNS[row.method]
        assert (row.quality, row.checkpoint_bytes, row.device_seconds) == (quality, size, seconds)
        if row.method in ("none", "full"):
            continue
        # The same columns as lora's: ratios to full, points against full and the untuned base.
        assert (row.size_ratio, row.time_ratio) == (65536 / size, 3600 / seconds)
        assert row.delta_vs_full == pytest.approx(100 * (quality - 0.875))
        assert row.delta_vs_untuned == pytest.approx(100 * (quality - 0.5))
        assert row.recommendation.startswith(("best trade-off — ", f"{row.label}: "))
    best = [r.method for r in rows if r.recommendation.startswith("best trade-off")]
    assert best == ["pissa"]  # within 1 point of the top (0.875), the smallest checkpoint
    from orchestrator.reports.render import render

    report = compare_report(session, make_filters())
    markdown, html = render(report, "md"), render(report, "html")
    for label in ("loraplus r=8", "pissa r=8", "olora r=8", "untuned base"):
        assert f"| {label} |" in markdown and label in html
