"""A pack's limits from memory: the activation bytes a round keeps for its backward, measured
exactly, and the arithmetic that turns them and the free memory into K and a token budget."""

from __future__ import annotations

import pytest
import torch

from lora_engine.packed.memory import (
    AUTO_MAX_JOBS,
    _meminfo_available,
    free_memory,
    measure_activations,
    plan_pack,
)

GIB = 2**30


@pytest.mark.parametrize(
    ("free", "per_token", "job_tokens", "fraction", "jobs", "tokens", "expected"),
    [
        (8 * GIB, 4096, 1024, 0.5, None, None, (AUTO_MAX_JOBS, 1_048_576)),  # memory is not the limit
        (GIB, 65536, 1024, 0.5, None, None, (8, 8192)),  # 512 MiB / 64 KiB per token
        (GIB, 65536, 1024, 0.25, None, None, (4, 4096)),
        (GIB, 65536, 3000, 0.5, None, None, (2, 8192)),  # whole jobs only: 8192 // 3000
        (GIB, 65536, 10_000, 0.5, None, None, (1, 8192)),  # one job always runs, alone
        (0, 65536, 1024, 0.5, None, None, (1, 0)),
        (GIB, 65536, 1024, 0.5, 3, None, (3, 8192)),  # a configured K is kept, the budget planned
        (GIB, 65536, 1024, 0.5, None, 2048, (2, 2048)),  # a configured budget sets K
        (GIB, 65536, 1024, 0.5, 5, 999, (5, 999)),
    ],
)
def test_plan_pack_table(free, per_token, job_tokens, fraction, jobs, tokens, expected):
    assert plan_pack(free_bytes=free, bytes_per_token=per_token, job_tokens=job_tokens, fraction=fraction,
                     max_jobs=jobs, max_tokens=tokens) == expected


@pytest.mark.parametrize("bad", [{"bytes_per_token": 0}, {"job_tokens": 0}, {"fraction": 0.0},
                                 {"fraction": 1.5}, {"free_bytes": -1}])
def test_plan_pack_refuses_nonsense(bad):
    args = {"free_bytes": GIB, "bytes_per_token": 1.0, "job_tokens": 8, "fraction": 0.5, **bad}
    with pytest.raises(ValueError, match="plan_pack needs"):
        plan_pack(**args)


def test_measure_counts_what_autograd_saves_once_and_not_the_parameters():
    lin = torch.nn.Linear(16, 8, bias=False)  # saves its input (the weight is a parameter)
    x = torch.randn(10, 16, requires_grad=True)
    with measure_activations(lin) as saved:
        y = lin(x)
        z = (y * y).sum() + (y * y).mean()  # y saved by both products: counted once
    assert saved.total == 10 * 16 * 4 + 10 * 8 * 4
    z.backward()  # the tensors still work as saved
    assert x.grad is not None


def test_free_memory_reads_the_host(tmp_path):
    assert free_memory(torch.device("cpu")) > 0
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       16000000 kB\nMemFree:         1000 kB\nMemAvailable:    2048 kB\n")
    assert _meminfo_available(str(meminfo)) == 2048 * 1024
    meminfo.write_text("MemTotal:       16000000 kB\n")
    with pytest.raises(RuntimeError, match="LORAFLEET_PACK_MAX_TOKENS"):
        _meminfo_available(str(meminfo))
