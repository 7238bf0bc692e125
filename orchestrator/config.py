"""Configuration: every `LORAFLEET_*` variable in one place, typed and validated (pydantic-settings).

Each field of `Settings` is read from `LORAFLEET_<FIELD NAME>`; `lorafleet config show` lists them
all with their value and where it came from. The home is found the way git finds a repository:
`LORAFLEET_HOME`, else the nearest `.lorafleet` folder in the current folder or a parent, else a
per-user data folder (platformdirs), so a command run in another folder does not silently start an
empty registry there. The registry, broker and artifacts default to places under the home.

A bad value raises `ConfigError` naming the variable and what is allowed (the CLI prints it as one
line). This module imports pydantic, so the CLI imports it only inside commands (start-up stays
fast, see bench/bench_cli_help.py).

To add a setting: add a field with a default, a description and `allowed` text (shown in errors);
nothing else reads the environment, but for the console script's `LORAFLEET_CLI_SOCKET`
(`cli/entry.py`), which it must read before it has imported pydantic.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, PrivateAttr, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, EnvSettingsSource, NoDecode, SettingsConfigDict

from orchestrator.registry.limits import BIG_INTEGER_MAX, INTEGER_MAX
from orchestrator.text import redact_url

ENV_PREFIX = "LORAFLEET_"
HOME_MARKER = ".lorafleet"
DEFAULT_PRICES = {"cpu": 0.05, "cuda": 2.50}
DATABASE_SCHEMES = ("sqlite:///", "postgresql://", "postgresql+psycopg://", "postgres://")
BROKER_SCHEMES = ("redis://", "rediss://", "sqla+sqlite:///", "memory://", "filesystem://")


class ConfigError(ValueError):
    """A `LORAFLEET_*` variable has a value we cannot use; the message names it and what is allowed."""


def _allowed(text: str) -> dict[str, Any]:
    return {"allowed": text}


class Settings(BaseSettings):
    """The settings of one process (see the module docstring for the home and the sources)."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, frozen=True, extra="ignore", env_ignore_empty=True
    )

    home: Path = Field(
        description="folder of the embedded registry, broker, artifacts and logs",
        json_schema_extra=_allowed("a folder path"),
    )
    database_url: str = Field(
        "",
        description="SQLAlchemy URL of the registry (default: SQLite file <home>/registry.db)",
        json_schema_extra=_allowed("a sqlite:/// or postgresql:// URL"),
    )
    broker_url: str = Field(
        "",
        description="Celery broker URL (default: SQLite broker <home>/broker.db)",
        json_schema_extra=_allowed("a redis:// or sqla+sqlite:/// URL"),
    )
    artifacts: Path = Field(
        Path(),
        description="folder of adapters and checkpoints (default: <home>/artifacts)",
        json_schema_extra=_allowed("a folder path"),
    )
    data_dir: Path = Field(
        Path("data"),
        description="GLUE JSONL + E2E CSV data folder (the Makefile points it at ../shared/data)",
        json_schema_extra=_allowed("a folder path"),
    )
    # Short leases renewed by heartbeats: a dead worker is noticed within lease + grace + one
    # reconciler pass (45 + 5 + 5 s), not after a long job's worth of lease.
    lease_seconds: int = Field(
        45,
        gt=0,
        description="a running job's lease; a worker silent this long loses its job",
        json_schema_extra=_allowed("a whole number of seconds > 0"),
    )
    heartbeat_seconds: float = Field(
        15.0,
        gt=0,
        description="seconds between a running job's lease renewals and a worker's presence beats "
                    "(keep well under lease_seconds)",
        json_schema_extra=_allowed("a number of seconds > 0, at most half of lease_seconds"),
    )
    reconcile_every_s: float = Field(
        5.0,
        gt=0,
        description="seconds between reconciler passes (a worker's beat, or the embedded worker's thread)",
        json_schema_extra=_allowed("a number of seconds > 0"),
    )
    divergence_factor: float = Field(
        10.0,
        gt=1,
        description="a run whose loss stays above this multiple of its first loss is stopped as diverged",
        json_schema_extra=_allowed("a number > 1"),
    )
    divergence_patience: int = Field(
        20,
        ge=1,
        description="optimizer steps in a row above divergence_factor x the first loss before stopping",
        json_schema_extra=_allowed("an integer >= 1"),
    )
    max_attempts: int = Field(
        3, ge=1, le=INTEGER_MAX, description="attempts per job before it fails",
        json_schema_extra=_allowed(f"an integer >= 1, at most {INTEGER_MAX}"),
    )
    checkpoint_every: int = Field(
        50, ge=1, description="optimizer steps between checkpoints",
        json_schema_extra=_allowed("an integer >= 1"),
    )
    unhealthy_after: int = Field(
        3, ge=1, le=1000,
        description="jobs in a row a worker hands back because its own environment failed them (its "
                    "working folder, data folder, model cache or artifacts root missing or unreadable) "
                    "before it stops claiming and shows unhealthy",
        json_schema_extra=_allowed("an integer from 1 to 1000"),
    )
    # Longer than the longest job: Redis redelivers an unacked message after this many seconds.
    visibility_timeout: int = Field(
        12 * 3600,
        gt=0,
        description="seconds before Redis redelivers an unacknowledged job message",
        json_schema_extra=_allowed("a whole number of seconds > 0, longer than the longest job"),
    )
    tenant_max_running: int = Field(
        2, ge=1, le=INTEGER_MAX, description="default running-job quota of a new tenant",
        json_schema_extra=_allowed(f"an integer >= 1, at most {INTEGER_MAX}"),
    )
    queue: str = Field(
        "gpu", min_length=1, description="Celery queue of training jobs",
        json_schema_extra=_allowed("a queue name"),
    )
    # Several devices for one job (lora_engine.multidevice): a worker process owns `worker_devices`
    # (`lorafleet worker --devices K`) and claims jobs whose spec asks for at most that many.
    worker_devices: int = Field(
        1, ge=1, le=64, description="devices this worker process owns (`lorafleet worker --devices K`)",
        json_schema_extra=_allowed("an integer from 1 to 64"),
    )
    max_job_devices: int = Field(
        8, ge=1, le=64, description="the most devices one job may ask for (spec field devices)",
        json_schema_extra=_allowed("an integer from 1 to 64"),
    )
    rank_timeout_s: float = Field(
        300.0, gt=0, le=24 * 3600,
        description="seconds a rank of a multi-device job waits for its peers before the attempt fails",
        json_schema_extra=_allowed("a number of seconds > 0, at most a day"),
    )
    # Money per device-hour by device type ("cpu", "cuda:NVIDIA H100 ...": prefix match on "cuda").
    prices: Annotated[dict[str, float], NoDecode] = Field(
        default_factory=lambda: dict(DEFAULT_PRICES),
        description="money per device-hour by device type, merged over cpu=0.05,cuda=2.5",
        json_schema_extra=_allowed("comma-separated device=price pairs, e.g. cpu=0.05,cuda=2.5"),
    )
    storage_price_gb_month: float = Field(
        0.023,
        ge=0,
        description="money per GB-month of stored artifacts (the cost report's storage figures)",
        json_schema_extra=_allowed("a number >= 0"),
    )
    metrics_port: int | None = Field(
        None,
        ge=1,
        le=65535,
        description="port of a worker's Prometheus /metrics endpoint (unset: no exporter)",
        json_schema_extra=_allowed("a TCP port 1..65535, or unset"),
    )
    # Every listener binds the loopback unless configured: the exporter has no login, and a
    # scraper on another machine is a deliberate choice of the operator.
    metrics_host: str = Field(
        "127.0.0.1",
        pattern=r"^[0-9A-Za-z.:-]{1,253}$",
        description="address the Prometheus exporters (a worker's, the API's) listen on (127.0.0.1: this "
                    "machine only)",
        json_schema_extra=_allowed("an IP address or host name of this machine, e.g. 127.0.0.1 or ::"),
    )
    log_format: Literal["text", "json"] = Field(
        "text",
        description="worker log lines: text, or one JSON object per line",
        json_schema_extra=_allowed("text or json"),
    )
    # Read by the console script itself (cli/entry.py: socket_path) before anything is imported;
    # listed here so `config show` names it.
    cli_socket: str = Field(
        "",
        description="socket of the CLI server (`lorafleet cli-server`; default: one per user and "
                    "checkout under $XDG_RUNTIME_DIR or /tmp)",
        json_schema_extra=_allowed("a socket path of at most 100 bytes"),
    )

    # Paths a user passes (data files, batch files, model and adapter folders) must resolve inside
    # one of these, never inside the home or the artifacts root (orchestrator/paths.py). Default:
    # the current folder, unless it is `/`, the home, or inside the home: then there is none, and a
    # command that reads a user's path says to set LORAFLEET_DATA_ROOTS.
    data_roots: Annotated[list[Path], NoDecode] = Field(
        default_factory=list,
        description="folders that user-given paths (data sets, batch files, model and adapter folders) "
                    "must lie in (default: the current folder, none where that is /, the home or "
                    "inside it)",
        json_schema_extra=_allowed("':'-separated folder paths"),
    )
    max_dataset_bytes: int = Field(
        512 * 1024 * 1024, ge=1, description="largest data set file an upload accepts, in bytes",
        json_schema_extra=_allowed("an integer >= 1"),
    )
    max_batch_file_bytes: int = Field(
        16 * 1024 * 1024, ge=1, description="largest `job submit-batch` file read, in bytes",
        json_schema_extra=_allowed("an integer >= 1"),
    )
    # A user's folder (a base model, an adapter to import or start from) is walked entry by entry
    # before anything reads it: these bound the walk and what loading it may read.
    max_folder_entries: int = Field(
        10_000, ge=1, description="most files and folders a user-given model or adapter folder may hold",
        json_schema_extra=_allowed("an integer >= 1"),
    )
    max_folder_depth: int = Field(
        8, ge=1, description="deepest nesting of folders inside a user-given model or adapter folder",
        json_schema_extra=_allowed("an integer >= 1"),
    )
    max_folder_bytes: int = Field(
        200 * 1024**3, ge=1,
        description="largest total size of a user-given model or adapter folder, in bytes",
        json_schema_extra=_allowed("an integer >= 1"),
    )
    # Defaults of a new tenant's quotas (each tenant's own values live on its row).
    tenant_max_queued: int = Field(
        1000, ge=0, le=INTEGER_MAX, description="default queued-job quota of a new tenant",
        json_schema_extra=_allowed(f"an integer >= 0, at most {INTEGER_MAX}"),
    )
    tenant_device_hours_per_month: float | None = Field(
        None, ge=0, allow_inf_nan=False,
        description="default monthly device-hour budget of a new tenant (unset: unlimited)",
        json_schema_extra=_allowed("a finite number >= 0, or unset"),
    )
    tenant_max_storage_bytes: int | None = Field(
        None, ge=0, le=BIG_INTEGER_MAX,
        description="default adapter + data set storage quota of a new tenant (unset: unlimited)",
        json_schema_extra=_allowed(f"an integer >= 0, at most {BIG_INTEGER_MAX}, or unset"),
    )
    # The base models the tenants' API lets a tenant fine-tune (`services.base_models`): never a
    # folder; a tenant's own full fine-tunes are allowed besides these, by name or id.
    allowed_base_models: Annotated[list[str] | None, NoDecode] = Field(
        None,
        description="base models API tenants may fine-tune (unset: every packaged alias and every hub "
                    "id in the local hub cache)",
        json_schema_extra=_allowed("comma-separated aliases or hub ids (no folders), or unset"),
    )
    # A batch is validated item by item before anything is written: its size bounds that work
    # (and the error listing a bad batch).
    max_batch_items: int = Field(
        1000, ge=1, le=1_000_000, description="most items one `job submit-batch` file may hold",
        json_schema_extra=_allowed("an integer 1..1000000"),
    )
    # Packed training (lora_engine.packed): a worker trains up to this many compatible queued jobs
    # in one pass over their shared base; 1 trains every job alone. What is left unset ("auto" K,
    # no token budget) is planned from the activation memory of the pack's first round against
    # pack_memory_fraction of the free device memory (lora_engine/packed/memory.py).
    pack_max_jobs: Annotated[int, Field(ge=1, le=64)] | Literal["auto"] = Field(
        1, description="compatible training jobs a worker trains together (1: each alone; auto: from memory)",
        json_schema_extra=_allowed("an integer 1..64, or auto"),
    )
    pack_max_tokens: int | None = Field(
        None, ge=1,
        description="a packed round's token budget, sum of batch_size x max_length (unset: from memory)",
        json_schema_extra=_allowed("an integer >= 1, or unset"),
    )
    pack_memory_fraction: float = Field(
        0.5, gt=0, le=1, description="share of the free device memory a packed round's activations may take",
        json_schema_extra=_allowed("a number > 0 and <= 1"),
    )
    # The tenants' API (`lorafleet api serve`, orchestrator/api). It binds the loopback unless the
    # operator names another address: it is the first door a stranger can knock on.
    api_host: str = Field(
        "127.0.0.1", pattern=r"^[0-9A-Za-z.:-]{1,253}$",
        description="address `lorafleet api serve` listens on (127.0.0.1: this machine only)",
        json_schema_extra=_allowed("an IP address or host name of this machine, e.g. 127.0.0.1 or 0.0.0.0"),
    )
    api_port: int = Field(
        8000, ge=1, le=65535, description="port `lorafleet api serve` listens on",
        json_schema_extra=_allowed("a TCP port 1..65535"),
    )
    api_rate_limit_per_minute: int = Field(
        600, ge=1, le=INTEGER_MAX, description="requests one API key may make per minute (then 429)",
        json_schema_extra=_allowed(f"an integer 1..{INTEGER_MAX}"),
    )
    api_auth_failure_limit: int = Field(
        10, ge=1, le=INTEGER_MAX,
        description="failed authentications one address may make per window before its requests get "
                    "429 for a window",
        json_schema_extra=_allowed(f"an integer 1..{INTEGER_MAX}"),
    )
    api_auth_failure_window_s: int = Field(
        60, ge=1, le=86400, description="the window of api_auth_failure_limit, and how long a block lasts",
        json_schema_extra=_allowed("a whole number of seconds 1..86400"),
    )
    api_max_body_bytes: int | None = Field(
        None, ge=1,
        description="largest request body the API reads (unset: max_dataset_bytes plus 1 MiB for a "
                    "multipart upload's envelope)",
        json_schema_extra=_allowed("an integer >= 1, or unset"),
    )
    api_metrics_port: int | None = Field(
        None, ge=1, le=65535,
        description="port of the API's Prometheus /metrics endpoint, on 127.0.0.1 (unset: none)",
        json_schema_extra=_allowed("a TCP port 1..65535, or unset"),
    )
    # Behind a reverse proxy the client's address is in X-Forwarded-For; trusting it from anyone
    # else would let a client pick the address its failed logins are counted against.
    api_forwarded_allow_ips: str = Field(
        "", pattern=r"^[0-9A-Fa-f.:/,* ]{0,1000}$",
        description="addresses of reverse proxies whose X-Forwarded-For the API trusts (empty: none)",
        json_schema_extra=_allowed("comma-separated IP addresses or networks, or *"),
    )

    @property
    def api_body_limit(self) -> int:
        """The request body cap of the API (api_max_body_bytes, else the data-set cap + 1 MiB)."""
        return self.api_max_body_bytes or self.max_dataset_bytes + (1 << 20)

    # The inference server (`lorafleet serve`, worker/serve): the tenants' keys, torch in its process.
    serve_host: str = Field(
        "127.0.0.1", pattern=r"^[0-9A-Za-z.:-]{1,253}$",
        description="address `lorafleet serve` listens on (127.0.0.1: this machine only)",
        json_schema_extra=_allowed("an IP address or host name of this machine, e.g. 127.0.0.1 or 0.0.0.0"),
    )
    serve_port: int = Field(
        8001, ge=1, le=65535, description="port `lorafleet serve` listens on",
        json_schema_extra=_allowed("a TCP port 1..65535"),
    )
    serve_metrics_port: int | None = Field(
        None, ge=1, le=65535,
        description="port of the inference server's Prometheus /metrics endpoint (unset: none)",
        json_schema_extra=_allowed("a TCP port 1..65535, or unset"),
    )
    serve_adapter_cache_bytes: int = Field(
        1 << 30, ge=1,
        description="adapter bytes the inference server keeps loaded (least recently used evicted)",
        json_schema_extra=_allowed("an integer >= 1 (bytes)"),
    )
    serve_batch_window_ms: float = Field(
        5.0, ge=0, le=1000,
        description="milliseconds a request waits for others when nothing is decoding",
        json_schema_extra=_allowed("a number of milliseconds 0..1000"),
    )
    serve_batch_max: int = Field(
        32, ge=1, le=1024,
        description="most generation rows decoding together, and classify requests per forward",
        json_schema_extra=_allowed("an integer 1..1024"),
    )
    serve_max_tokens: int = Field(
        512, ge=1, le=32768, description="most tokens one inference request may generate (max_tokens)",
        json_schema_extra=_allowed("an integer 1..32768"),
    )
    # What the server reads of the registry per request, kept a short while (worker/serve/auth.py,
    # lookup.py): the revocation of a key, the deletion of an adapter whose folder is elsewhere
    # than the artifacts, take effect within this many seconds.
    serve_registry_cache_s: float = Field(
        5.0, ge=0, le=300,
        description="seconds the inference server trusts a verified key and a resolved adapter name "
                    "(a revoked key or deleted adapter is refused within it; 0: checked every request)",
        json_schema_extra=_allowed("a number of seconds 0..300"),
    )
    serve_usage_flush_ms: float = Field(
        500.0, gt=0, le=60000,
        description="milliseconds between the inference server's writes of its usage rows (and at stop)",
        json_schema_extra=_allowed("a number of milliseconds > 0, at most 60000"),
    )
    serve_usage_flush_rows: int = Field(
        256, ge=1, le=100000,
        description="usage rows that make the inference server write them before its next tick",
        json_schema_extra=_allowed("an integer 1..100000"),
    )

    # Webhooks (orchestrator.webhook_delivery): a sender polls the outbox every webhook_poll_s
    # (job end -> receiver well under a second), retries with back-off for webhook_give_up_s.
    webhook_poll_s: float = Field(
        0.5, gt=0, le=3600, description="seconds between a webhook sender's looks at the outbox",
        json_schema_extra=_allowed("a number of seconds > 0, at most 3600"),
    )
    webhook_timeout_s: float = Field(
        10.0, gt=0, le=300, description="seconds one webhook request may take (connect + answer)",
        json_schema_extra=_allowed("a number of seconds > 0, at most 300"),
    )
    webhook_retry_first_s: float = Field(
        5.0, gt=0, description="back-off after a delivery's first failed attempt (doubling after each)",
        json_schema_extra=_allowed("a number of seconds > 0"),
    )
    webhook_retry_cap_s: float = Field(
        3600.0, gt=0, description="longest back-off between two attempts of one delivery",
        json_schema_extra=_allowed("a number of seconds > 0"),
    )
    webhook_give_up_s: float = Field(
        86400.0, gt=0, description="age after which a delivery that never succeeded is given up (failed)",
        json_schema_extra=_allowed("a number of seconds > 0"),
    )
    webhook_batch: int = Field(
        20, ge=1, le=1000, description="deliveries one sender pass takes at most (sent concurrently)",
        json_schema_extra=_allowed("an integer 1..1000"),
    )
    # Through the API, a webhook URL must resolve to public addresses only (no loopback, private,
    # link-local, multicast or reserved ones), at registration and at every delivery.
    webhook_allow_private: bool = Field(
        False, description="let tenants' webhook URLs reach loopback/private addresses (tests; set it alike "
                           "for the API and the senders: they check it at registration and at delivery)",
        json_schema_extra=_allowed("true or false"),
    )

    # MLflow (worker/tracking): the operator's tracking server, never a tenant's. Each job is one run
    # there, written by a worker's own thread from what the registry holds; when the server is down
    # the thread backs off and finally gives up (a `tracking` warning event), the job never waits.
    mlflow_tracking_uri: str = Field(
        "",
        description="MLflow tracking server the workers log each job to, as one run (empty: none); the "
                    "server should run with --serve-artifacts for the adapter to be logged",
        json_schema_extra=_allowed("an http:// or https:// URL (user:password@ for basic auth), or empty"),
    )
    mlflow_flush_s: float = Field(
        2.0, gt=0, le=3600, description="seconds between a worker's MLflow passes (new points, ended jobs)",
        json_schema_extra=_allowed("a number of seconds > 0, at most 3600"),
    )
    mlflow_timeout_s: float = Field(
        10.0, gt=0, le=300, description="seconds one MLflow request may take (connect + answer)",
        json_schema_extra=_allowed("a number of seconds > 0, at most 300"),
    )
    mlflow_retry_first_s: float = Field(
        2.0, gt=0, description="back-off after a job's first failed MLflow request (doubling after each)",
        json_schema_extra=_allowed("a number of seconds > 0"),
    )
    mlflow_retry_cap_s: float = Field(
        120.0, gt=0, description="longest back-off between two MLflow tries for one job",
        json_schema_extra=_allowed("a number of seconds > 0"),
    )
    mlflow_give_up_s: float = Field(
        1800.0, gt=0,
        description="how long a job's MLflow run is retried after its first failure before it is given up "
                    "(a `tracking` warning event on the job)",
        json_schema_extra=_allowed("a number of seconds > 0"),
    )
    mlflow_max_jobs: int = Field(
        64, ge=1, le=100_000,
        description="jobs a worker keeps waiting for MLflow at once; past it the oldest is given up (a "
                    "`tracking` warning event): the bound on what MLflow being down holds in memory",
        json_schema_extra=_allowed("an integer 1..100000"),
    )

    _sources: dict[str, str] = PrivateAttr(default_factory=dict)

    @field_validator("mlflow_tracking_uri", mode="after")
    @classmethod
    def _mlflow_scheme(cls, value: str) -> str:
        if value and not value.startswith(("http://", "https://")):
            raise ValueError(f"unknown scheme {value.split(':', 1)[0]!r}")
        return value.rstrip("/")

    @field_validator("database_url", mode="after")
    @classmethod
    def _database_scheme(cls, value: str) -> str:
        if value and not value.startswith(DATABASE_SCHEMES):
            raise ValueError(f"unknown scheme {value.split(':', 1)[0]!r}")
        return value

    @field_validator("broker_url", mode="after")
    @classmethod
    def _broker_scheme(cls, value: str) -> str:
        if value and not value.startswith(BROKER_SCHEMES):
            raise ValueError(f"unknown scheme {value.split(':', 1)[0]!r}")
        return value

    @field_validator("data_roots", mode="before")
    @classmethod
    def _parse_roots(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [part for part in value.split(":") if part.strip()]
            if not value:
                raise ValueError("no folder given")
        return value

    @field_validator("allowed_base_models", mode="before")
    @classmethod
    def _parse_bases(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("allowed_base_models", mode="after")
    @classmethod
    def _no_folders(cls, value: list[str] | None) -> list[str] | None:
        from lora_engine.model_ref import is_folder_name

        folders = [v for v in value or [] if is_folder_name(v) or "\\" in v or ".." in v]
        if folders:
            raise ValueError(f"a tenant never trains on a folder of this machine: {', '.join(folders)}")
        return value

    @field_validator("data_roots", mode="after")
    @classmethod
    def _absolute_roots(cls, value: list[Path]) -> list[Path]:
        return [p.expanduser().resolve() for p in value]

    @field_validator("heartbeat_seconds", mode="after")
    @classmethod
    def _heartbeat_within_lease(cls, value: float, info: ValidationInfo) -> float:
        lease = info.data.get("lease_seconds")
        if lease is not None and value * 2 > lease:
            raise ValueError(
                f"{value:g} s is more than half of LORAFLEET_LEASE_SECONDS={lease}: a lease must "
                "survive a missed beat"
            )
        return value

    @field_validator("prices", mode="before")
    @classmethod
    def _parse_prices(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        prices: dict[str, Any] = dict(DEFAULT_PRICES)
        for item in filter(None, (part.strip() for part in value.split(","))):
            device, sep, price = item.partition("=")
            if not sep or not device.strip():
                raise ValueError(f"{item!r} is not a device=price pair")
            prices[device.strip()] = price.strip()
        return prices

    @field_validator("home", "artifacts", "data_dir", mode="after")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @model_validator(mode="before")
    @classmethod
    def _under_home(cls, data: Any) -> Any:
        """The registry, broker and artifacts default to places under the home."""
        if not isinstance(data, dict) or not data.get("home"):
            return data
        home = Path(data["home"]).expanduser().resolve()
        data = dict(data)
        if not data.get("database_url"):
            data["database_url"] = f"sqlite:///{home / 'registry.db'}"
        if not data.get("broker_url"):
            data["broker_url"] = f"sqla+sqlite:///{home / 'broker.db'}"
        if not data.get("artifacts"):
            data["artifacts"] = home / "artifacts"
        if not data.get("data_roots"):
            cwd, artifacts = Path.cwd().resolve(), Path(data["artifacts"]).expanduser().resolve()
            data["data_roots"] = [] if default_root_problem(cwd, home, artifacts) else [cwd]
        return data

    def source_of(self, name: str) -> str:
        """Where a field's value came from: env, discovered, under home, or default."""
        return self._sources.get(name, "default")

    def described(self) -> list[dict[str, Any]]:
        """One row per variable: name, value, source, description (for `lorafleet config show`)."""
        rows = []
        for name, info in type(self).model_fields.items():
            rows.append({
                "variable": env_var(name),
                "value": getattr(self, name),
                "source": self.source_of(name),
                "description": info.description,
            })
        return rows


def default_root_problem(cwd: Path, home: Path, artifacts: Path) -> str | None:
    """Why the current folder `cwd` cannot be the default data root (None: it can): a command run
    from `/` (cron, a container's WORKDIR), from the home (the registry and the broker live there)
    or from inside the artifacts root would let a user's path reach any file, or lorafleet's own."""
    if cwd == Path(cwd.anchor):
        return f"the current folder is the file system's root ({cwd})"
    for place, what in ((home, "the lorafleet home"), (artifacts, "the artifacts root")):
        if cwd == place or place in cwd.parents:
            return f"the current folder ({cwd}) is inside {what} ({place})"
    return None


def env_var(field_name: str) -> str:
    return ENV_PREFIX + field_name.upper()


class _MappingEnvSource(EnvSettingsSource):
    """pydantic-settings' environment source over a given mapping instead of os.environ."""

    def __init__(self, settings_cls: type[BaseSettings], env: Mapping[str, str]):
        self._mapping = dict(env)
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        pairs = {k: v for k, v in self._mapping.items() if v or not self.env_ignore_empty}
        return pairs if self.case_sensitive else {k.lower(): v for k, v in pairs.items()}


def discover_home(env: Mapping[str, str], cwd: Path) -> tuple[Path, str]:
    """(home, source): LORAFLEET_HOME, else the nearest `.lorafleet` here or above, else per-user."""
    if env.get(env_var("home")):
        return Path(env[env_var("home")]).expanduser().resolve(), "env"
    for folder in (cwd, *cwd.parents):
        if (folder / HOME_MARKER).is_dir():
            return folder / HOME_MARKER, "discovered"
    import platformdirs

    return Path(platformdirs.user_data_dir("lorafleet", appauthor=False)), "default (per-user)"


def load_settings(env: Mapping[str, str] | None = None, *, cwd: Path | None = None) -> Settings:
    """Settings from `env` (default: os.environ); raises ConfigError for a bad value."""
    env = dict(os.environ if env is None else env)
    home, home_source = discover_home(env, (cwd or Path.cwd()).resolve())

    class _FromMapping(Settings):
        @classmethod
        def settings_customise_sources(cls, settings_cls, init_settings, **_: Any) -> tuple[Any, ...]:
            return (init_settings, _MappingEnvSource(settings_cls, env))

    try:
        loaded = _FromMapping(home=home)
        settings = Settings.model_construct(**{name: getattr(loaded, name) for name in Settings.model_fields})
    except ValidationError as exc:
        raise ConfigError(_explain(exc, env)) from None
    sources = {name: "env" for name in Settings.model_fields if env.get(env_var(name))}
    sources["home"] = home_source
    for name in ("database_url", "broker_url", "artifacts"):
        sources.setdefault(name, "under home")
    settings._sources.update(sources)
    return settings


def _explain(exc: ValidationError, env: Mapping[str, str]) -> str:
    """One line per bad variable: its name, the value given, what was wrong and what is allowed."""
    lines, seen = [], set()
    for error in exc.errors():
        name = str(error["loc"][0]) if error["loc"] else "?"
        if name in seen:  # a number-or-word field fails in each branch: its first reason says it
            continue
        seen.add(name)
        field = Settings.model_fields.get(name)
        allowed = (field.json_schema_extra or {}).get("allowed") if field else None  # type: ignore[union-attr]
        given = env.get(env_var(name), error.get("input"))
        if isinstance(given, str):  # a URL's password is no part of the explanation
            given = redact_url(given)
        reason = str(error["msg"]).removeprefix("Value error, ")
        lines.append(f"{env_var(name)}={given!r} is not valid ({reason}); allowed: {allowed}")
    return "\n".join(lines)


@cache
def get_settings() -> Settings:
    return load_settings()
