"""The registry's tables: typed SQLAlchemy 2 models on one declarative base.

Conventions (they keep SQLite and PostgreSQL identical and migrations reviewable):
- ids are UUID strings (`String(36)`): portable, printable, and what the CLI and JSON carry;
- every timestamp is a tz-aware UTC datetime (`UTCDateTime`: SQLite stores none, so the zone
  is re-attached on read, and a naive datetime is refused on write);
- every tenant-owned row has a non-null, indexed `tenant_id`;
- constraints are named by one convention, so Alembic can drop and compare them by name;
- relationships are `lazy="raise"`: a query loads what it needs explicitly, never by accident.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    false,
    func,
    text,
    true,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

from orchestrator.registry.states import JOB_STATES, TERMINAL_STATES

__all__ = ["JOB_STATES", "TERMINAL_STATES"]  # re-exported: callers import the states from here too

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


# What a job does: train an adapter, evaluate a base model untuned (method 'none', no adapter),
# re-score existing adapters on one resident base (its spec lists the adapter ids), or merge
# adapters of one base into a new one (its spec lists the parents; `AdapterParent` links them).
JOB_KINDS = ("train", "evaluate", "reevaluate", "merge")
# The kinds whose job ends with a new adapter.
ADAPTER_JOB_KINDS = ("train", "merge")
# Where a metric row comes from: the job's own run, or a later re-evaluation of its adapter.
METRIC_SOURCES = ("job", "reevaluation")

# JSON on SQLite, JSONB on PostgreSQL (indexable, compact).
JSONType = JSON().with_variant(JSONB(), "postgresql")
# SQLite only auto-increments an INTEGER PRIMARY KEY.
BigIntPK = BigInteger().with_variant(Integer(), "sqlite")


def new_id() -> str:
    """A fresh UUID4 string: the id of every registry row except events/metrics/usage."""
    return str(uuid.uuid4())


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A tz-aware UTC timestamp on every backend (SQLite keeps no zone: re-attached on read)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: registry timestamps must be tz-aware (UTC)")
        value = value.astimezone(UTC)
        # SQLite compares timestamps as text: store one fixed format without an offset.
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSONType}  # noqa: RUF012


def _tenant_fk() -> Mapped[str]:
    return mapped_column(String(36), ForeignKey("tenants.id"), index=True)


class Tenant(Base):
    __tablename__ = "tenants"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    slug: Mapped[str] = mapped_column(String(40), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    # Jobs of this tenant that may run at once (enforced by the claim).
    max_running: Mapped[int] = mapped_column(Integer)
    # Jobs of this tenant that may wait in the queue (enforced at submit).
    max_queued: Mapped[int] = mapped_column(Integer, default=1000, server_default="1000")
    # Device-hours per calendar month (UTC) and bytes of live adapters + data sets; None: unlimited.
    device_hours_per_month: Mapped[float | None] = mapped_column(Float)
    max_storage_bytes: Mapped[int | None] = mapped_column(BigInteger)
    # When a job of this tenant was last claimed: fair share serves the longest-waiting tenant.
    last_claimed_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (
        CheckConstraint("max_running >= 0", name="max_running_nonneg"),
        CheckConstraint("max_queued >= 0", name="max_queued_nonneg"),
    )


DATASET_FORMATS = "format IN ('text_label', 'prompt_completion', 'chat')"


class Dataset(Base):
    """A tenant's uploaded, validated JSONL data set, stored by id under the artifacts root.

    `path` is the folder `<artifacts>/<tenant_id>/datasets/<id>/` holding `data.jsonl` (and
    `data.validation.jsonl` when a validation file was given); `sha256`/`bytes` are those of
    `data.jsonl` exactly as stored, so a worker can check it trains on the validated bytes.
    """

    __tablename__ = "datasets"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = _tenant_fk()
    kind: Mapped[str] = mapped_column(String(16))  # classification | generation
    # The rows' format (lora_engine.data.custom.FORMATS): text_label (classification),
    # prompt_completion or chat (generation; a chat file is rendered when a job starts).
    format: Mapped[str] = mapped_column(String(24), default="text_label", server_default="text_label")
    name: Mapped[str] = mapped_column(String(255))  # the uploaded file's name (display only)
    path: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64))
    bytes: Mapped[int] = mapped_column(BigInteger)
    rows: Mapped[int] = mapped_column(Integer)
    duplicate_rows: Mapped[int] = mapped_column(Integer, default=0)
    label_counts: Mapped[dict[str, Any] | None]  # {label: rows}; None for generation
    token_estimate: Mapped[int] = mapped_column(BigInteger)
    validation_sha256: Mapped[str | None] = mapped_column(String(64))
    validation_bytes: Mapped[int | None] = mapped_column(BigInteger)
    validation_rows: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Soft delete, like adapters: the files go, the row stays for the jobs that used it.
    deleted_at: Mapped[datetime | None]

    __table_args__ = (
        CheckConstraint("kind IN ('classification', 'generation')", name="kind_valid"),
        CheckConstraint(DATASET_FORMATS, name="format_valid"),
        Index("ix_datasets_tenant_id_sha256", "tenant_id", "sha256"),
    )


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    # Indexed by ix_jobs_tenant_id_state (tenant_id is its prefix).
    tenant_id: Mapped[str] = mapped_column(String(36), ForeignKey("tenants.id"))
    state: Mapped[str] = mapped_column(String(16), default="queued", index=True)
    kind: Mapped[str] = mapped_column(String(16), default="train", server_default="train")
    spec: Mapped[dict[str, Any]]
    # Denormalised from the resolved spec so reports and listings need no JSON parsing.
    task: Mapped[str] = mapped_column(String(64))
    method: Mapped[str] = mapped_column(String(16))
    rank: Mapped[int] = mapped_column(Integer)
    base_model: Mapped[str] = mapped_column(String(255))
    gradient_checkpointing: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    priority: Mapped[int] = mapped_column(Integer, default=0)
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer)
    lease_owner: Mapped[str | None] = mapped_column(String(255))
    lease_expires_at: Mapped[datetime | None]
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    # Set by a pause of a running job: its worker checkpoints and the job goes `paused`.
    pause_requested: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    error: Mapped[str | None] = mapped_column(Text)
    # The tenant's own labels (OpenAI's limits: `orchestrator.services.job_labels`) and the suffix
    # of the adapter's model name; a held-out file that replaces the data's own validation split.
    # (`metadata` is the declarative base's own attribute: the column is `metadata`, the field not.)
    metadata_: Mapped[dict[str, Any] | None] = mapped_column("metadata")
    suffix: Mapped[str | None] = mapped_column(String(64))
    validation_dataset_id: Mapped[str | None] = mapped_column(String(36), ForeignKey("datasets.id"))
    # False: the tenant opted this job out of the operator's MLflow tracking (`integrations`).
    tracking: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())
    # The registered data set a custom task trains on (also in spec.dataset).
    dataset_id: Mapped[str | None] = mapped_column(String(36), ForeignKey("datasets.id"), index=True)
    init_from_adapter_id: Mapped[str | None] = mapped_column(
        String(36), ForeignKey("adapters.id", use_alter=True)
    )
    # The tenant's own full fine-tune this job trains on as its base model (then base_model holds
    # its id too); NULL: an alias, a hub id or a folder (stored resolved), as base_model says.
    base_adapter_id: Mapped[str | None] = mapped_column(
        String(36), ForeignKey("adapters.id", use_alter=True)
    )
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Last time a message was sent for this job, and how many: the reconciler backs off.
    dispatched_at: Mapped[datetime | None]
    dispatch_count: Mapped[int] = mapped_column(Integer, default=0)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    heartbeat_at: Mapped[datetime | None]
    progress_event_at: Mapped[datetime | None]
    progress_step: Mapped[int | None] = mapped_column(Integer)
    progress_total: Mapped[int | None] = mapped_column(Integer)
    last_loss: Mapped[float | None] = mapped_column(Float)
    # Devices the job spans (spec.devices): claimed only by a worker owning as many; counts that
    # many against its tenant's running quota.
    devices: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    # The base's quantisation (spec.quantize, "nf4"), None for a full-precision base: such a job
    # is claimed only by a CUDA worker (repositories.runs_on).
    quantize: Mapped[str | None] = mapped_column(String(16))

    tenant: Mapped[Tenant] = relationship(lazy="raise")

    __table_args__ = (
        CheckConstraint(
            "state IN (" + ", ".join(f"'{s}'" for s in JOB_STATES) + ")", name="state_valid"
        ),
        CheckConstraint("kind IN (" + ", ".join(f"'{k}'" for k in JOB_KINDS) + ")", name="kind_valid"),
        CheckConstraint("devices >= 1", name="devices_positive"),
        UniqueConstraint("tenant_id", "idempotency_key", name="uq_jobs_tenant_id_idempotency_key"),
        # The claim counts a tenant's running jobs; the dispatcher scans queued ones.
        Index("ix_jobs_tenant_id_state", "tenant_id", "state"),
        # Reports: --since/--until windows, and the untuned baselines (kind 'evaluate') per task/base.
        Index("ix_jobs_created_at", "created_at"),
        Index("ix_jobs_kind_task_base_model", "kind", "task", "base_model"),
        # A tenant's jobs newest first, paged by key (created_at, id): the API's job list.
        Index("ix_jobs_tenant_id_created_at_id", "tenant_id", "created_at", "id"),
    )


class JobEvent(Base):
    """Append-only history of a job; `id` orders events (and pages them: `after_id`)."""

    __tablename__ = "job_events"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(String(36), ForeignKey("jobs.id"), index=True)
    tenant_id: Mapped[str] = _tenant_fk()
    ts: Mapped[datetime] = mapped_column(default=utcnow)
    kind: Mapped[str] = mapped_column(String(32))
    message: Mapped[str] = mapped_column(Text, default="")
    data: Mapped[dict[str, Any] | None]


def _rank_of_row(context) -> int:
    """An adapter row's stored rank when the insert names none: its rank."""
    return context.get_current_parameters()["rank"]


