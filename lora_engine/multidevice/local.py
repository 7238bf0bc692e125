"""A tensor's part on this rank: its local shard when FSDP sharded it (a DTensor), else itself.

Imports nothing of `torch.distributed.tensor` (over half a second): a DTensor exists only once
that module was imported, so a process that never did holds none.
"""

from __future__ import annotations

import sys

import torch


def local_view(t: torch.Tensor) -> torch.Tensor:
    dtensor = sys.modules.get("torch.distributed.tensor")
    return t.to_local() if dtensor is not None and isinstance(t, dtensor.DTensor) else t
