"""The cost report: per tenant and in total — jobs by state, device-hours and money per device
type (waste included), adapter storage against full checkpoints, unit costs — and one (money,
quality) point per adapter for the charts. Its model, its tables, its SQL and the service.

Each cost query groups once per (tenant[, device]) in a CTE and adds the report's total rows
(tenant NULL) in the same statement by grouping that CTE again (`_rollup`, UNION ALL): one scan
of the registry per query, and no GROUPING SETS (SQLite has none).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from sqlalchemy import Float, and_, case, cast, func, literal, null, select, union_all
from sqlalchemy.orm import Session
from sqlalchemy.sql import ColumnElement, Select

from orchestrator.errors import InvalidInput
from orchestrator.registry.models import JOB_STATES, Adapter, InferenceUsage, Job, Tenant, Usage
from orchestrator.reports.references import FRACTION_METRICS
from orchestrator.reports.scope import Filters, fetch_rows, join_primary_metric, prepare, scoped_jobs
from orchestrator.reports.tables import GB, Column, Table, record
from orchestrator.services._tx import readonly

# Every base model trains in float32 here (lora_engine loads them so), so a full checkpoint of a
# model with P parameters takes P × 4 bytes.
BASE_DTYPE = "float32"
BYTES_PER_PARAM = {"float32": 4, "bfloat16": 2, "float16": 2}
FULL_SIZE_RULE = (
    "full-checkpoint size = total_params × 4 bytes (float32, the dtype every base trains in) for "
    "adapter jobs; the measured checkpoint size for full fine-tuning jobs"
)
j, a, u, iu, tn = (x.__table__ for x in (Job, Adapter, Usage, InferenceUsage, Tenant))


# ---- model -----------------------------------------------------------------------------------


@dataclass
class DeviceCost:
    device: str
    price_per_hour: float | None  # None: no configured price matches this device
    device_seconds: float
    spent_no_adapter_seconds: float  # failed, cancelled or repeated attempts
    money: float | None

    @property
    def device_hours(self) -> float:
        return self.device_seconds / 3600.0

    @property
    def spent_no_adapter_hours(self) -> float:
        return self.spent_no_adapter_seconds / 3600.0

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["device_hours"] = self.device_hours
        out["spent_no_adapter_hours"] = self.spent_no_adapter_hours
        return out


@dataclass
class CostLine:
    """One tenant's cost (tenant None: the total over the report's tenants)."""

    tenant: str | None
    jobs: dict[str, int]  # by state, every state
    devices: list[DeviceCost]
    money: float
    unpriced_seconds: float
    examples: int
    adapters: int
    adapter_bytes: int
    full_checkpoint_bytes: int
    quality_money: float | None = None  # money of the jobs with an untuned baseline
    quality_gain_points: float | None = None  # their summed gain over it (points)

    def name(self) -> str:
        return self.tenant if self.tenant is not None else "TOTAL"

    @property
    def succeeded(self) -> int:
        return self.jobs.get("succeeded", 0)

    @property
    def cost_per_job(self) -> float | None:
        return self.money / self.succeeded if self.succeeded else None

    @property
    def cost_per_1k_examples(self) -> float | None:
        return self.money / (self.examples / 1000.0) if self.examples else None

    @property
    def cost_per_quality_point(self) -> float | None:
        if self.quality_money is None or not self.quality_gain_points or self.quality_gain_points <= 0:
            return None
        return self.quality_money / self.quality_gain_points

    def storage_month(self, price_gb_month: float) -> float:
        return self.adapter_bytes / GB * price_gb_month

    def full_storage_month(self, price_gb_month: float) -> float:
        return self.full_checkpoint_bytes / GB * price_gb_month

    def to_dict(self, price_gb_month: float) -> dict[str, Any]:
        return {
            "tenant": self.tenant,
            "jobs": dict(self.jobs),
            "devices": [d.to_dict() for d in self.devices],
            "device_seconds": sum(d.device_seconds for d in self.devices),
            "spent_no_adapter_seconds": sum(d.spent_no_adapter_seconds for d in self.devices),
            "money": self.money,
            "unpriced_device_seconds": self.unpriced_seconds,
            "examples": self.examples,
            "adapters": self.adapters,
            "adapter_bytes": self.adapter_bytes,
            "full_checkpoint_bytes": self.full_checkpoint_bytes,
            "storage_month": self.storage_month(price_gb_month),
            "full_storage_month": self.full_storage_month(price_gb_month),
            "cost_per_job": self.cost_per_job,
            "cost_per_1k_examples": self.cost_per_1k_examples,
            "quality_money": self.quality_money,
            "quality_gain_points": self.quality_gain_points,
            "cost_per_quality_point": self.cost_per_quality_point,
        }


@dataclass
class AdapterPoint:
    """One adapter for the quality-vs-cost chart: its job's money and its primary metric."""

    tenant: str
    task: str
    method: str
    rank: int
    money: float
    quality: float | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class InferenceLine:
    """One tenant's use of the inference server (`lorafleet serve`); tenant None: the total."""

    tenant: str | None
    requests: int
    prompt_tokens: int
    completion_tokens: int
    device_seconds: float
    money: float
    unpriced_seconds: float

    def name(self) -> str:
        return self.tenant if self.tenant is not None else "TOTAL"

    @property
    def cost_per_1k_tokens(self) -> float | None:
        tokens = self.prompt_tokens + self.completion_tokens
        return self.money / (tokens / 1000.0) if tokens else None

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "cost_per_1k_tokens": self.cost_per_1k_tokens}


