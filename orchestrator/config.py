"""Configuration by environment, with the embedded single-machine defaults.

| variable                      | embedded default                               |
|-------------------------------|------------------------------------------------|
| LORAFLEET_HOME                | ./.lorafleet                                   |
| LORAFLEET_DATABASE_URL        | sqlite:///<home>/registry.db                   |
| LORAFLEET_BROKER_URL          | sqla+sqlite:///<home>/broker.db                |
| LORAFLEET_ARTIFACTS           | <home>/artifacts                               |
| LORAFLEET_DATA_DIR            | ./data (the Makefile points it at ../shared/data) |
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path


@dataclass(frozen=True)
class Settings:
    home: Path
    database_url: str
    broker_url: str
    artifacts: Path
    data_dir: Path
    lease_seconds: int = 300
    max_attempts: int = 3
    checkpoint_every: int = 50
    # Longer than the longest job: Redis redelivers an unacked message after this many seconds.
    visibility_timeout: int = 12 * 3600
    tenant_max_running: int = 2
    queue: str = "gpu"
    # Money per device-hour by device type ("cpu", "cuda:NVIDIA H100 ...": prefix match on "cuda").
    prices: dict[str, float] = field(default_factory=lambda: {"cpu": 0.05, "cuda": 2.50})

    @property
    def is_embedded(self) -> bool:
        return self.database_url.startswith("sqlite")


def load_settings(env: dict[str, str] | None = None) -> Settings:
    env = dict(os.environ if env is None else env)
    home = Path(env.get("LORAFLEET_HOME", ".lorafleet")).resolve()
    prices = {"cpu": 0.05, "cuda": 2.50}
    for item in filter(None, env.get("LORAFLEET_PRICES", "").split(",")):
        device, _, price = item.partition("=")
        prices[device.strip()] = float(price)
    return Settings(
        home=home,
        database_url=env.get("LORAFLEET_DATABASE_URL", f"sqlite:///{home / 'registry.db'}"),
        broker_url=env.get("LORAFLEET_BROKER_URL", f"sqla+sqlite:///{home / 'broker.db'}"),
        artifacts=Path(env.get("LORAFLEET_ARTIFACTS", home / "artifacts")).resolve(),
        data_dir=Path(env.get("LORAFLEET_DATA_DIR", "data")).resolve(),
        lease_seconds=int(env.get("LORAFLEET_LEASE_SECONDS", 300)),
        max_attempts=int(env.get("LORAFLEET_MAX_ATTEMPTS", 3)),
        checkpoint_every=int(env.get("LORAFLEET_CHECKPOINT_EVERY", 50)),
        visibility_timeout=int(env.get("LORAFLEET_VISIBILITY_TIMEOUT", 12 * 3600)),
        tenant_max_running=int(env.get("LORAFLEET_TENANT_MAX_RUNNING", 2)),
        queue=env.get("LORAFLEET_QUEUE", "gpu"),
        prices=prices,
    )


@cache
def get_settings() -> Settings:
    return load_settings()
