"""Reports on a hand-made registry (tests/report_fixtures.py), on SQLite and PostgreSQL.

Every expected figure below is worked out by hand from the fixture's table (the arithmetic is
written out next to it) and compared exactly, in the JSON, the CSV and the Markdown output.
"""

from __future__ import annotations

import csv
import io
import json
from datetime import timedelta

import pytest
from report_fixtures import H100, PRICES, STORAGE_PRICE, T0, build_registry

from orchestrator.errors import InvalidInput, NotFound
from orchestrator.reports import benchmark_report, compare_report, cost_report, make_filters
from orchestrator.reports.render import render

pytest_plugins = ["registry_fixtures"]


@pytest.fixture
def reg(session_maker):
    with session_maker() as s:
        ids = build_registry(s)
    with session_maker() as s:
        yield s, ids


def _json(report) -> dict:
    return json.loads(render(report, "json"))


def _csv(report) -> dict[tuple, str]:
    """{(section, tenant, task, method, rank, device, name): value} from the CSV text."""
    rows = list(csv.DictReader(io.StringIO(render(report, "csv"))))
    assert rows and list(rows[0]) == [
        "section",
        "tenant",
        "task",
        "base_model",
        "method",
        "rank",
        "device",
        "name",
        "value",
    ]
    out = {}
    for r in rows:
        key = (r["section"], r["tenant"], r["task"], r["method"], r["rank"], r["device"], r["name"])
        assert key not in out, key
        out[key] = r["value"]
    return out


def _md_rows(report, title: str) -> list[list[str]]:
    """The body rows of the Markdown table titled `title`."""
    text = render(report, "md")
    block = text.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]
    lines = [ln for ln in block.splitlines() if ln.startswith("|")][2:]
    return [[c.strip() for c in ln.strip("|").split(" | ")] for ln in lines]


# ---- benchmark -------------------------------------------------------------------------------


