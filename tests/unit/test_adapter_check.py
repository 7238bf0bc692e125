"""The torch-free weights check at the door: every floating-point dtype safetensors names, its
largest and smallest finite values accepted, NaN and both infinities refused naming the tensor."""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import save_file

from lora_engine.adapters.check import weights_problem

DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.float8_e5m2, torch.float8_e4m3fn]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_finite_extremes_pass_and_nan_or_inf_is_named(tmp_path, dtype):
    info = torch.finfo(dtype)
    finite = torch.tensor([info.max, info.min, info.tiny, -info.tiny, 0.0, 1.0], dtype=torch.float64)
    finite = finite.to(dtype)
    path = tmp_path / "w.safetensors"
    save_file({"a": finite, "b": torch.ones(3, dtype=torch.int64)}, str(path))
    assert weights_problem(path) is None
    for bad in (float("nan"), float("inf"), float("-inf")):
        if dtype == torch.float8_e4m3fn and math.isinf(bad):
            continue  # e4m3fn has no infinity (torch saturates it to the largest finite value)
        poisoned = torch.cat([finite, torch.tensor([bad], dtype=torch.float64).to(dtype)])
        save_file({"a": finite, "lora_B": poisoned}, str(path))
        assert "holds NaN or infinite values in tensor 'lora_B'" in weights_problem(path)


def test_a_large_tensor_is_checked_in_bounded_chunks(tmp_path):
    big = torch.zeros(5_000_000)
    big[-1] = float("nan")  # past the first chunk
    path = tmp_path / "w.safetensors"
    save_file({"big": big}, str(path))
    assert "tensor 'big'" in weights_problem(path)
