"""Typed errors of the services. Each message says what was wrong and what is allowed.

The retry policy is not decided here: callers (the worker's task wrapper, the CLI) classify.
Permanent for the request: NotFound, Conflict, InvalidState, InvalidInput, BatchError.
`LeaseLost` tells a worker to stop working on a job (someone else owns it now);
`WorkerEnvironmentError` says a job failed because of the worker, not of itself.
"""

from __future__ import annotations

from lora_engine.errors import LoraFleetInputError, listed


class ServiceError(Exception):
    """Base class: a request the registry refuses, with a clear message."""


class NotFound(ServiceError, LookupError):
    """No such tenant / job / adapter (or it belongs to another tenant)."""


class Conflict(ServiceError):
    """The request clashes with existing state (duplicate slug, idempotency key reused)."""


class InvalidState(ServiceError):
    """The job or adapter is not in a state that allows this (e.g. cancel a finished job)."""


class Unauthenticated(ServiceError):
    """An API key that is unknown, revoked or expired; the message says which (never the key)."""


class LeaseLost(ServiceError):
    """The worker no longer owns the job's lease (expired and reclaimed, or the job ended)."""


class WorkerEnvironmentError(Exception):
    """The worker's own environment failed an attempt, not the job: a path of the worker's
    configuration (its working folder, data folder, model cache, artifacts root) is missing or
    unreadable. `problems`: one line each, naming the path and the setting behind it."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("; ".join(self.problems))


class InvalidInput(ServiceError, LoraFleetInputError):
    """Bad input to a service (tenant slug, batch item shape, unknown usage field...)."""


class QuotaExceeded(InvalidInput):
    """The tenant's quota (queued jobs, device-hours this month, storage) does not allow this."""


class TooLarge(InvalidInput):
    """An upload past its size cap (the API answers 413); the message names the cap's setting."""


class BatchError(InvalidInput):
    """Some items of a batch are invalid; nothing was queued. `problems`: {index: [problem]}; the
    message lists them, bounded like every list of problems (`lora_engine.errors.listed`)."""

    def __init__(self, problems: dict[int, list[str]]):
        self.problems = dict(sorted(problems.items()))
        lines = [f"item {i}: {p}" for i, ps in self.problems.items() for p in ps]
        n = len(self.problems)
        super().__init__(f"batch rejected, nothing was queued: {n} invalid item(s):\n" + listed(lines, "  "))
