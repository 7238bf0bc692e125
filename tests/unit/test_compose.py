"""docker-compose.yml: valid for `docker-compose config`, with every cluster service wired up."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKER_COMPOSE = shutil.which("docker-compose") or "/usr/bin/docker-compose"


@pytest.fixture(scope="module")
def config() -> dict:
    """The file as docker-compose resolves it (anchors merged, variables substituted)."""
    out = subprocess.run(
        [DOCKER_COMPOSE, "-f", str(ROOT / "docker-compose.yml"), "config"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return yaml.safe_load(out.stdout)


def test_services_exist(config):
    assert {"postgres", "redis", "migrate", "worker", "reconciler", "flower"} <= set(config["services"])


def test_worker_reserves_an_nvidia_gpu(config):
    devices = config["services"]["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) for d in devices)


def test_migrate_runs_db_upgrade_before_workers(config):
    services = config["services"]
    assert services["migrate"]["command"] == ["lorafleet", "db", "upgrade"]
    for name in ("worker", "reconciler"):
        assert services[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_cluster_services_share_registry_and_broker(config):
    services = config["services"]
    envs = [services[name]["environment"] for name in ("migrate", "worker", "reconciler")]
    for env in envs:
        assert env["LORAFLEET_DATABASE_URL"].startswith("postgresql")
        assert env["LORAFLEET_BROKER_URL"].startswith("redis://redis:")
    assert {env["LORAFLEET_DATABASE_URL"] for env in envs} == {envs[0]["LORAFLEET_DATABASE_URL"]}
    assert "reconcile" in services["reconciler"]["command"]
    assert "flower" in services["flower"]["command"]


def test_workers_export_prometheus_metrics_and_keep_the_shared_environment(config):
    worker = config["services"]["worker"]
    assert worker["environment"]["LORAFLEET_METRICS_PORT"] == "9400"
    assert worker["environment"]["LORAFLEET_BROKER_URL"] == "redis://redis:6379/0"  # merged, not replaced
    assert "--log-format" in worker["command"]
