"""Every path under the artifacts root, in one place; built from ids only, never from names a user
typed, so no tenant input can point the worker or `adapter delete` outside the root.

    <artifacts>/<tenant_id>/<adapter_id>/                  a published adapter (one rename: atomic)
    <artifacts>/<tenant_id>/checkpoints/<job_id>/          a job's checkpoints, kept across attempts
    <artifacts>/<tenant_id>/.staging/<job_id>-<attempt>/   where one attempt writes before publishing
    <artifacts>/<tenant_id>/.staging/<job_id>-<attempt>.inputs/   what one attempt reads that is
                                                           put together for it (a data set with the
                                                           validation file that replaces its split)

Checkpoints are keyed by the job, not the attempt: a requeued or retried job (on any worker that
shares the volume) resumes from the last one. Staging is keyed by the attempt: a late writer from
a lost attempt never mixes files with the attempt that owns the job now. Staging lives on the same
file system as the final folder, so publishing is a rename, not a copy.
"""

from __future__ import annotations

import uuid
from pathlib import Path

from orchestrator.config import Settings
from orchestrator.errors import InvalidInput


def _uuid(value: str, what: str) -> str:
    try:
        return str(uuid.UUID(value))
    except (ValueError, TypeError, AttributeError) as exc:
        raise InvalidInput(f"{what} must be a UUID (got {value!r})") from exc


def tenant_root(settings: Settings, tenant_id: str) -> Path:
    return settings.artifacts / _uuid(tenant_id, "tenant_id")


def adapter_path(settings: Settings, tenant_id: str, adapter_id: str) -> Path:
    """`<artifacts>/<tenant_id>/<adapter_id>` (not created: it appears by one rename)."""
    return tenant_root(settings, tenant_id) / _uuid(adapter_id, "adapter_id")


def checkpoint_path(settings: Settings, tenant_id: str, job_id: str) -> Path:
    """`<artifacts>/<tenant_id>/checkpoints/<job_id>`: the job's training checkpoints."""
    return tenant_root(settings, tenant_id) / "checkpoints" / _uuid(job_id, "job_id")


def staging_path(settings: Settings, tenant_id: str, job_id: str, attempt: int) -> Path:
    """`<artifacts>/<tenant_id>/.staging/<job_id>-<attempt>`: one attempt's unpublished output."""
    if not isinstance(attempt, int) or attempt < 1:
        raise ValueError(f"attempt is 1-based (got {attempt!r})")
    return tenant_root(settings, tenant_id) / ".staging" / f"{_uuid(job_id, 'job_id')}-{attempt}"


def inputs_path(settings: Settings, tenant_id: str, job_id: str, attempt: int) -> Path:
    """`<artifacts>/<tenant_id>/.staging/<job_id>-<attempt>.inputs`: one attempt's assembled inputs."""
    staging = staging_path(settings, tenant_id, job_id, attempt)
    return staging.with_name(staging.name + ".inputs")