INFERENCE_FIELDS = ("requests", "prompt_tokens", "completion_tokens", "device_seconds", "money",
                    "cost_per_1k_tokens")


@dataclass
class CostReport:
    filters: Filters
    prices: dict[str, float]
    storage_price_gb_month: float
    tenants: list[CostLine]
    total: CostLine
    points: list[AdapterPoint] = field(default_factory=list)  # filled only for charts
    inference: list[InferenceLine] = field(default_factory=list)  # per tenant, then the total

    def to_dict(self) -> dict[str, Any]:
        p = self.storage_price_gb_month
        return {
            "report": "cost",
            "filters": self.filters.to_dict(),
            "prices": dict(sorted(self.prices.items())),
            "storage_price_gb_month": p,
            "full_size_rule": FULL_SIZE_RULE,
            "tenants": [t.to_dict(p) for t in self.tenants],
            "total": self.total.to_dict(p),
            "inference": [line.to_dict() for line in self.inference],
        }

    def records(self) -> list[dict[str, Any]]:
        out = []
        p = self.storage_price_gb_month
        for line in [*self.tenants, self.total]:
            tenant = line.name()
            d = line.to_dict(p)
            for state, n in d["jobs"].items():
                out.append(record("jobs", state, n, tenant=tenant))
            for dev in line.devices:
                for name in ("device_seconds", "spent_no_adapter_seconds", "price_per_hour", "money"):
                    out.append(record("device", name, getattr(dev, name), tenant=tenant, device=dev.device))
            for name in (
                "money",
                "unpriced_device_seconds",
                "examples",
                "adapters",
                "adapter_bytes",
                "full_checkpoint_bytes",
                "storage_month",
                "full_storage_month",
                "cost_per_job",
                "cost_per_1k_examples",
                "cost_per_quality_point",
            ):
                out.append(record("tenant", name, d[name], tenant=tenant))
        for inference in self.inference:
            d = inference.to_dict()
            for name in INFERENCE_FIELDS:
                out.append(record("inference", name, d[name], tenant=inference.name()))
        return out

    def tables(self) -> list[Table[Any]]:
        p = self.storage_price_gb_month
        lines = [*self.tenants, self.total]
        jobs = Table(
            "cost_jobs",
            "Jobs by state",
            [Column("tenant", CostLine.name, "name"),
             *(Column(s, lambda t, s=s: t.jobs.get(s, 0), "int") for s in JOB_STATES)],
            lines,
        )
        prices = ", ".join(f"{k}={v:g}" for k, v in sorted(self.prices.items()))
        device_columns: list[Column[tuple[CostLine, DeviceCost]]] = [
            Column("tenant", lambda td: td[0].name(), "name"),
            Column("device", lambda td: td[1].device, "name"),
            Column("device-h", lambda td: td[1].device_hours, "hours"),
            Column("of which spent, no adapter", lambda td: td[1].spent_no_adapter_hours, "hours"),
            Column("price/h", lambda td: td[1].price_per_hour, "money"),
            Column("money", lambda td: td[1].money, "money"),
        ]
        devices = Table(
            "cost_devices",
            "Device-hours and money by device type",
            device_columns,
            [(t, d) for t in lines for d in t.devices],
            [
                f"Prices per device-hour (longest prefix of the device name wins): {prices}.",
                "'Spent, no adapter': attempts that failed, were cancelled or were repeated after a lost "
                "lease; included in the money.",
            ],
        )
        summary_columns: list[Column[CostLine]] = [
            Column("tenant", CostLine.name, "name"),
            Column("money", lambda t: t.money, "money"),
            Column("adapters", lambda t: t.adapters, "int"),
            Column("adapter GB", lambda t: t.adapter_bytes, "gb"),
            Column("full ckpt GB", lambda t: t.full_checkpoint_bytes, "gb"),
            Column("storage/month", lambda t: t.storage_month(p), "money"),
            Column("full storage/month", lambda t: t.full_storage_month(p), "money"),
            Column("per job", lambda t: t.cost_per_job, "money"),
            Column("per 1k examples", lambda t: t.cost_per_1k_examples, "money"),
            Column("per quality pt", lambda t: t.cost_per_quality_point, "money"),
        ]
        summary = Table(
            "cost_summary",
            "Money, storage and unit costs",
            summary_columns,
            lines,
            [
                f"Storage at {p:g} per GB-month; {FULL_SIZE_RULE}.",
                "Per job: money ÷ succeeded jobs (waste included). Per 1k examples: money ÷ examples "
                "trained in every attempt × 1000. Per quality point: money of the adapter jobs whose task "
                "and base have an untuned baseline ÷ their summed gain of the primary metric over it (pp).",
            ],
        )
        if any(t.unpriced_seconds for t in lines):
            summary.notes.append("Some device time matched no price and is left out of the money.")
        jobs.keep_last = summary.keep_last = 1  # the TOTAL row
        devices.keep_last = len(self.total.devices)
        inference = Table(
            "cost_inference",
            "Inference (lorafleet serve)",
            [Column("tenant", InferenceLine.name, "name"),
             Column("requests", lambda t: t.requests, "int"),
             Column("tokens in", lambda t: t.prompt_tokens, "int"),
             Column("tokens out", lambda t: t.completion_tokens, "int"),
             Column("device-h", lambda t: t.device_seconds / 3600.0, "hours"),
             Column("money", lambda t: t.money, "money"),
             Column("per 1k tokens", lambda t: t.cost_per_1k_tokens, "money"),
             ],
            self.inference,
            ["Requests served, within the report's tenants, base model, task (of the adapter) and "
             "dates; a shared forward pass's device time is split between its requests by tokens, "
             "priced as training's."],
        )
        inference.keep_last = 1
        return [jobs, devices, summary, inference] if self.inference else [jobs, devices, summary]