def test_benchmark_latest(reg) -> None:
    s, ids = reg
    report = benchmark_report(s, make_filters(), "latest")
    data = _json(report)
    cells = {(c["tenant"], c["task"]): c for c in data["cells"]}
    # acme sst2 has three adapters (J3 full, J1, J2, created in that order): latest = J2.
    assert set(cells) == {
        ("acme", "sst2"),
        ("globex", "sst2"),
        ("globex", "mrpc"),
        ("globex", "e2e"),
        ("initech", "cola"),
        ("initech", "sst2"),
    }
    acme = cells[("acme", "sst2")]
    assert (acme["adapter_id"], acme["value"], acme["candidates"], acme["metric"]) == (
        ids["J2.adapter"],
        0.75,
        3,
        "accuracy",
    )
    assert acme["metrics"] == {"accuracy": 0.75}  # the train-split loss is not a quality metric
    assert (cells[("globex", "mrpc")]["adapter_id"], cells[("globex", "mrpc")]["candidates"]) == (
        ids["J7.adapter"],
        2,
    )
    assert cells[("globex", "mrpc")]["metrics"] == {"accuracy": 0.78125, "f1": 0.84375}
    assert cells[("globex", "sst2")]["candidates"] == 1  # J8 (untuned, no adapter) is no candidate
    assert cells[("globex", "e2e")]["metrics"] == {
        "bleu": 0.625,
        "cider": 2.25,
        "meteor": 0.4375,
        "nist": 8.5,
        "rouge_l": 0.6875,
    }
    # initech sst2 (J13, 0.8125): re-evaluated twice, the latest (J14) said 0.78125.
    ini = cells[("initech", "sst2")]
    assert (ini["value"], ini["reevaluated"], ini["drift"]) == (0.8125, 0.78125, 0.78125 - 0.8125)
    assert cells[("acme", "sst2")]["reevaluated"] is None

    stats = {x["task"]: x for x in data["task_stats"]}
    assert (stats["sst2"]["count"], stats["sst2"]["mean"], stats["sst2"]["min"], stats["sst2"]["max"]) == (
        3,
        (0.75 + 0.8125 + 0.8125) / 3,
        0.75,
        0.8125,
    )
    assert (stats["cola"]["metric"], stats["cola"]["mean"]) == ("matthews_corr", 0.25)
    assert stats["sst2"]["reference"]["published"] == 95.1
    assert stats["sst2"]["reference"]["label"] == "LoRA paper (Hu et al. 2021), RoBERTa-base LoRA, GLUE dev"
    assert stats["e2e"]["reference"]["label"] == "LoRA paper (Hu et al. 2021), GPT-2 M LoRA, E2E test"

    glue = {g["tenant"]: g for g in data["glue_average"]}
    assert {t: (g["tasks"], g["mean"], g["complete"]) for t, g in glue.items()} == {
        "acme": (1, 0.75, False),
        "globex": (2, (0.8125 + 0.78125) / 2, False),  # e2e is not GLUE
        "initech": (2, (0.25 + 0.8125) / 2, False),
    }
    assert glue["globex"]["label"] == "partial avg (2 of 8)"

    rec = _csv(report)
    assert float(rec[("metric", "acme", "sst2", "lora", "8", "", "accuracy")]) == 0.75
    assert int(rec[("pick", "acme", "sst2", "lora", "8", "", "candidates")]) == 3
    assert float(rec[("metric", "globex", "e2e", "lora", "4", "", "nist")]) == 8.5
    assert float(rec[("drift", "initech", "sst2", "lora", "8", "", "accuracy")]) == 0.78125 - 0.8125
    assert float(rec[("task_stats", "", "sst2", "", "", "", "accuracy_mean")]) == (0.75 + 0.8125 + 0.8125) / 3
    assert float(rec[("glue_average", "initech", "", "", "", "", "mean")]) == 0.53125

    # Columns: tenant, cola, sst2, mrpc, e2e, GLUE average (task order of the catalog).
    assert _md_rows(report, "Benchmark: tenants × tasks") == [
        ["acme", "-", "75.0 [3]", "-", "-", "75.0 (1 of 8)"],
        ["globex", "-", "81.2 [1]", "78.1 [2]", "62.5 [1]", "79.7 (2 of 8)"],  # 81.25 -> 81.2 (half-even)
        ["initech", "25.0 [1]", "81.2 [1] re -3.1", "-", "-", "53.1 (2 of 8)"],
        # The LoRA paper's numbers for the same tasks (CoLA 63.4, SST-2 95.1, MRPC 89.7, E2E BLEU 70.4).
        ["published: RoBERTa-base LoRA on GLUE dev; GPT-2 M LoRA on E2E test (LoRA paper)",
         "63.4", "95.1", "89.7", "70.4", "87.2 (8 of 8)"],
    ]
    assert _md_rows(report, "E2E: the five metrics") == [
        ["globex", "lora r=4", "62.5", "8.50", "43.8", "68.8", "2.25"],
        [
            "LoRA paper (Hu et al. 2021), GPT-2 M LoRA, E2E test",
            "published",
            "70.4",
            "8.85",
            "46.8",
            "71.8",
            "2.53",
        ],
    ]


