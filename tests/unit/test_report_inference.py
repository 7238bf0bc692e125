"""The inference section of `report cost`, on SQLite and PostgreSQL: what `lorafleet serve`
recorded per tenant (services.inference.record_inference), priced by device as training is, in
the JSON, the CSV and the Markdown output, within the report's scope."""

from __future__ import annotations

import csv
import io
import json

from orchestrator.registry.models import utcnow
from orchestrator.reports import cost_report, make_filters
from orchestrator.reports.render import render
from orchestrator.services.inference import InferenceRecord, record_inference
from orchestrator.services.tenants import create_tenant

pytest_plugins = ["registry_fixtures"]

PRICES = {"cpu": 0.5, "cuda": 4.0}


def serve(session, tenant_id: str, seconds: float, device: str, prompt: int, completion: int) -> None:
    record = InferenceRecord(tenant_id, None, "tiny-llama", "completions", prompt, completion, seconds,
                             device, utcnow())
    record_inference(session, [record])


def test_cost_report_has_an_inference_section(session) -> None:
    acme, globex = create_tenant(session, "acme"), create_tenant(session, "globex")
    serve(session, acme.id, 1800.0, "cpu", 600, 400)  # 0.5 h × 0.5 = 0.25
    serve(session, acme.id, 1800.0, "cuda:NVIDIA H100", 100, 900)  # 0.5 h × 4 = 2.0
    serve(session, globex.id, 3600.0, "tpu", 10, 0)  # no price: unpriced, not free
    report = cost_report(session, make_filters(), PRICES, 0.0)
    lines = {line["tenant"]: line for line in json.loads(render(report, "json"))["inference"]}
    assert list(lines) == ["acme", "globex", None]
    acme_line = lines["acme"]
    assert [acme_line[k] for k in ("requests", "prompt_tokens", "completion_tokens")] == [2, 700, 1300]
    assert lines["acme"]["money"] == 2.25 and lines["acme"]["cost_per_1k_tokens"] == 2.25 / 2.0
    assert (lines["globex"]["money"], lines["globex"]["unpriced_seconds"]) == (0.0, 3600.0)
    assert (lines[None]["requests"], lines[None]["device_seconds"], lines[None]["money"]) == (3, 7200.0, 2.25)
    rows = {(r["section"], r["tenant"], r["name"]): r["value"]
            for r in csv.DictReader(io.StringIO(render(report, "csv")))}
    assert float(rows[("inference", "acme", "money")]) == 2.25
    assert int(rows[("inference", "TOTAL", "requests")]) == 3
    table = render(report, "md").split("## Inference (lorafleet serve)\n", 1)[1]
    assert "| acme " in table and "| TOTAL " in table
    only = json.loads(render(cost_report(session, make_filters(tenants=["globex"]), PRICES, 0.0), "json"))
    assert [line["tenant"] for line in only["inference"]] == ["globex", None]
    assert only["inference"][-1]["requests"] == 1
