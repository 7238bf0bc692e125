"""Worker observability without a worker process: JSON log lines that name the job and tenant,
and the start-up checks (`lorafleet worker` refuses to start when artifacts are not writable).
The exporter and the logs of a real worker are checked in tests/integration/test_cli_terminal.py."""

from __future__ import annotations

import json
import logging

from click.testing import CliRunner

from orchestrator.cli.main import cli
from orchestrator.config import get_settings, load_settings
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