def test_benchmark_training_curves(reg) -> None:
    """The picks' curves from the metric history: loss bucketed to CURVE_POINTS (first step, mean
    epoch, mean value per bucket), the held-out primary metric as recorded, nothing else."""
    from orchestrator.reports.benchmark import CURVE_POINTS

    s, ids = reg
    data = _json(benchmark_report(s, make_filters(), "latest"))
    curves = {(c["tenant"], c["task"]): c for c in data["curves"]}
    assert set(curves) == {("acme", "sst2"), ("initech", "cola")}  # J1 is not a pick; J3.. have none
    acme = curves[("acme", "sst2")]
    assert (acme["job_id"], acme["metric"]) == (ids["J2"], "accuracy")
    # 400 steps into 200 buckets: steps (1, 2), (3, 4), ... each pair averaged.
    assert CURVE_POINTS == 200 and len(acme["loss"]) == 200
    assert acme["loss"][0] == {"step": 1, "epoch": 1.5 / 128, "value": (399 + 398) / 8}
    assert acme["loss"][-1] == {"step": 399, "epoch": 399.5 / 128, "value": (1 + 0) / 8}
    assert acme["holdout"] == [{"step": 200, "epoch": 200 / 128, "value": 0.5},
                               {"step": 400, "epoch": 400 / 128, "value": 0.75}]
    cola = curves[("initech", "cola")]
    assert [(p["step"], p["value"]) for p in cola["loss"]] == [(1, 1.0), (2, 0.5), (3, 0.25), (4, 0.125)]
    assert cola["holdout"] == []
    # A scope without them has no curves.
    assert _json(benchmark_report(s, make_filters(tenants=["globex"])))["curves"] == []


def test_benchmark_best_and_filters(reg) -> None:
    s, ids = reg
    data = _json(benchmark_report(s, make_filters(), "best"))
    cells = {(c["tenant"], c["task"]): c for c in data["cells"]}
    assert (cells[("acme", "sst2")]["adapter_id"], cells[("acme", "sst2")]["value"]) == (
        ids["J3.adapter"],
        0.90625,
    )
    assert cells[("globex", "mrpc")]["adapter_id"] == ids["J7.adapter"]  # 0.78125 > 0.7734375
    # The window [T0+1h, T0+2h) holds only J1 (jobs are created an hour apart, J3 first).
    data = _json(
        benchmark_report(s, make_filters(since=T0 + timedelta(hours=1), until=T0 + timedelta(hours=2)))
    )
    assert [(c["tenant"], c["adapter_id"], c["candidates"]) for c in data["cells"]] == [
        ("acme", ids["J1.adapter"], 1)
    ]
    data = _json(benchmark_report(s, make_filters(tenants=["initech"], task="sst2")))
    assert [(c["tenant"], c["task"]) for c in data["cells"]] == [("initech", "sst2")]
    with pytest.raises(NotFound, match="no tenant 'nobody'"):
        benchmark_report(s, make_filters(tenants=["acme", "nobody"]))
    with pytest.raises(InvalidInput, match="unknown pick"):
        benchmark_report(s, make_filters(), "worst")
    with pytest.raises(InvalidInput, match="unknown task 'sst3'"):
        make_filters(task="sst3")
    with pytest.raises(InvalidInput, match="is not before"):
        make_filters(since=T0, until=T0)


# ---- cost ------------------------------------------------------------------------------------

H = 3600.0
CPU_P, H100_P = 0.5, 4.0  # the H100 matches "cuda:NVIDIA H100" (4.0) before "cuda" (2.0)
MB, GB = 1_000_000, 1e9
FULL_MINILM = 25_000_000 * 4  # total params × 4 bytes (float32)