# ---- SQL -------------------------------------------------------------------------------------


def points_scale(metric_col: ColumnElement[Any]) -> ColumnElement[float]:
    """100 for a fraction metric (a point is 0.01 of it), 1 otherwise."""
    return case((metric_col.in_(sorted(FRACTION_METRICS)), 100.0), else_=1.0)


def price_per_hour(device_col: ColumnElement[Any], prices: Mapping[str, float]) -> ColumnElement[Any]:
    """The configured price of a device: the longest matching prefix wins ("cuda" prices every
    "cuda:NVIDIA H100 ..."); NULL when none matches."""
    whens = [
        (device_col.startswith(prefix, autoescape=True), literal(float(price), Float))
        for prefix, price in sorted(prices.items(), key=lambda kv: (-len(kv[0]), kv[0]))
    ]
    return case(*whens, else_=null()) if whens else cast(null(), Float)


def _rollup(per: Any, keys: list[str], sums: list[str], *, over_keys: bool = False) -> Select[Any]:
    """`per` (grouped by tenant and `keys`) plus its totals, as NULLs in the grouping columns:
    tenant NULL = over the report's tenants; with `over_keys`, also the keys NULL = over them."""

    def level(tenant: bool, keep_keys: bool) -> Select[Any]:
        group = ([per.c.tenant] if tenant else []) + ([per.c[k] for k in keys] if keep_keys else [])
        cols = [per.c.tenant if tenant else literal(None).label("tenant")]
        cols += [per.c[k] if keep_keys else literal(None).label(k) for k in keys]
        stmt = select(*cols, *(func.sum(per.c[name]).label(name) for name in sums))
        return stmt.group_by(*group) if group else stmt

    levels = [
        select(per.c.tenant, *(per.c[k] for k in keys), *(per.c[name] for name in sums)),
        level(False, True),
    ]
    if over_keys and keys:
        levels += [level(True, False), level(False, False)]
    return union_all(*levels)


