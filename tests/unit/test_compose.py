"""docker-compose.yml: valid for `docker-compose config`, with every cluster service wired up, its
secrets read from an env file (`.env`, documented by `.env.example`) and nothing published beyond
127.0.0.1 unless the operator says so."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKER_COMPOSE = shutil.which("docker-compose") or "/usr/bin/docker-compose"
EXAMPLE = ROOT / ".env.example"
SECRETS = {"POSTGRES_PASSWORD": "pg-secret-1", "FLOWER_USER": "ops", "FLOWER_PASSWORD": "flower-secret-2"}


def example_variables() -> dict[str, str]:
    """The variables `.env.example` sets, with their example values."""
    pairs = (line.split("=", 1) for line in EXAMPLE.read_text().splitlines()
             if line and not line.startswith("#"))
    return {name: value for name, value in pairs}


def compose_config(tmp_path: Path, **values: str) -> subprocess.CompletedProcess[str]:
    """`docker-compose config` with `.env.example` (secrets filled in by `values`) as the env file,
    and none of its variables taken from the caller's environment."""
    env_file = tmp_path / "test.env"
    variables = {**example_variables(), **values}
    env_file.write_text("".join(f"{name}={value}\n" for name, value in variables.items()))
    env = {k: v for k, v in os.environ.items() if k not in variables}
    command = [DOCKER_COMPOSE, "--env-file", str(env_file), "-f", str(ROOT / "docker-compose.yml"), "config"]
    return subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env, timeout=60)


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The file as docker-compose resolves it (anchors merged, variables substituted)."""
    out = compose_config(tmp_path_factory.mktemp("compose"), **SECRETS)
    assert out.returncode == 0, out.stderr
    return yaml.safe_load(out.stdout)


def published(port: str | dict) -> tuple[str, str]:
    """(host address, host port) of one `ports` entry as `config` renders it (v1: a string
    `ip:port:target/proto`, v2: a mapping)."""
    if isinstance(port, dict):
        return port.get("host_ip", ""), str(port.get("published", ""))
    parts = port.split("/")[0].rsplit(":", 2)
    return (parts[0], parts[1]) if len(parts) == 3 else ("", parts[0] if len(parts) == 2 else "")


def test_services_exist(config):
    assert {"postgres", "redis", "migrate", "worker", "reconciler", "flower", "api", "serve"} <= \
        set(config["services"])


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
    assert worker["environment"]["LORAFLEET_METRICS_HOST"] == "127.0.0.1"  # opened only by .env
    assert worker["environment"]["LORAFLEET_BROKER_URL"] == "redis://redis:6379/0"  # merged, not replaced
    assert "--log-format" in worker["command"]
    assert "ports" not in worker


def test_the_api_serves_the_shared_registry_on_localhost_with_metrics_unpublished(config, tmp_path: Path):
    services = config["services"]
    api = services["api"]
    assert api["command"][:3] == ["lorafleet", "api", "serve"]
    registry = services["worker"]["environment"]["LORAFLEET_DATABASE_URL"]
    assert api["environment"]["LORAFLEET_DATABASE_URL"] == registry
    assert api["environment"]["LORAFLEET_BROKER_URL"].startswith("redis://redis:")  # counts in Redis
    assert api["environment"]["LORAFLEET_API_METRICS_PORT"] == "9464"
    assert api["environment"]["LORAFLEET_METRICS_HOST"] == "127.0.0.1"
    assert [published(p) for p in api["ports"]] == [("127.0.0.1", "8000")]
    assert api["depends_on"]["migrate"]["condition"] == "service_completed_successfully"


def test_the_inference_server_reserves_a_gpu_and_serves_the_shared_registry(config):
    services = config["services"]
    serve = services["serve"]
    assert serve["command"][:2] == ["lorafleet", "serve"]
    devices = serve["deploy"]["resources"]["reservations"]["devices"]
    assert any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) and int(d["count"]) == 1
               for d in devices)
    registry = services["worker"]["environment"]["LORAFLEET_DATABASE_URL"]
    assert serve["environment"]["LORAFLEET_DATABASE_URL"] == registry
    assert serve["environment"]["LORAFLEET_SERVE_METRICS_PORT"] == "9465"
    assert [published(p) for p in serve["ports"]] == [("127.0.0.1", "8001")]
    assert serve["depends_on"]["migrate"]["condition"] == "service_completed_successfully"


def test_secrets_come_from_the_env_file_only(config, tmp_path: Path):
    services = config["services"]
    password = SECRETS["POSTGRES_PASSWORD"]
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD"] == password
    assert services["migrate"]["environment"]["LORAFLEET_DATABASE_URL"] == \
        f"postgresql+psycopg://lorafleet:{password}@postgres:5432/lorafleet"
    # The committed files hold no secret: the compose file names variables, the example leaves them empty.
    raw = (ROOT / "docker-compose.yml").read_text()
    assert re.search(r"PASSWORD:\s*[\"']?\$\{POSTGRES_PASSWORD:\?", raw)
    assert "lorafleet:${POSTGRES_PASSWORD:?" in raw and not re.search(r"lorafleet:[^$]\S*@postgres", raw)
    assert all(example_variables()[name] == "" for name in SECRETS)
    assert ".env" in (ROOT / ".gitignore").read_text().split()
    # Without its secrets (the example as it is), docker-compose refuses to run, naming the
    # variable and where to set it; every secret is read that way.
    refused = compose_config(tmp_path)
    assert refused.returncode != 0 and re.search(r"set \w+ in \.env, see \.env\.example", refused.stderr)
    for name in SECRETS:
        assert f"${{{name}:?set {name} in .env, see .env.example}}" in raw, name


def test_flower_needs_a_login_and_nothing_is_published_beyond_localhost(config, tmp_path: Path):
    flower = config["services"]["flower"]
    assert flower["environment"]["FLOWER_BASIC_AUTH"] == "ops:flower-secret-2"  # FLOWER_USER:FLOWER_PASSWORD
    assert SECRETS["POSTGRES_PASSWORD"] not in str(flower)  # the web-facing service: no database password
    assert [published(p) for p in flower["ports"]] == [("127.0.0.1", "5555")]
    for name, service in config["services"].items():
        assert all(published(p)[0] == "127.0.0.1" for p in service.get("ports", [])), name
    # The operator may publish on another address of the host, and only by saying so.
    opened = compose_config(tmp_path, **SECRETS, LORAFLEET_PUBLISH_HOST="192.0.2.10", FLOWER_PORT="8555")
    assert opened.returncode == 0, opened.stderr
    ports = yaml.safe_load(opened.stdout)["services"]["flower"]["ports"]
    assert [published(p) for p in ports] == [("192.0.2.10", "8555")]


def test_the_example_env_file_lists_every_variable_the_compose_file_reads():
    read = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", (ROOT / "docker-compose.yml").read_text()))
    assert read == set(example_variables())
    text = EXAMPLE.read_text()
    for name in read:  # each one documented: a comment right above its line
        assert re.search(rf"^# .*\n(?:# .*\n|[A-Z_]+=.*\n)*{name}=", text, re.M), name