# Per tenant, by hand from the fixture's table.
EXPECTED_COST = {
    "acme": dict(
        jobs={"queued": 0, "running": 0, "paused": 0, "succeeded": 3, "failed": 1, "cancelled": 0},
        # cpu: J4 900 (failed); H100: J3 3600 + J1 1800 + J2 900 (lost) + 1800
        devices={"cpu": (900.0, 900.0), H100: (8100.0, 900.0)},
        money=(900 * CPU_P + 8100 * H100_P) / H,  # 9.125
        examples=4000 + 4000 + 1000 + 4000 + 500,
        adapters=3,
        adapter_bytes=100 * MB + MB + MB,
        full_bytes=100 * MB + FULL_MINILM + FULL_MINILM,
        # sst2 jobs J3, J1, J2 against the untuned 0.5: money 4 + 2 + 3; gain 40.625 + 37.5 + 25 points
        quality_money=(3600 + 1800 + 2700) * H100_P / H,
        gain=40.625 + 37.5 + 25.0,
    ),
    "globex": dict(
        jobs={"queued": 0, "running": 0, "paused": 0, "succeeded": 5, "failed": 0, "cancelled": 0},
        # cpu: J8 450 + J5 3600 + J6 1800; H100: J7 900 + 900 (lost twice) + 3600, J15 900
        devices={"cpu": (5850.0, 0.0), H100: (6300.0, 1800.0)},
        money=(5850 * CPU_P + 6300 * H100_P) / H,  # 7.8125
        examples=0 + 8000 + 2000 + 3 * 2000 + 1000,
        adapters=4,
        adapter_bytes=2 * MB + MB + 100 * MB + 4 * MB,
        full_bytes=FULL_MINILM + FULL_MINILM + 100 * MB + 135_000_000 * 4,
        quality_money=3600 * CPU_P / H,
        gain=31.25,  # only J5 is sst2 on minilm-l6
    ),
    "initech": dict(
        jobs={"queued": 1, "running": 1, "paused": 0, "succeeded": 4, "failed": 0, "cancelled": 1},
        # cpu: J10 450 (cancelled) + J13 900 + J16 450 + J14 450; H100: J9 900 + J12 900 (lost)
        devices={"cpu": (2250.0, 450.0), H100: (1800.0, 900.0)},
        money=(2250 * CPU_P + 1800 * H100_P) / H,  # 2.3125
        examples=1000 + 100 + 500 + 2000,
        adapters=2,
        adapter_bytes=MB // 2 + MB,
        full_bytes=2 * FULL_MINILM,
        quality_money=900 * CPU_P / H,
        gain=31.25,  # J13
    ),
}