def cost_jobs_by_state(f: Filters) -> Select[Any]:
    """(tenant, state, n) per tenant, then (NULL, state, n) for the total."""
    sj = scoped_jobs(f)
    per = (
        select(sj.c.tenant, sj.c.state, func.count().label("n"))
        .group_by(sj.c.tenant, sj.c.state)
        .cte("jobs_by_state")
    )
    return _rollup(per, ["state"], ["n"])


def cost_by_device(f: Filters, prices: Mapping[str, float]) -> Select[Any]:
    """Per (tenant, device): device-seconds, the part spent with no adapter, money × 3600,
    device-seconds without a price, examples trained; then the same summed per device over the
    tenants (tenant NULL), per tenant over its devices (device NULL), and in all (both NULL)."""
    sj = scoped_jobs(f)
    bl = baselines()
    productive = and_(sj.c.state == "succeeded", u.c.attempt == sj.c.attempts)
    price = price_per_hour(u.c.device, prices)
    # Money of the succeeded training jobs whose task and base have an untuned baseline (the
    # numerator of "cost per quality point"; cost_quality sums their gains).
    with_baseline = and_(bl.c.value.is_not(None), sj.c.kind == "train", sj.c.state == "succeeded")
    per = (
        select(
            sj.c.tenant,
            u.c.device,
            price.label("price"),
            func.sum(u.c.device_seconds).label("device_seconds"),
            func.sum(case((productive, 0.0), else_=u.c.device_seconds)).label("wasted_seconds"),
            func.sum(u.c.device_seconds * price).label("money_seconds"),
            func.sum(case((price.is_(None), u.c.device_seconds), else_=0.0)).label("unpriced_seconds"),
            func.sum(u.c.examples).label("examples"),
            func.sum(case((with_baseline, u.c.device_seconds * price))).label("baseline_money_seconds"),
        )
        .select_from(u.join(sj, sj.c.job_id == u.c.job_id))
        .outerjoin(bl, and_(bl.c.task == sj.c.task, bl.c.base_model == sj.c.base_model))
        .group_by(sj.c.tenant, u.c.device, price)  # the price is the device's: no finer groups
        .cte("cost_by_device")
    )
    sums = [
        "device_seconds",
        "wasted_seconds",
        "money_seconds",
        "unpriced_seconds",
        "examples",
        "baseline_money_seconds",
    ]
    return _rollup(per, ["device", "price"], sums, over_keys=True)


def cost_storage(f: Filters) -> Select[Any]:
    """Live adapters of the report's jobs: count, bytes, and what full checkpoints would take."""
    sj = scoped_jobs(f)
    full_bytes = case((a.c.method == "full", a.c.bytes), else_=a.c.total_params * BYTES_PER_PARAM[BASE_DTYPE])
    per = (
        select(
            sj.c.tenant,
            func.count().label("adapters"),
            func.sum(a.c.bytes).label("adapter_bytes"),
            func.sum(full_bytes).label("full_bytes"),
        )
        .select_from(a.join(sj, sj.c.job_id == a.c.job_id))
        .where(a.c.deleted_at.is_(None))
        .group_by(sj.c.tenant)
        .cte("cost_storage")
    )
    return _rollup(per, [], ["adapters", "adapter_bytes", "full_bytes"])


