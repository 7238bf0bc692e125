"""A small hand-made registry for the report tests: 3 tenants, 16 jobs, two device types.

Every figure is chosen so the expected numbers can be worked out by hand (and are exact in
floating point: dyadic metric values, device-seconds in multiples of 450 s, prices 0.5 / 4.0).

| job | tenant | task | kind | method r | state | attempts: device seconds (p = the productive one) |
|---|---|---|---|---|---|---|
| J3 | acme | sst2 | train | full | succeeded | 1: H100 3600 p |
| J1 | acme | sst2 | train | lora 8 | succeeded | 1: H100 1800 p |
| J2 | acme | sst2 | train | lora 8 | succeeded | 1: H100 900 (lease lost), 2: H100 1800 p |
| J4 | acme | mrpc | train | lora 8 | failed | 1: cpu 900 |
| J8 | globex | sst2 | evaluate | none 0 | succeeded | 1: cpu 450 p  (the untuned baseline, acc 0.5) |
| J5 | globex | sst2 | train | lora 16 | succeeded | 1: cpu 3600 p |
| J6 | globex | mrpc | train | lora 8 | succeeded | 1: cpu 1800 p |
| J7 | globex | mrpc | train | full | succeeded | 1: H100 900, 2: H100 900, 3: H100 3600 p |
| J15 | globex | e2e | train | lora 4 | succeeded | 1: H100 900 p  (smollm2-135m) |
| J9 | initech | cola | train | lora 8 | succeeded | 1: H100 900 p |
| J10 | initech | rte | train | lora 4 | cancelled | 1: cpu 450 |
| J11 | initech | sst2 | train | lora 8 | queued | - |
| J12 | initech | stsb | train | dora 8 | running | 1: H100 900 (lease lost); attempt 2 running |
| J13 | initech | sst2 | train | lora 8 | succeeded | 1: cpu 900 p |
| J16 | initech | sst2 | reevaluate | lora 8 | succeeded | 1: cpu 450 p  (re-scores J13's adapter: 0.5) |
| J14 | initech | sst2 | reevaluate | lora 8 | succeeded | 1: cpu 450 p  (re-scores it later: 0.78125) |

Training curves (metric history, CURVES): J2 (acme's latest sst2 pick) 400 loss steps, value
(400 - step) / 4 at epoch step / 128, and held-out accuracy 0.5, 0.75 at steps 200, 400 (plus a
held-out MCC, not sst2's metric); J9 4 loss steps 1, 0.5, 0.25, 0.125; J1 (not picked) 2 steps.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from orchestrator.registry.models import Adapter, Job, Metric, MetricPoint, Tenant, Usage

T0 = datetime(2026, 11, 1, tzinfo=UTC)
H100 = "cuda:NVIDIA H100 80GB HBM3"
CPU = "cpu"
# Longest prefix wins: the H100 costs 4.0, not the generic "cuda" 2.0.
PRICES = {"cpu": 0.5, "cuda": 2.0, "cuda:NVIDIA H100": 4.0}
STORAGE_PRICE = 0.5
MINILM = "minilm-l6"
SMOLLM = "smollm2-135m"
MINILM_PARAMS = 25_000_000
SMOLLM_PARAMS = 135_000_000

# name: (tenant, task, kind, method, rank, state, base, [(device, seconds, examples, peak)],
#        adapter (bytes, trainable, total) or None, {metric: value})
JOBS = {
    "J3": (
        "acme",
        "sst2",
        "train",
        "full",
        8,
        "succeeded",
        MINILM,
        [(H100, 3600, 4000, 4e9)],
        (100_000_000, MINILM_PARAMS, MINILM_PARAMS),
        {"accuracy": 0.90625},
    ),
    "J1": (
        "acme",
        "sst2",
        "train",
        "lora",
        8,
        "succeeded",
        MINILM,
        [(H100, 1800, 4000, 1e9)],
        (1_000_000, 100_000, MINILM_PARAMS),
        {"accuracy": 0.875},
    ),
    "J2": (
        "acme",
        "sst2",
        "train",
        "lora",
        8,
        "succeeded",
        MINILM,
        [(H100, 900, 1000, 1e9), (H100, 1800, 4000, 1e9)],
        (1_000_000, 100_000, MINILM_PARAMS),
        {"accuracy": 0.75},
    ),
    "J4": ("acme", "mrpc", "train", "lora", 8, "failed", MINILM, [(CPU, 900, 500, None)], None, {}),
    "J8": (
        "globex",
        "sst2",
        "evaluate",
        "none",
        0,
        "succeeded",
        MINILM,
        [(CPU, 450, 0, 5e8)],
        None,
        {"accuracy": 0.5, "majority_class_rate": 0.5},
    ),
    "J5": (
        "globex",
        "sst2",
        "train",
        "lora",
        16,
        "succeeded",
        MINILM,
        [(CPU, 3600, 8000, 5e8)],
        (2_000_000, 200_000, MINILM_PARAMS),
        {"accuracy": 0.8125},
    ),
    "J6": (
        "globex",
        "mrpc",
        "train",
        "lora",
        8,
        "succeeded",
        MINILM,
        [(CPU, 1800, 2000, 5e8)],
        (1_000_000, 100_000, MINILM_PARAMS),
        {"accuracy": 0.7734375, "f1": 0.8125},
    ),
    "J7": (
        "globex",
        "mrpc",
        "train",
        "full",
        8,
        "succeeded",
        MINILM,
        [(H100, 900, 2000, 4e9), (H100, 900, 2000, 4e9), (H100, 3600, 2000, 4e9)],
        (100_000_000, MINILM_PARAMS, MINILM_PARAMS),
        {"accuracy": 0.78125, "f1": 0.84375},
    ),
    "J15": (
        "globex",
        "e2e",
        "train",
        "lora",
        4,
        "succeeded",
        SMOLLM,
        [(H100, 900, 1000, 2e9)],
        (4_000_000, 400_000, SMOLLM_PARAMS),
        {"bleu": 0.625, "nist": 8.5, "meteor": 0.4375, "rouge_l": 0.6875, "cider": 2.25},
    ),
    "J9": (
        "initech",
        "cola",
        "train",
        "lora",
        8,
        "succeeded",
        MINILM,
        [(H100, 900, 1000, 1e9)],
        (500_000, 50_000, MINILM_PARAMS),
        {"matthews_corr": 0.25},
    ),
    "J10": ("initech", "rte", "train", "lora", 4, "cancelled", MINILM, [(CPU, 450, 100, None)], None, {}),
    "J11": ("initech", "sst2", "train", "lora", 8, "queued", MINILM, [], None, {}),
    "J12": ("initech", "stsb", "train", "dora", 8, "running", MINILM, [(H100, 900, 500, 1e9)], None, {}),
    "J13": (
        "initech",
        "sst2",
        "train",
        "lora",
        8,
        "succeeded",
        MINILM,
        [(CPU, 900, 2000, 5e8)],
        (1_000_000, 100_000, MINILM_PARAMS),
        {"accuracy": 0.8125},
    ),
    "J16": ("initech", "sst2", "reevaluate", "lora", 8, "succeeded", MINILM, [(CPU, 450, 0, 5e8)], None, {}),
    "J14": ("initech", "sst2", "reevaluate", "lora", 8, "succeeded", MINILM, [(CPU, 450, 0, 5e8)], None, {}),
}
# {job: {series: [(step, epoch, value)]}}
CURVES = {
    "J2": {"loss": [(s, s / 128, (400 - s) / 4) for s in range(1, 401)],
           "holdout/accuracy": [(200, 200 / 128, 0.5), (400, 400 / 128, 0.75)],
           "holdout/matthews_corr": [(200, 200 / 128, 0.25)]},
    "J9": {"loss": [(1, 0.25, 1.0), (2, 0.5, 0.5), (3, 0.75, 0.25), (4, 1.0, 0.125)]},
    "J1": {"loss": [(1, 0.5, 2.0), (2, 1.0, 1.0)]},
}
# Re-evaluations of J13's adapter: J16's older one, then J14's, the latest (the one the report shows).
REEVALUATIONS = [("J16", T0 + timedelta(days=2), 0.5), ("J14", T0 + timedelta(days=3), 0.78125)]


def build_registry(session) -> dict[str, str]:
    """Insert the table above; returns {job name: job id} and {job name + '.adapter': adapter id}."""
    tenants = {}
    for slug in ("acme", "globex", "initech"):
        tenants[slug] = Tenant(slug=slug, name=slug.title(), max_running=2)
        session.add(tenants[slug])
    session.flush()
    ids: dict[str, str] = {}
    for i, (name, (tenant, task, kind, method, rank, state, base, attempts, adapter, metrics)) in enumerate(
        JOBS.items()
    ):
        created = T0 + timedelta(hours=i)
        n_attempts = len(attempts) + (1 if state == "running" else 0)
        job = Job(
            tenant_id=tenants[tenant].id,
            kind=kind,
            state=state,
            task=task,
            method=method,
            rank=rank,
            base_model=base,
            spec={"task": task, "method": method, "rank": rank, "base_model": base},
            attempts=n_attempts,
            max_attempts=3,
            created_at=created,
        )
        session.add(job)
        session.flush()
        ids[name] = job.id
        for n, (device, seconds, examples, peak) in enumerate(attempts, start=1):
            session.add(
                Usage(
                    job_id=job.id,
                    tenant_id=job.tenant_id,
                    attempt=n,
                    device=device,
                    device_seconds=float(seconds),
                    wall_seconds=float(seconds) + 1.0,
                    peak_memory_bytes=None if peak is None else int(peak),
                    examples=examples,
                    tokens=examples * 10,
                    created_at=created,
                )
            )
        adapter_id = None
        if adapter is not None:
            size, trainable, total = adapter
            row = Adapter(
                tenant_id=job.tenant_id,
                job_id=job.id,
                path=f"/a/{name}",
                sha256="0" * 64,
                bytes=size,
                trainable_params=trainable,
                total_params=total,
                base_model=base,
                task=task,
                method=method,
                rank=rank,
                created_at=created + timedelta(minutes=30),
            )
            session.add(row)
            session.flush()
            adapter_id = ids[name + ".adapter"] = row.id
        for metric, value in metrics.items():
            session.add(
                Metric(
                    job_id=job.id,
                    adapter_id=adapter_id,
                    tenant_id=job.tenant_id,
                    split="validation",
                    name=metric,
                    value=value,
                    source="job",
                    created_at=created,
                )
            )
        # A train-split figure must never be read as quality.
        if adapter_id is not None:
            session.add(
                Metric(
                    job_id=job.id,
                    adapter_id=adapter_id,
                    tenant_id=job.tenant_id,
                    split="train",
                    name="loss",
                    value=0.125,
                    source="job",
                    created_at=created,
                )
            )
    session.flush()
    for job_name, curves in CURVES.items():
        job = session.get(Job, ids[job_name])
        for series, pts in curves.items():
            session.add_all(MetricPoint(job_id=job.id, tenant_id=job.tenant_id, name=series, step=step,
                                        epoch=epoch, value=value) for step, epoch, value in pts)
    for job_name, when, value in REEVALUATIONS:
        session.add(
            Metric(
                job_id=ids[job_name],
                adapter_id=ids["J13.adapter"],
                tenant_id=tenants["initech"].id,
                split="validation",
                name="accuracy",
                value=value,
                source="reevaluation",
                created_at=when,
            )
        )
    session.commit()
    return ids