def test_cost(reg) -> None:
    s, _ = reg
    report = cost_report(s, make_filters(), PRICES, STORAGE_PRICE)
    data = _json(report)
    assert data["prices"] == PRICES and data["storage_price_gb_month"] == STORAGE_PRICE
    lines = {t["tenant"]: t for t in data["tenants"]}
    assert list(lines) == ["acme", "globex", "initech"]
    for tenant, exp in EXPECTED_COST.items():
        got = lines[tenant]
        assert got["jobs"] == exp["jobs"], tenant
        devices = {d["device"]: (d["device_seconds"], d["spent_no_adapter_seconds"]) for d in got["devices"]}
        assert devices == exp["devices"], tenant
        prices = {d["device"]: d["price_per_hour"] for d in got["devices"]}
        assert prices == {"cpu": CPU_P, H100: H100_P}
        assert {d["device"]: d["money"] for d in got["devices"]} == {
            dev: secs * (CPU_P if dev == "cpu" else H100_P) / H for dev, (secs, _) in exp["devices"].items()
        }
        assert got["money"] == exp["money"], tenant
        assert got["examples"] == exp["examples"], tenant
        assert (got["adapters"], got["adapter_bytes"], got["full_checkpoint_bytes"]) == (
            exp["adapters"],
            exp["adapter_bytes"],
            exp["full_bytes"],
        ), tenant
        assert got["storage_month"] == exp["adapter_bytes"] / GB * STORAGE_PRICE
        assert got["full_storage_month"] == exp["full_bytes"] / GB * STORAGE_PRICE
        assert got["cost_per_job"] == exp["money"] / exp["jobs"]["succeeded"]
        assert got["cost_per_1k_examples"] == exp["money"] / (exp["examples"] / 1000)
        assert (got["quality_money"], got["quality_gain_points"]) == (exp["quality_money"], exp["gain"]), (
            tenant
        )
        assert got["cost_per_quality_point"] == exp["quality_money"] / exp["gain"]
    total = data["total"]
    assert total["tenant"] is None
    assert total["jobs"] == {
        "queued": 1, "running": 1, "paused": 0, "succeeded": 12, "failed": 1, "cancelled": 1
    }
    assert total["money"] == (9000 * CPU_P + 16200 * H100_P) / H == 19.25
    assert {d["device"]: (d["device_seconds"], d["spent_no_adapter_seconds"]) for d in total["devices"]} == {
        "cpu": (9000.0, 1350.0),
        H100: (16200.0, 3600.0),
    }
    assert total["examples"] == sum(e["examples"] for e in EXPECTED_COST.values())
    assert total["cost_per_quality_point"] == (9.0 + 0.5 + 0.125) / (103.125 + 31.25 + 31.25)

    rec = _csv(report)
    assert float(rec[("device", "acme", "", "", "", H100, "spent_no_adapter_seconds")]) == 900.0
    assert float(rec[("device", "TOTAL", "", "", "", "cpu", "money")]) == 9000 * CPU_P / H
    assert float(rec[("tenant", "globex", "", "", "", "", "money")]) == 7.8125
    assert int(rec[("jobs", "initech", "", "", "", "", "cancelled")]) == 1
    assert int(rec[("tenant", "TOTAL", "", "", "", "", "full_checkpoint_bytes")]) == sum(
        e["full_bytes"] for e in EXPECTED_COST.values()
    )

    assert _md_rows(report, "Jobs by state") == [
        ["acme", "0", "0", "0", "3", "1", "0"],
        ["globex", "0", "0", "0", "5", "0", "0"],
        ["initech", "1", "1", "0", "4", "0", "1"],
        ["TOTAL", "1", "1", "0", "12", "1", "1"],
    ]
    devices = _md_rows(report, "Device-hours and money by device type")
    assert devices[1] == ["acme", H100, "2.2500", "0.2500", "$4.0000", "$9.0000"]  # 8100 s, 900 s lost
    assert devices[-1] == ["TOTAL", H100, "4.5000", "1.0000", "$4.0000", "$18.0000"]
    summary = _md_rows(report, "Money, storage and unit costs")
    # globex: 7.8125; 4 adapters 0.107 GB; full 0.84 GB; ×0.5; per job 7.8125/5; per 1k 7.8125/17; 0.5/31.25
    assert summary[1] == [
        "globex",
        "$7.8125",
        "4",
        "0.1070",
        "0.8400",
        "$0.0535",
        "$0.4200",
        "$1.5625",
        "$0.4596",
        "$0.0160",
    ]


def test_cost_prices_and_scope(reg) -> None:
    s, _ = reg
    # No price for cuda devices at all: their time is unpriced, not free.
    data = _json(cost_report(s, make_filters(tenants=["acme"]), {"cpu": 1.0}, 0.0))
    (acme,) = data["tenants"]
    assert acme["money"] == 900 * 1.0 / H
    assert acme["unpriced_device_seconds"] == 8100.0
    assert {d["device"]: d["money"] for d in acme["devices"]} == {"cpu": 0.25, H100: None}
    assert data["total"]["money"] == acme["money"]
    with pytest.raises(InvalidInput, match="price"):
        cost_report(s, make_filters(), {"cpu": -1.0}, 0.0)


# ---- compare ---------------------------------------------------------------------------------


