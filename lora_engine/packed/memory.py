"""How many jobs and tokens a pack may hold: activation memory per token, measured, against free memory.

A packed round's memory beyond the resident base is its activations: the tensors autograd keeps
from the forward for the backward, which grow with the round's tokens (the adapters, their
gradients and optimizer states are a few MB per job). `measure_activations` counts exactly those
bytes over one real packed step (saved-tensor hooks: every tensor saved for the backward, each
storage once, the model's own parameters left out), on any device; divided by the step's tokens it
gives the base's bytes per token at these sequence lengths. It is measured once per worker and base.

`plan_pack` is the arithmetic: a round may use `fraction` of the free memory (CUDA
`mem_get_info`, else the host's available RAM), the rest is left for the backward's transient
buffers, the allocator's slack and everything else on the machine.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import torch
from torch import nn

# An unconfigured K is bounded by memory and by this: beyond it a round's operations are already
# large, and one slow job's setup or evaluation would hold up many others.
AUTO_MAX_JOBS = 16


@dataclass(frozen=True)
class Probe:
    """One measured packed step."""

    saved_bytes: int  # bytes autograd kept for the backward (each storage once, parameters left out)
    tokens: int  # real tokens of that step

    @property
    def bytes_per_token(self) -> float:
        return self.saved_bytes / max(self.tokens, 1)


@dataclass(frozen=True)
class PackPlan:
    """The limits a pack runs under, and what they came from (logged, and kept in the registry)."""

    max_jobs: int
    max_tokens: int | None  # a round's Σ batch_size × max_length; None: no budget
    free_bytes: int | None = None
    fraction: float | None = None
    bytes_per_token: float | None = None
    probe_tokens: int | None = None

    def to_dict(self) -> dict:
        out = asdict(self)
        if self.bytes_per_token is not None:
            out["bytes_per_token"] = round(self.bytes_per_token, 1)
        return out


def plan_pack(*, free_bytes: int, bytes_per_token: float, job_tokens: int, fraction: float,
              max_jobs: int | None = None, max_tokens: int | None = None,
              job_cap: int = AUTO_MAX_JOBS) -> tuple[int, int]:
    """(K, token budget per round). Configured values are kept; the token budget is what
    `fraction` of `free_bytes` holds at `bytes_per_token`; K is as many jobs of `job_tokens`
    (batch_size × max_length of a typical job) as that budget holds, at least 1, at most `job_cap`.
    A pack always takes its first job, so a budget below one job's tokens still runs that job."""
    if bytes_per_token <= 0 or job_tokens <= 0 or not 0 < fraction <= 1 or free_bytes < 0:
        raise ValueError(f"plan_pack needs bytes_per_token > 0, job_tokens > 0, 0 < fraction <= 1 and "
                         f"free_bytes >= 0; got {bytes_per_token}, {job_tokens}, {fraction}, {free_bytes}")
    tokens = max_tokens if max_tokens is not None else int(fraction * free_bytes // bytes_per_token)
    jobs = max_jobs if max_jobs is not None else max(1, min(job_cap, tokens // job_tokens))
    return jobs, tokens


def free_memory(device: torch.device) -> int:
    """Bytes free for a round's activations: CUDA's free device memory, else the host's available
    RAM (psutil when installed, else /proc/meminfo's MemAvailable)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        import psutil
    except ImportError:
        return _meminfo_available()
    return int(psutil.virtual_memory().available)


def _meminfo_available(path: str = "/proc/meminfo") -> int:
    with open(path) as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{path} has no MemAvailable line: set LORAFLEET_PACK_MAX_TOKENS instead")


class SavedBytes:
    """The bytes of every tensor autograd saves while active (one count per storage)."""

    def __init__(self, model: nn.Module):
        self._params = {p.untyped_storage().data_ptr() for p in model.parameters()}
        self._storages: dict[int, int] = {}

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in self._params:
            self._storages[ptr] = storage.nbytes()
        return t

    @property
    def total(self) -> int:
        return sum(self._storages.values())


@contextmanager
def measure_activations(model: nn.Module) -> Iterator[SavedBytes]:
    counter = SavedBytes(model)
    with torch.autograd.graph.saved_tensors_hooks(counter._pack, lambda t: t):
        yield counter
