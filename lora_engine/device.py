"""Where a run executes: device choice, mixed precision, seeding, and peak-memory accounting.

CUDA when available, with bf16 autocast (weights and optimizer state stay fp32: autocast only
lowers the matmuls, so LoRA's small updates are not lost to bf16's 8-bit mantissa); else the CPU
in fp32, where a seeded run is bit-for-bit repeatable.

Peak memory is what a job is billed and scheduled by: on CUDA the allocator's
`max_memory_allocated`; on the CPU the process's peak resident set during the run (see PeakMemory).
"""

from __future__ import annotations

import contextlib
import os
import random
import resource
import sys
import threading
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class DeviceInfo:
    """The chosen device and its precision policy."""

    device: torch.device
    name: str  # "cpu" or "cuda:<product name>", the key the cost report prices by
    autocast_dtype: torch.dtype | None  # bf16 on CUDA, None (fp32) on the CPU

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"


def pick_device(prefer: str | None = None) -> DeviceInfo:
    """CUDA (bf16 autocast where supported) when present, else the CPU.

    `prefer="cpu"` (or env LORAFLEET_DEVICE=cpu) forces the CPU, e.g. for exact-resume tests.
    """
    prefer = _preference(prefer)
    if prefer == "cuda" and not torch.cuda.is_available():
        raise ValueError("device: 'cuda' was asked for but no CUDA device is available")
    if prefer != "cpu" and torch.cuda.is_available():
        dev = torch.device("cuda", torch.cuda.current_device())
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else None
        return DeviceInfo(dev, f"cuda:{torch.cuda.get_device_name(dev)}", dtype)
    return DeviceInfo(torch.device("cpu"), "cpu", None)


def device_kind(prefer: str | None = None) -> str:
    """"cuda" or "cpu", the kind `pick_device` chooses, without initialising CUDA: torch counts
    the devices through NVML, so a process that forks workers afterwards (a Celery worker choosing
    the queues it consumes) leaves them a usable CUDA."""
    prefer = _preference(prefer)
    if prefer == "cpu":
        return "cpu"
    if torch.cuda.device_count() > 0:
        return "cuda"
    if prefer == "cuda":
        raise ValueError("device: 'cuda' was asked for but no CUDA device is available")
    return "cpu"


def _preference(prefer: str | None) -> str | None:
    prefer = prefer or os.environ.get("LORAFLEET_DEVICE")
    if prefer not in (None, "", "auto", "cpu", "cuda"):
        raise ValueError(f"device: unknown choice {prefer!r}; allowed: auto, cpu, cuda")
    return prefer


def autocast(info: DeviceInfo):
    """bf16 autocast on CUDA; a no-op context on the CPU (fp32 keeps CPU runs exact)."""
    if info.autocast_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=info.device.type, dtype=info.autocast_dtype)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _max_rss_bytes() -> int:
    # ru_maxrss is KiB on Linux and bytes on macOS.
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)


def _current_rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return _max_rss_bytes()


class PeakMemory:
    """A run's peak memory: CUDA `max_memory_allocated`, else the process's peak resident set.

    On the CPU `ru_maxrss` is the process's all-time high, which a warm worker's earlier, larger
    job may already have set; so a daemon thread also samples the current RSS every `interval` s
    and the peak is the larger of the sampled maximum and `ru_maxrss` when it rose during the run.
    The figure is absolute (the resident base model and the runtime included), so a cold and a warm
    run of the same job report about the same memory, comparable with a plain script's ru_maxrss.
    Use `start()` before loading the model and `peak_bytes()` (which stops sampling) at the end.
    """

    def __init__(self, info: DeviceInfo, interval: float = 0.02):
        self.info = info
        self.interval = interval
        self._max_rss_at_start = 0
        self._sampled = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.loaded: int | None = None
        self.peak: int | None = None

    def start(self) -> None:
        if self.info.is_cuda:
            torch.cuda.reset_peak_memory_stats(self.info.device)
            return
        self._max_rss_at_start = _max_rss_bytes()
        self._sampled = _current_rss_bytes()
        self._stop.clear()
        self._thread = threading.Thread(target=self._sample, name="peak-rss", daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self._sampled = max(self._sampled, _current_rss_bytes())

    def mark_loaded(self) -> None:
        """The memory now, with the model loaded and before the first step: what the activations
        (and the optimizer's state) come on top of."""
        self.loaded = (int(torch.cuda.memory_allocated(self.info.device)) if self.info.is_cuda
                       else _current_rss_bytes())

    def activation_bytes(self) -> int | None:
        """Peak minus the memory at `mark_loaded` (None without it). Call after `peak_bytes`."""
        if self.loaded is None or self.peak is None:
            return None
        return max(self.peak - self.loaded, 0)

    def peak_bytes(self) -> int:
        self.peak = self._peak_bytes()
        return self.peak

    def _peak_bytes(self) -> int:
        if self.info.is_cuda:
            return int(torch.cuda.max_memory_allocated(self.info.device))
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        peak = max(self._sampled, _current_rss_bytes())
        max_rss = _max_rss_bytes()
        if max_rss > self._max_rss_at_start:  # the process's high-water mark was set by this run
            peak = max(peak, max_rss)
        return int(peak)


def synchronize(info: DeviceInfo) -> None:
    """Wait for queued device work so wall-clock timings are honest."""
    if info.is_cuda:
        torch.cuda.synchronize(info.device)