def test_compare(reg) -> None:
    s, _ = reg
    report = compare_report(s, make_filters())
    data = _json(report)
    rows = {(r["task"], r["base_model"], r["label"]): r for r in data["rows"]}
    assert list(rows) == [
        ("cola", "minilm-l6", "lora r=8"),
        ("e2e", "smollm2-135m", "lora r=4"),
        ("mrpc", "minilm-l6", "lora r=8"),
        ("mrpc", "minilm-l6", "full"),
        ("sst2", "minilm-l6", "untuned base"),
        ("sst2", "minilm-l6", "lora r=8"),
        ("sst2", "minilm-l6", "lora r=16"),
        ("sst2", "minilm-l6", "full"),
    ]  # J4 failed, J10 cancelled, J11 queued, J12 running: no rows
    figures = (
        "n",
        "quality",
        "trainable_params",
        "trainable_fraction",
        "checkpoint_bytes",
        "device_seconds",
        "examples_per_second",
        "peak_memory_bytes",
    )

    def fig(key):
        return tuple(rows[key][f] for f in figures)

    # sst2 lora r=8: J1, J2, J13 -> medians of (0.875, 0.75, 0.8125), (1800, 1800, 900), (1e9, 1e9, 5e8);
    # examples/s of the successful attempts: 4000/1800, 4000/1800, 2000/900 (all equal).
    assert fig(("sst2", "minilm-l6", "lora r=8")) == (3, 0.8125, 100_000, 0.004, MB, 1800.0, 4000 / 1800, 1e9)
    assert fig(("sst2", "minilm-l6", "full")) == (
        1,
        0.90625,
        25_000_000,
        1.0,
        100 * MB,
        3600.0,
        4000 / 3600,
        4e9,
    )
    # mrpc full: the third attempt's usage (3600 s, 2000 examples), not the two lost ones.
    assert fig(("mrpc", "minilm-l6", "full")) == (
        1,
        0.78125,
        25_000_000,
        1.0,
        100 * MB,
        3600.0,
        2000 / 3600,
        4e9,
    )
    untuned = rows[("sst2", "minilm-l6", "untuned base")]
    assert (
        untuned["method"],
        untuned["quality"],
        untuned["majority_class_rate"],
        untuned["trainable_params"],
        untuned["checkpoint_bytes"],
        untuned["device_seconds"],
    ) == ("none", 0.5, 0.5, 0, None, None)

    r8 = rows[("sst2", "minilm-l6", "lora r=8")]
    assert (r8["size_ratio"], r8["time_ratio"], r8["memory_ratio"]) == (100.0, 2.0, 4.0)
    assert (r8["delta_vs_full"], r8["delta_vs_untuned"]) == ((0.8125 - 0.90625) * 100, (0.8125 - 0.5) * 100)
    r16 = rows[("sst2", "minilm-l6", "lora r=16")]
    assert (r16["size_ratio"], r16["time_ratio"], r16["memory_ratio"]) == (50.0, 1.0, 8.0)
    full = rows[("sst2", "minilm-l6", "full")]
    assert (full["size_ratio"], full["delta_vs_full"], full["delta_vs_untuned"]) == (
        None,
        None,
        (0.90625 - 0.5) * 100,
    )
    assert rows[("mrpc", "minilm-l6", "lora r=8")]["delta_vs_full"] == (0.7734375 - 0.78125) * 100
    assert rows[("mrpc", "minilm-l6", "lora r=8")]["delta_vs_untuned"] is None  # no mrpc baseline

    # The recommendation: within 1 pp of the best (mrpc: lora -0.78 pp) the smallest checkpoint wins;
    # on sst2 only full is within 1 pp of 90.6.
    assert (
        rows[("mrpc", "minilm-l6", "lora r=8")]["recommendation"]
        == "best trade-off — lora r=8: -0.8 pp vs full, 2.0× less device time, 100× smaller"
    )
    assert (
        r8["recommendation"]
        == "lora r=8: -9.4 pp vs full, 2.0× less device time, 100× smaller, +31.2 pp over untuned"
    )
    assert (
        full["recommendation"] == "best trade-off — full: the reference for the ratios, +40.6 pp over untuned"
    )
    assert untuned["recommendation"] == "untuned base: the floor training must beat; majority-class rate 50.0"

    rec = _csv(report)
    assert float(rec[("compare", "", "sst2", "lora", "8", "", "quality")]) == 0.8125
    assert float(rec[("compare", "", "sst2", "none", "", "", "majority_class_rate")]) == 0.5
    assert float(rec[("compare", "", "mrpc", "lora", "8", "", "size_ratio")]) == 100.0

    md = _md_rows(report, "Methods compared (per task and base model)")
    assert md[5] == [
        "sst2",
        "minilm-l6",
        "lora r=8",
        "3",
        "81.2",
        "100,000",
        "0.40%",
        "1.00",
        "1,800.0",
        "2.2",
        "1,000",
        "-",  # act MB: the fixture's usage predates it
        "-",  # s/step
        "100×",
        "2.0×",
        "4.0×",
        "-9.4",
        "+31.2",
    ]
    assert md[4][:5] == ["sst2", "minilm-l6", "untuned base", "1", "50.0"]


