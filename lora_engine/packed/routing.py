"""Which rows of a packed tensor belong to which job, and each job's own random stream.

A packed step lays the jobs' tokens one job after another: job k owns one contiguous range of the
packed token rows, and one contiguous range of the first-token rows the encoder's last layer
computes. Every layer that routes (the multi-adapter LoRA layer, the per-job dropout) looks its
input's row count up in `Routing` to find those ranges; contiguity makes routing a slice, not an
index gather (mLoRA lays its batches out the same way).

Random streams. A solo run draws its dropout masks from the global torch generator, seeded by the
job's seed, in the order its forward visits the dropout sites. `JobStream` keeps one generator
state per job and installs it as the global one around each of that job's draws, so job k's masks
are exactly the ones its solo run draws (same shapes, same order), whatever else is in the pack.
Its state is also what the job's checkpoint stores as the torch RNG, so a packed checkpoint
resumes alone and a solo checkpoint resumes into a pack.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


class JobStream:
    """One job's torch RNG (CPU and CUDA), swapped in as the global generator while it draws."""

    def __init__(self) -> None:
        self.cpu = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []

    @contextmanager
    def active(self) -> Iterator[None]:
        saved_cpu = torch.get_rng_state()
        saved_cuda = torch.cuda.get_rng_state_all() if self.cuda else []
        torch.set_rng_state(self.cpu)
        if self.cuda:
            torch.cuda.set_rng_state_all(self.cuda)
        try:
            yield
        finally:
            self.cpu = torch.get_rng_state()
            if self.cuda:
                self.cuda = torch.cuda.get_rng_state_all()
            torch.set_rng_state(saved_cpu)
            if saved_cuda:
                torch.cuda.set_rng_state_all(saved_cuda)


@dataclass(frozen=True)
class Segment:
    key: str  # the job's key in the pack
    start: int
    end: int


class Routing:
    """The current packed step's row ranges per job, keyed by the routed tensor's row count."""

    def __init__(self, fused: bool = False) -> None:
        self._by_rows: dict[int, list[Segment]] = {}
        self.streams: dict[str, JobStream] = {}
        # Fused: fewer, larger operations per layer instead of one per job (for launch-bound
        # devices; see layer.py and forward.py); the body's dropout then draws once per site.
        self.fused = fused
        self.cache: dict = {}  # per-step tensors the routed layers share (cleared with the layout)

    def set(self, keys: list[str], *row_counts: list[int]) -> None:
        """One layout per list of per-job row counts (e.g. tokens per job, rows per job)."""
        self._by_rows, self.cache = {}, {}
        for counts in row_counts:
            segments, start = [], 0
            for key, n in zip(keys, counts, strict=True):
                segments.append(Segment(key, start, start + n))
                start += n
            known = self._by_rows.get(start)
            if known is not None and known != segments:
                # Two layouts with one total (only when every row holds one token: then equal).
                raise ValueError(f"ambiguous packed layouts for {start} rows")
            self._by_rows[start] = segments

    def clear(self) -> None:
        self._by_rows, self.cache = {}, {}

    def segments(self, rows: int) -> list[Segment]:
        try:
            return self._by_rows[rows]
        except KeyError:
            raise RuntimeError(f"a routed layer saw {rows} rows, but the packed step laid out "
                               f"{sorted(self._by_rows)}: it was called outside a packed step") from None

    def split(self, x: torch.Tensor) -> list[tuple[Segment, torch.Tensor]]:
        """x's rows cut into the jobs' parts. One split, not K slices: the backward of a slice
        writes its gradient into a zero tensor of x's full size (K full-size fills and adds per
        layer), the backward of a split concatenates the parts once."""
        segments = self.segments(x.shape[0])
        return list(zip(segments, x.split([s.end - s.start for s in segments]), strict=True))

    @property
    def active(self) -> bool:
        return bool(self._by_rows)


class RoutedDropout(nn.Module):
    """nn.Dropout of the shared body, drawn per job from the job's stream within a packed step."""

    def __init__(self, p: float, routing: Routing):
        super().__init__()
        self.p = p
        self.routing = routing

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        if not self.routing.active:
            return F.dropout(x, self.p, True)
        if self.routing.fused:  # one draw for the round, from its first job's stream
            with self.routing.streams[self.routing.segments(x.shape[0])[0].key].active():
                return F.dropout(x, self.p, True)
        parts = []
        for seg, part in self.routing.split(x):
            with self.routing.streams[seg.key].active():
                parts.append(F.dropout(part, self.p, True))
        return torch.cat(parts)

    def extra_repr(self) -> str:
        return f"p={self.p}, per job"