def cost_inference(f: Filters, prices: Mapping[str, float]) -> Select[Any]:
    """What the inference server served per tenant (slug), then the total."""
    price = price_per_hour(iu.c.device, prices)
    stmt = (
        select(
            tn.c.slug.label("tenant"),
            func.sum(iu.c.requests).label("requests"),
            func.sum(iu.c.prompt_tokens).label("prompt_tokens"),
            func.sum(iu.c.completion_tokens).label("completion_tokens"),
            func.sum(iu.c.device_seconds).label("device_seconds"),
            func.sum(iu.c.device_seconds * price).label("money_seconds"),
            func.sum(case((price.is_(None), iu.c.device_seconds), else_=0.0)).label("unpriced_seconds"),
        )
        .select_from(iu.join(tn, tn.c.id == iu.c.tenant_id))
        .group_by(tn.c.slug)
    )
    if f.tenants:
        stmt = stmt.where(tn.c.slug.in_(f.tenants))
    if f.task is not None:
        stmt = stmt.where(iu.c.adapter_id.in_(select(a.c.id).where(a.c.task == f.task)))
    if f.base_model is not None:
        stmt = stmt.where(iu.c.base_model == f.base_model)
    if f.since is not None:
        stmt = stmt.where(iu.c.created_at >= f.since)
    if f.until is not None:
        stmt = stmt.where(iu.c.created_at < f.until)
    sums = ["requests", "prompt_tokens", "completion_tokens", "device_seconds", "money_seconds",
            "unpriced_seconds"]
    return _rollup(stmt.cte("cost_inference"), [], sums)


def baselines() -> Any:
    """Per (task, base model): the primary metric of the latest succeeded untuned-baseline job."""
    pm = join_primary_metric(j, j.c.id, j.c.task, outer=False)
    r = pm.row
    ranked = (
        select(
            j.c.task,
            j.c.base_model,
            r.c.value,
            func.row_number()
            .over(partition_by=(j.c.task, j.c.base_model), order_by=(r.c.created_at.desc(), r.c.id.desc()))
            .label("rn"),
        )
        .select_from(pm.from_)
        .where(
            j.c.kind == "evaluate",
            j.c.method == "none",
            j.c.state == "succeeded",
            r.c.adapter_id.is_(None),
        )
        .subquery("ranked_baselines")
    )
    return (
        select(ranked.c.task, ranked.c.base_model, ranked.c.value)
        .where(ranked.c.rn == 1)
        .subquery("baselines")
    )


def _job_money(prices: Mapping[str, float]) -> Any:
    """Money × 3600 per job over all its attempts. Straight from `usage` (the caller's join to its
    jobs scopes it): a second reference to the scoped-jobs CTE would make PostgreSQL materialise
    it, and a join between materialised CTEs has no index and a poor row estimate."""
    return (
        select(
            u.c.job_id,
            func.sum(u.c.device_seconds * price_per_hour(u.c.device, prices)).label("money_seconds"),
        )
        .group_by(u.c.job_id)
        .subquery("job_money")
    )


def cost_quality(f: Filters) -> Select[Any]:
    """Per tenant, then the total: the summed gain (points) of the primary metric of succeeded
    training jobs over the untuned baseline of their task and base (the denominator of "cost per
    quality point"; the money is cost_by_device's baseline_money_seconds)."""
    sj = scoped_jobs(f, kinds=("train",))
    bl = baselines()
    pm = join_primary_metric(
        sj.join(bl, and_(bl.c.task == sj.c.task, bl.c.base_model == sj.c.base_model)),
        sj.c.job_id,
        sj.c.task,
        outer=False,
    )
    per = (
        select(sj.c.tenant, func.sum((pm.value - bl.c.value) * points_scale(pm.metric)).label("gain_points"))
        .select_from(pm.from_)
        .where(sj.c.state == "succeeded")
        .group_by(sj.c.tenant)
        .cte("cost_quality")
    )
    return _rollup(per, [], ["gain_points"])


def adapter_points(f: Filters, prices: Mapping[str, float]) -> Select[Any]:
    """One row per live adapter: its job's money × 3600 (every attempt) and its primary metric."""
    sj = scoped_jobs(f, kinds=("train",))
    jm = _job_money(prices)
    pm = join_primary_metric(
        sj.join(a, a.c.job_id == sj.c.job_id).join(jm, jm.c.job_id == sj.c.job_id), sj.c.job_id, sj.c.task
    )
    return (
        select(
            sj.c.tenant, sj.c.task, sj.c.method, sj.c.rank, jm.c.money_seconds, pm.value.label("quality")
        )
        .select_from(pm.from_)
        .where(a.c.deleted_at.is_(None))
        .order_by(sj.c.tenant, sj.c.task, a.c.created_at)
    )


# ---- the service -----------------------------------------------------------------------------