def test_compare_shows_what_gradient_checkpointing_trades(reg) -> None:
    """A run with gradient_checkpointing is its own row beside the same method and rank without
    it, with the medians of its activation memory and step time."""
    from orchestrator.registry.models import Adapter, Job, Metric, Usage

    s, ids = reg
    plain = s.get(Job, ids["J1"])
    for name, recomputes, activation, step in (("P", False, 800e6, 0.5), ("G1", True, 300e6, 0.6),
                                                ("G2", True, 500e6, 0.7), ("G3", True, 350e6, 0.65)):
        job = Job(tenant_id=plain.tenant_id, kind="train", state="succeeded", task="mrpc", method="lora",
                  rank=8, base_model="minilm-l6", gradient_checkpointing=recomputes,
                  spec={"task": "mrpc", "gradient_checkpointing": recomputes}, attempts=1, max_attempts=3,
                  created_at=T0)
        s.add(job)
        s.flush()
        s.add(Usage(job_id=job.id, tenant_id=job.tenant_id, attempt=1, device="cpu", device_seconds=90.0,
                    wall_seconds=91.0, peak_memory_bytes=int(2e9), examples=100, tokens=1000,
                    activation_memory_bytes=int(activation), step_seconds=step, created_at=T0))
        adapter = Adapter(tenant_id=job.tenant_id, job_id=job.id, path=f"/a/{name}", sha256="0" * 64,
                          bytes=1_000_000, trainable_params=100_000, total_params=25_000_000,
                          base_model="minilm-l6", task="mrpc", method="lora", rank=8, created_at=T0)
        s.add(adapter)
        s.flush()
        s.add(Metric(job_id=job.id, adapter_id=adapter.id, tenant_id=job.tenant_id, split="validation",
                     name="f1", value=0.8, created_at=T0))
    s.commit()
    data = _json(compare_report(s, make_filters()))
    rows = {(r["task"], r["label"]): r for r in data["rows"] if r["task"] == "mrpc"}
    assert list(rows) == [("mrpc", "lora r=8"), ("mrpc", "lora r=8 +grad ckpt"), ("mrpc", "full")]
    with_gc = rows[("mrpc", "lora r=8 +grad ckpt")]
    assert (with_gc["n"], with_gc["activation_memory_bytes"], with_gc["step_seconds"]) == (3, 350e6, 0.65)
    # The plain row: the fixture's J6 (no figures) and P: medians over the runs that have one.
    without = rows[("mrpc", "lora r=8")]
    assert (without["n"], without["activation_memory_bytes"], without["step_seconds"]) == (2, 800e6, 0.5)
    md = _md_rows(compare_report(s, make_filters()), "Methods compared (per task and base model)")
    gc_row = next(r for r in md if r[2] == "lora r=8 +grad ckpt")
    assert gc_row[11:13] == ["350", "0.65"]
    rec = _csv(compare_report(s, make_filters()))
    assert float(rec[("compare", "", "mrpc", "lora+grad_ckpt", "8", "", "activation_memory_bytes")]) == 350e6


# ---- CLI and files ---------------------------------------------------------------------------