class Adapter(Base):
    __tablename__ = "adapters"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = _tenant_fk()
    # The job that trained it; None for an imported adapter. One adapter per job at most.
    job_id: Mapped[str | None] = mapped_column(String(36), ForeignKey("jobs.id"), unique=True)
    path: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64))
    bytes: Mapped[int] = mapped_column(BigInteger)
    trainable_params: Mapped[int] = mapped_column(BigInteger)
    total_params: Mapped[int] = mapped_column(BigInteger)
    base_model: Mapped[str] = mapped_column(String(255))
    task: Mapped[str] = mapped_column(String(64))
    method: Mapped[str] = mapped_column(String(16))
    rank: Mapped[int] = mapped_column(Integer)  # the rank it was trained at (the job's)
    # The rank of its files: 2·rank for PiSSA/OLoRA, stored as a plain LoRA of rank 2r on the
    # untouched base (lora_engine/methods.py, `Method.stored_rank`); else the rank (the default).
    stored_rank: Mapped[int] = mapped_column(Integer, default=_rank_of_row)
    parent_adapter_id: Mapped[str | None] = mapped_column(String(36), ForeignKey("adapters.id"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Soft delete: the files are removed, the row stays so jobs and reports keep their history.
    deleted_at: Mapped[datetime | None]

    # The benchmark picks a tenant's latest (or best) adapter per task.
    __table_args__ = (Index("ix_adapters_tenant_id_task_created_at", "tenant_id", "task", "created_at"),)


class AdapterParent(Base):
    """A merged adapter's parents, in the merge's order, with the weight each was given.

    (`Adapter.parent_adapter_id` is the one adapter a training job continued from; a merge has
    several parents, so they are rows here.) The parents may be deleted later: the link stays.
    """

    __tablename__ = "adapter_parents"

    adapter_id: Mapped[str] = mapped_column(String(36), ForeignKey("adapters.id"), primary_key=True)
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    parent_id: Mapped[str] = mapped_column(String(36), ForeignKey("adapters.id"), index=True)
    tenant_id: Mapped[str] = _tenant_fk()
    weight: Mapped[float] = mapped_column(Float)

    __table_args__ = (
        CheckConstraint("position >= 0", name="position_nonneg"),
        UniqueConstraint("adapter_id", "parent_id", name="uq_adapter_parents_adapter_id_parent_id"),
    )


class Metric(Base):
    """Long form: one row per (job, split, metric name), or per (job, adapter, split, name) for a
    re-evaluation.

    - source 'job': what the job itself measured. A training job's rows carry its adapter; an
      untuned-baseline job (kind 'evaluate') has no adapter, so adapter_id is NULL. Unique per
      (job, split, name).
    - source 'reevaluation': one reevaluate job scores many adapters, so job_id is that job and
      adapter_id the adapter scored. Unique per (job, adapter, split, name).
    Two partial unique indexes (SQLite and PostgreSQL both have them) state exactly that; a single
    constraint over (job, adapter, split, name) would let NULL adapters repeat.
    """

    __tablename__ = "metrics"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(String(36), ForeignKey("jobs.id"), index=True)
    adapter_id: Mapped[str | None] = mapped_column(String(36), ForeignKey("adapters.id"), index=True)
    tenant_id: Mapped[str] = _tenant_fk()
    split: Mapped[str] = mapped_column(String(32))
    name: Mapped[str] = mapped_column(String(64))
    value: Mapped[float] = mapped_column(Float)
    source: Mapped[str] = mapped_column(String(16), default="job", server_default="job")
    created_at: Mapped[datetime] = mapped_column(default=utcnow, server_default=func.now())

    __table_args__ = (
        CheckConstraint(
            "source IN (" + ", ".join(f"'{s}'" for s in METRIC_SOURCES) + ")", name="source_valid"
        ),
        Index("uq_metrics_job_id_split_name", "job_id", "split", "name", unique=True,
              sqlite_where=text("source = 'job'"), postgresql_where=text("source = 'job'")),
        Index("uq_metrics_job_id_adapter_id_split_name", "job_id", "adapter_id", "split", "name",
              unique=True, sqlite_where=text("source = 'reevaluation'"),
              postgresql_where=text("source = 'reevaluation'")),
        # The benchmark's drift column: an adapter's latest re-evaluation of a metric.
        Index("ix_metrics_reevaluation_adapter_id_name_created_at", "adapter_id", "name", "created_at",
              sqlite_where=text("source = 'reevaluation'"), postgresql_where=text("source = 'reevaluation'")),
    )


class Usage(Base):
    """Resources one attempt of a job consumed (failed attempts cost device time too)."""

    __tablename__ = "usage"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(String(36), ForeignKey("jobs.id"), index=True)
    tenant_id: Mapped[str] = _tenant_fk()
    attempt: Mapped[int] = mapped_column(Integer)
    device: Mapped[str] = mapped_column(String(128))
    device_seconds: Mapped[float] = mapped_column(Float)
    wall_seconds: Mapped[float] = mapped_column(Float)
    peak_memory_bytes: Mapped[int | None] = mapped_column(BigInteger)
    examples: Mapped[int] = mapped_column(BigInteger, default=0)
    tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    # Training only: peak minus the memory once the model was loaded, and the mean device time of
    # an optimizer step (what gradient checkpointing trades; `report compare`).
    activation_memory_bytes: Mapped[int | None] = mapped_column(BigInteger)
    step_seconds: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (UniqueConstraint("job_id", "attempt", name="uq_usage_job_id_attempt"),)


class InferenceUsage(Base):
    """What one request to the inference server (`lorafleet serve`) cost its tenant: tokens in and
    out, and device-seconds (a shared forward pass's time split between its requests by tokens)."""

    __tablename__ = "inference_usage"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    tenant_id: Mapped[str] = _tenant_fk()
    # None: the request named a base model, not an adapter.
    adapter_id: Mapped[str | None] = mapped_column(String(36), ForeignKey("adapters.id"))
    base_model: Mapped[str] = mapped_column(String(255))
    route: Mapped[str] = mapped_column(String(32))
    device: Mapped[str] = mapped_column(String(128))  # priced as a job's usage is (report cost)
    requests: Mapped[int] = mapped_column(Integer, default=1)
    prompt_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    completion_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    device_seconds: Mapped[float] = mapped_column(Float, default=0.0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class MetricPoint(Base):
    """One point of a job's training curve: series `name` at optimizer step `step`.

    Series: 'loss', 'lr' and 'grad_norm' (the gradient's L2 norm before clipping) every step;
    '<split>/<metric>' (e.g. 'validation/accuracy') for an evaluation repeated during training.
    Unique per (job, name, step): an attempt that resumes from a checkpoint and redoes steps
    overwrites their points (exact resume: the same values).
    """

    __tablename__ = "metric_history"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(String(36), ForeignKey("jobs.id"), index=True)
    tenant_id: Mapped[str] = _tenant_fk()
    name: Mapped[str] = mapped_column(String(64))
    step: Mapped[int] = mapped_column(Integer)
    epoch: Mapped[float] = mapped_column(Float)
    value: Mapped[float] = mapped_column(Float)

    __table_args__ = (UniqueConstraint("job_id", "name", "step", name="uq_metric_history_job_id_name_step"),)


class Worker(Base):
    """A worker process as it reports itself: registered when it starts, `last_seen` renewed
    every `beat_seconds` while it lives (idle too), `stopped_at` set when it shuts down
    gracefully, `unhealthy_reason` once it took itself out of service. `id` is the worker id its
    leases carry (`<celery node>:<pid>`), so a running job's `lease_owner` names this row. A
    process that dies silently keeps its row; the status calls it lost once a few beats are
    missed. Not tenant-owned: workers serve every tenant."""

    __tablename__ = "workers"

    id: Mapped[str] = mapped_column(String(255), primary_key=True)
    hostname: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    queue: Mapped[str] = mapped_column(String(255))
    device_kind: Mapped[str] = mapped_column(String(16))  # "cpu" or "cuda"
    device_name: Mapped[str] = mapped_column(String(255))  # as jobs bill it: "cpu", "cuda:<product>"
    beat_seconds: Mapped[float] = mapped_column(Float)  # its heartbeat interval
    # Devices it owns: it claims jobs that ask for at most as many.
    devices: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    started_at: Mapped[datetime]
    # The status lists the workers seen lately (an index: the table keeps every process ever started).
    last_seen: Mapped[datetime] = mapped_column(index=True)
    stopped_at: Mapped[datetime | None]
    current_job_id: Mapped[str | None] = mapped_column(String(36), ForeignKey("jobs.id"))
    # Set when its own environment failed `unhealthy_after` jobs in a row: it claims nothing more.
    unhealthy_reason: Mapped[str | None] = mapped_column(Text)
    unhealthy_since: Mapped[datetime | None]


# What a webhook delivery is doing: waiting for its (next) attempt, done, or given up.
WEBHOOK_DELIVERY_STATES = ("pending", "delivered", "failed")


class WebhookEndpoint(Base):
    """A URL a tenant receives its jobs' events at, and the secret each delivery is signed with.

    The secret is a server-side secret (`whsec_` + base64 of random bytes): shown once when the
    endpoint is created, never printed again. `restricted`: registered through the API, so its
    host must resolve to public addresses only, checked at registration and at every delivery
    (the operator's CLI may name any address). Removing an endpoint disables it (`disabled_at`):
    its deliveries and their attempts stay as history.
    """

    __tablename__ = "webhook_endpoints"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = _tenant_fk()
    url: Mapped[str] = mapped_column(Text)
    name: Mapped[str] = mapped_column(String(200), default="")
    # The event types it receives (a subset of services.webhook_outbox.EVENT_TYPES); None: all.
    event_types: Mapped[list[str] | None] = mapped_column(JSONType)
    secret: Mapped[str] = mapped_column(String(128))
    restricted: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    disabled_at: Mapped[datetime | None]


class WebhookDelivery(Base):
    """The outbox: one event for one endpoint, written in the transaction that ended the job.

    `id` is the Standard Webhooks `webhook-id` (`msg_<hex>`), the same on every attempt, so a
    receiver can drop a duplicate; `payload` is the exact JSON body every attempt sends (text,
    so each attempt signs the same bytes). `next_attempt_at` is when a sender may take it:
    taking it pushes it forward by an in-flight lease, so a sender that dies mid-request leaves
    it for another one (at least once).
    """

    __tablename__ = "webhook_deliveries"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    endpoint_id: Mapped[str] = mapped_column(String(36), ForeignKey("webhook_endpoints.id"), index=True)
    tenant_id: Mapped[str] = _tenant_fk()
    job_id: Mapped[str | None] = mapped_column(String(36), ForeignKey("jobs.id"), index=True)
    event_id: Mapped[str] = mapped_column(String(64))
    event_type: Mapped[str] = mapped_column(String(64))
    payload: Mapped[str] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    delivered_at: Mapped[datetime | None]

    __table_args__ = (
        CheckConstraint(
            "state IN (" + ", ".join(f"'{s}'" for s in WEBHOOK_DELIVERY_STATES) + ")", name="state_valid"
        ),
        # The senders' scan: pending deliveries by due time (partial: delivered ones pile up).
        Index("ix_webhook_deliveries_due", "next_attempt_at",
              sqlite_where=text("state = 'pending'"), postgresql_where=text("state = 'pending'")),
    )


class WebhookAttempt(Base):
    """One try of a delivery: the receiver's status code (None: no answer) or the error, and how
    long it took. Append-only."""

    __tablename__ = "webhook_attempts"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    delivery_id: Mapped[str] = mapped_column(String(64), ForeignKey("webhook_deliveries.id"), index=True)
    tenant_id: Mapped[str] = _tenant_fk()
    ts: Mapped[datetime] = mapped_column(default=utcnow)
    status_code: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    duration_ms: Mapped[float] = mapped_column(Float)


class ApiKey(Base):
    """A key of the tenants' API. Only its sha256 is stored (a key is 32 random bytes, so a plain
    hash is as strong as a slow one); `prefix` is the few characters shown to tell keys apart.
    `tenant_id` NULL: an operator key, acting for the tenant its request names
    (`OpenAI-Organization`). Revoked or expired keys stay listed, refused."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    tenant_id: Mapped[str | None] = mapped_column(String(36), ForeignKey("tenants.id"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    prefix: Mapped[str] = mapped_column(String(16))
    hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]
    # Renewed at most once a minute per key (a write per request would serialise SQLite).
    last_used_at: Mapped[datetime | None]


class RateCounter(Base):
    """Requests counted per (bucket, fixed window) where every API process sees them, when there is
    no Redis (embedded mode): a key's requests this minute, an address's failed logins."""

    __tablename__ = "rate_counters"

    bucket: Mapped[str] = mapped_column(String(120), primary_key=True)
    window_start: Mapped[datetime] = mapped_column(primary_key=True)
    count: Mapped[int] = mapped_column(Integer)
    # Old windows are deleted by age.
    expires_at: Mapped[datetime] = mapped_column(index=True)