def check_prices(prices: Mapping[str, float]) -> dict[str, float]:
    out = {}
    for device, price in prices.items():
        if not device or price < 0:
            raise InvalidInput(f"price {device!r}={price}: need a device prefix and a price >= 0")
        out[device] = float(price)
    return out


def _by_tenant(rows: list[dict[str, Any]]) -> dict[str | None, dict[str, Any]]:
    return {r["tenant"]: r for r in rows}


@readonly
def cost_report(
    session: Session,
    filters: Filters,
    prices: Mapping[str, float],
    storage_price_gb_month: float,
    *,
    with_points: bool = False,
) -> CostReport:
    """Per tenant and in total. `with_points`: also one (money, quality) point per adapter (charts).

    Every figure is a SQL aggregate: each query returns its per-tenant rows and, as rows with a
    NULL tenant, the same aggregated over the report's tenants (see `_rollup`).
    """
    prices = check_prices(prices)
    if storage_price_gb_month < 0:
        raise InvalidInput(f"storage price {storage_price_gb_month} per GB-month: must be >= 0")
    prepare(session, filters)
    jobs: dict[str | None, dict[str, int]] = {}
    for r in fetch_rows(session, cost_jobs_by_state(filters)):
        jobs.setdefault(r["tenant"], {})[r["state"]] = int(r["n"])
    devices: dict[str | None, list[DeviceCost]] = {}
    usage: dict[str | None, dict[str, Any]] = {}
    for r in fetch_rows(session, cost_by_device(filters, prices)):
        if r["device"] is None:  # the tenant's (or the total's) sum over its devices
            usage[r["tenant"]] = r
            continue
        devices.setdefault(r["tenant"], []).append(
            DeviceCost(
                device=r["device"],
                price_per_hour=r["price"],
                device_seconds=float(r["device_seconds"]),
                spent_no_adapter_seconds=float(r["wasted_seconds"]),
                money=None if r["money_seconds"] is None else float(r["money_seconds"]) / 3600.0,
            )
        )
    storage = _by_tenant(fetch_rows(session, cost_storage(filters)))
    quality = _by_tenant(fetch_rows(session, cost_quality(filters)))

    def line(tenant: str | None) -> CostLine:
        use, store, gain = usage.get(tenant, {}), storage.get(tenant, {}), quality.get(tenant, {})
        return CostLine(
            tenant=tenant,
            jobs={s: jobs.get(tenant, {}).get(s, 0) for s in JOB_STATES},
            devices=sorted(devices.get(tenant, []), key=lambda d: d.device),
            money=float(use.get("money_seconds") or 0.0) / 3600.0,
            unpriced_seconds=float(use.get("unpriced_seconds") or 0.0),
            examples=int(use.get("examples") or 0),
            adapters=int(store.get("adapters") or 0),
            adapter_bytes=int(store.get("adapter_bytes") or 0),
            full_checkpoint_bytes=int(store.get("full_bytes") or 0),
            quality_money=None
            if use.get("baseline_money_seconds") is None
            else float(use["baseline_money_seconds"]) / 3600.0,
            quality_gain_points=gain.get("gain_points"),
        )

    names = sorted({t for t in jobs if t is not None} | set(filters.tenants))
    points_ = []
    if with_points:
        points_ = [
            AdapterPoint(
                tenant=r["tenant"],
                task=r["task"],
                method=r["method"],
                rank=r["rank"],
                money=float(r["money_seconds"] or 0.0) / 3600.0,
                quality=r["quality"],
            )
            for r in fetch_rows(session, adapter_points(filters, prices))
        ]
    inference = sorted(fetch_rows(session, cost_inference(filters, prices)),
                       key=lambda r: (r["tenant"] is None, r["tenant"] or ""))
    served = [InferenceLine(r["tenant"], int(r["requests"] or 0), int(r["prompt_tokens"] or 0),
                            int(r["completion_tokens"] or 0), float(r["device_seconds"] or 0.0),
                            float(r["money_seconds"] or 0.0) / 3600.0, float(r["unpriced_seconds"] or 0.0))
              for r in inference if r["requests"]]
    return CostReport(
        inference=served,
        filters=filters,
        prices=prices,
        storage_price_gb_month=storage_price_gb_month,
        tenants=[line(n) for n in names],
        total=line(None),
        points=points_,
    )
