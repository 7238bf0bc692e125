"""The solo runner: claim one job and run it through its kind's executor, as one `Attempt`:

    claim (atomic, fair share) → Attempt.start (heartbeat, keep-alive) → the kind's executor
      (`worker.kinds`) with the attempt's context → Attempt.succeed(result) | Attempt.settle(error)

Everything around the work (heartbeat, cancel, inputs, publishing, recording, the one retry
decision) is `worker.attempt`'s, shared with the packed worker (`worker.packed`).

The base model stays resident between jobs (`BaseModelCache`, one per worker process): the next
job on the same base only re-creates its LoRA parameters and head.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Any

from orchestrator.config import Settings, get_settings
from orchestrator.registry.db import session_scope
from worker.attempt import Attempt, RunResult
from worker.logs import bind_job, job_scope
from worker.presence import device

log = logging.getLogger(__name__)

_model_cache: Any = None
# `cache=WARM_CACHE`: this process's resident base model (`model_cache()`); None: no cache.
WARM_CACHE: Any = object()


def model_cache() -> Any:
    """This process's warm BaseModelCache (created on first use; torch loads here, not at import)."""
    global _model_cache
    if _model_cache is None:
        from lora_engine.cache import BaseModelCache

        _model_cache = BaseModelCache()
    return _model_cache


def reset_model_cache() -> None:
    """Forget the resident base model (after a fork, or to measure a cold start)."""
    global _model_cache
    _model_cache = None


def cache_for(cache: Any) -> Any:
    """The cache a run uses: `WARM_CACHE` → this process's, anything else as given."""
    return model_cache() if cache is WARM_CACHE else cache


def default_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def run_job(
    job_id: str,
    *,
    worker_id: str | None = None,
    settings: Settings | None = None,
    cache: Any = WARM_CACHE,
) -> RunResult:
    """Claim and run one job (the message named `job_id`; fair share may pick another queued job).

    Never raises for a job's own failure: the outcome is recorded in the registry and returned.
    `cache=None` disables the warm base-model cache (benchmarks).
    """
    from orchestrator.services.leases import claim_next, unclaimable_reason
    from worker.kinds import executor_for

    settings = settings or get_settings()
    worker_id = worker_id or default_worker_id()
    with session_scope(settings) as session:
        kind = device()[0]
        job = claim_next(session, worker_id, settings.lease_seconds, devices=settings.worker_devices,
                         device_kind=kind, message=job_id)
        if job is None:
            reason = unclaimable_reason(session, job_id, settings.worker_devices, kind)
            log.info("nothing to claim for message %s: %s", job_id, reason)
            return RunResult("skipped", None, reason)
        attempt = Attempt.of(settings, worker_id, job, cache_for(cache))
    ctx = attempt.ctx
    # Every log line until the attempt ends names the job and its tenant, and none after it (a
    # caller that runs jobs in its own thread, as the benches and tests do, gets its context back).
    with job_scope():
        bind_job(ctx.job_id, ctx.tenant_id)
        log.info("claimed %s job %s (attempt %d) as %s", ctx.kind, ctx.job_id, ctx.attempt, worker_id)
        attempt.start()
        try:
            try:
                result = executor_for(ctx.kind)(attempt.context())
            finally:
                attempt.stop()
            return attempt.succeed(result)
        except Exception as exc:  # classified by the attempt; a bug surfaces as a requeue with its traceback
            return attempt.settle(exc)
        finally:
            attempt.close()
