"""Worker log lines: text (Celery's format) or one JSON object per line (`--log-format json`,
LORAFLEET_LOG_FORMAT=json), each carrying the job and tenant it is about.

The runner binds the job it claimed (`bind_job`) inside a `job_scope` that ends with the attempt
(the task opens one for the whole message too), so every line logged in between — ours, Celery's,
the engine's — names the job, and a log pipeline can filter one tenant's lines without parsing
messages.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

from celery.signals import after_setup_logger, after_setup_task_logger

_JOB: ContextVar[dict[str, str] | None] = ContextVar("lorafleet_job", default=None)


def bind_job(job_id: str, tenant_id: str) -> None:
    _JOB.set({"job_id": job_id, "tenant_id": tenant_id})


@contextmanager
def job_scope() -> Iterator[None]:
    """Lines logged after the block no longer name the block's job."""
    token = _JOB.set(None)
    try:
        yield
    finally:
        _JOB.reset(token)


class JobFilter(logging.Filter):
    """Adds `job_id` and `tenant_id` (None outside a job) to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        job = _JOB.get() or {}
        record.job_id = job.get("job_id")
        record.tenant_id = job.get("tenant_id")
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message, job_id, tenant_id (+ exc, task)."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "job_id": getattr(record, "job_id", None),
            "tenant_id": getattr(record, "tenant_id", None),
        }
        task_id = getattr(record, "task_id", None)
        if task_id and task_id != "???":
            out["task_id"] = task_id
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)  # newlines escaped: still one line
        return json.dumps(out, default=str)


def configure(logger: logging.Logger, log_format: str) -> None:
    """Give `logger`'s handlers the job filter, and the JSON format when asked for."""
    for handler in logger.handlers:
        if not any(isinstance(f, JobFilter) for f in handler.filters):
            handler.addFilter(JobFilter())
        if log_format == "json":
            handler.setFormatter(JsonFormatter())


def _on_setup(logger: logging.Logger, **_: Any) -> None:
    from orchestrator.config import get_settings

    configure(logger, get_settings().log_format)


after_setup_logger.connect(_on_setup, weak=False)
after_setup_task_logger.connect(_on_setup, weak=False)