@pytest.fixture
def cli_home(tmp_path, monkeypatch):
    """An embedded home whose registry holds the hand-made fixture."""
    from orchestrator.config import get_settings
    from orchestrator.registry import db

    home = tmp_path / "home"
    monkeypatch.setenv("LORAFLEET_HOME", str(home))
    for var in ("LORAFLEET_DATABASE_URL", "LORAFLEET_BROKER_URL", "LORAFLEET_ARTIFACTS", "LORAFLEET_PRICES"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("LORAFLEET_STORAGE_PRICE_GB_MONTH", str(STORAGE_PRICE))
    get_settings.cache_clear()
    url = get_settings().database_url
    db.upgrade(url)
    with db.session_factory(url)() as s:
        build_registry(s)
    yield home
    db.forget_engine(url)
    get_settings.cache_clear()


def _cli(*args: str):
    from click.testing import CliRunner

    from orchestrator.cli.main import cli

    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_cli_report_all_writes_every_format(cli_home, tmp_path) -> None:
    out = tmp_path / "reports"
    prices = [a for device, price in PRICES.items() for a in ("--price", f"{device}={price}")]
    result = _cli("report", "all", "--out", str(out), *prices)
    assert result.exit_code == 0, result.output
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(
        [f"{r}.{s}" for r in ("benchmark", "cost", "compare") for s in ("txt", "md", "csv", "json", "html")]
        + ["report.html"]
    )
    cost = json.loads((out / "cost.json").read_text())
    assert cost["total"]["money"] == 19.25 and cost["storage_price_gb_month"] == STORAGE_PRICE
    assert json.loads((out / "benchmark.json").read_text())["pick"] == "latest"
    # --json is --format json; --out writes the file and nothing half-written stays behind.
    result = _cli("report", "cost", "--json", "--tenant", "acme", *prices, "--out", str(tmp_path / "c.json"))
    assert result.exit_code == 0
    assert [t["tenant"] for t in json.loads((tmp_path / "c.json").read_text())["tenants"]] == ["acme"]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


@pytest.mark.parametrize(
    "args, message",
    [
        (("cost", "--price", "cuda"), "expected DEVICE=AMOUNT"),
        (("cost", "--price", "cuda=-2"), "expected DEVICE=AMOUNT"),
        (("cost", "--price", "=2"), "expected DEVICE=AMOUNT"),
        (("benchmark", "--pick", "worst"), "'worst' is not one of"),
        (("benchmark", "--since", "last week"), "not an ISO 8601 date"),
        (("compare", "--since", "2026-12-02", "--until", "2026-12-01"), "is not before"),
        (("benchmark", "--tenant", "nobody"), "no tenant 'nobody'"),
        (("benchmark", "--task", "sst3"), "unknown task 'sst3'"),
        (("cost", "--json", "--format", "md"), "disagree"),
    ],
)
def test_cli_bad_input_is_one_clear_error(cli_home, tmp_path, args, message) -> None:
    result = _cli("report", *args, "--out", str(tmp_path / "x"))
    assert result.exit_code != 0
    assert message in result.output + result.stderr
    assert "Traceback" not in result.output + result.stderr
    assert not (tmp_path / "x").exists()


def test_html_report_in_headless_chromium(cli_home, tmp_path) -> None:
    """The combined report.html in real Chromium: it loads, every chart has a size, no console errors."""
    from browser import open_page

    out = tmp_path / "reports"
    assert _cli("report", "all", "--out", str(out)).exit_code == 0
    page = open_page(out / "report.html")
    assert page.title == "lorafleet report"
    assert page.errors == []
    # benchmark: quality per task, training curves; cost: per tenant by device, quality vs cost;
    # compare: quality, size
    assert [i["alt"] for i in page.images] == [
        "Primary metric per task",
        "Training curves",
        "Cost per tenant by device type",
        "Quality vs cost",
        "Quality per task and method",
        "Checkpoint size per method (log scale)",
    ]
    assert all(i["complete"] and i["width"] > 0 and i["height"] > 0 for i in page.images), page.images
    assert page.screenshot.startswith(b"\x89PNG")
    (tmp_path / "report.png").write_bytes(page.screenshot)
