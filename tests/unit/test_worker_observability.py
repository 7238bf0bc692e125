"""Worker observability without a worker process: JSON log lines that name the job and tenant,
the start-up checks (`lorafleet worker` refuses to start when artifacts are not writable) and the
address the Prometheus exporter listens on. The exporter and the logs of a real worker are
checked in tests/integration/test_cli_terminal.py."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from orchestrator.cli.main import cli
from orchestrator.config import ConfigError, get_settings, load_settings
from worker import logs, preflight


def test_json_lines_name_the_job_and_tenant():
    stream_records: list[str] = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            stream_records.append(self.format(record))

    logger = logging.getLogger("lorafleet-test-json")
    handler = Capture()
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logs.configure(logger, "json")
    try:
        with logs.job_scope():
            logs.bind_job("job-1", "tenant-1")
            logger.info("step %d", 3)
            try:
                raise ValueError("bad\nthing")
            except ValueError:
                logger.exception("failed")
        logger.info("after")
    finally:
        logger.removeHandler(handler)
    lines = [json.loads(line) for line in stream_records]
    assert all("\n" not in line for line in stream_records)
    assert (lines[0]["message"], lines[0]["job_id"], lines[0]["tenant_id"], lines[0]["level"]) == (
        "step 3", "job-1", "tenant-1", "info")
    assert "ValueError: bad\nthing" in lines[1]["exc"]
    assert lines[2]["job_id"] is None


def test_preflight_and_the_worker_command(tmp_path, monkeypatch):
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    settings = load_settings({"LORAFLEET_HOME": str(tmp_path), "LORAFLEET_ARTIFACTS": str(blocked / "a"),
                              "LORAFLEET_DATA_DIR": str(tmp_path / "no-data")})
    result = preflight.check(settings)
    assert len(result.fatal) == 1 and "is not writable" in result.fatal[0]
    assert any("has no glue or e2e" in w for w in result.warnings)

    monkeypatch.setenv("LORAFLEET_HOME", str(tmp_path))
    monkeypatch.setenv("LORAFLEET_ARTIFACTS", str(blocked / "a"))
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    get_settings.cache_clear()
    try:
        out = CliRunner().invoke(cli, ["worker", "--log-format", "json"])
    finally:
        get_settings.cache_clear()
    assert out.exit_code == 1 and out.stderr.startswith("Error: the worker cannot start: artifacts folder")
    import os

    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE" and os.environ["LORAFLEET_LOG_FORMAT"] == "json"
    os.environ.pop("LORAFLEET_LOG_FORMAT")  # set by the command itself, not by monkeypatch


# Starts the exporter as a worker does, then prints the addresses listening on its port.
LISTENING = """
from orchestrator.config import get_settings
from worker import exporter

port = exporter.start(get_settings())
for table in ("/proc/net/tcp", "/proc/net/tcp6"):
    for line in open(table).read().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
            print(local.rsplit(":", 1)[0])
"""


def test_the_exporter_listens_on_the_loopback_unless_configured(tmp_path: Path):
    def free_port() -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    def exporter(**env: str) -> subprocess.Popen:
        inherited = {k: v for k, v in os.environ.items() if k != "LORAFLEET_METRICS_HOST"}
        env = {**inherited, "LORAFLEET_HOME": str(tmp_path), "LORAFLEET_METRICS_PORT": str(free_port()),
               **env}
        return subprocess.Popen([sys.executable, "-c", LISTENING], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)

    default, configured = exporter(), exporter(LORAFLEET_METRICS_HOST="127.0.0.2")
    outputs = [proc.communicate(timeout=60) for proc in (default, configured)]
    assert [proc.returncode for proc in (default, configured)] == [0, 0], outputs
    assert outputs[0][0].split() == ["0100007F"]  # 127.0.0.1 only
    assert outputs[1][0].split() == ["0200007F"]  # the configured address


def test_the_metrics_host_setting_refuses_what_is_no_address():
    with pytest.raises(ConfigError, match=r"LORAFLEET_METRICS_HOST.*an IP address or host name"):
        load_settings({"LORAFLEET_METRICS_HOST": "http://example.org/ x"})
    assert load_settings({}).metrics_host == "127.0.0.1"
