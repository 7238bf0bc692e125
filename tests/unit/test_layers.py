"""LoRA layers against their formulas: y = W0x + b + s·B·A·x, DoRA, scaling, merge/unmerge."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from lora_engine.layers import LoRAEmbedding, LoRALinear, lora_scaling


def _linear(fan_in_fan_out: bool, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    if fan_in_fan_out:
        layer = Conv1D(12, 8)  # nf=out=12, nx=in=8: weight is (in, out)
        nn.init.normal_(layer.weight)
        nn.init.normal_(layer.bias)
        return layer
    return nn.Linear(8, 12)


def _w_oi(base: nn.Module, fan: bool) -> torch.Tensor:
    return base.weight.detach().t() if fan else base.weight.detach()


def _randomise(layer: LoRALinear, seed: int = 1) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        layer.lora_B.weight.copy_(torch.randn(layer.lora_B.weight.shape, generator=gen))
        if layer.lora_magnitude is not None:
            layer.lora_magnitude.mul_(1 + 0.3 * torch.rand(layer.lora_magnitude.shape, generator=gen))


@pytest.mark.parametrize(("alpha", "r", "rslora", "expected"),
                         [(16, 8, False, 2.0), (16, 4, True, 8.0), (8, 16, False, 0.5), (8, 16, True, 2.0)])
def test_scaling_table(alpha, r, rslora, expected):
    assert lora_scaling(alpha, r, rslora) == pytest.approx(expected)


@pytest.mark.parametrize("fan", [False, True])
def test_zero_b_init_equals_base_and_shapes(fan):
    base = _linear(fan)
    x = torch.randn(3, 5, 8)
    expected = base(x)
    layer = LoRALinear(base, r=4, alpha=8)
    assert layer.lora_A.weight.shape == (4, 8) and layer.lora_B.weight.shape == (12, 4)
    assert torch.count_nonzero(layer.lora_B.weight) == 0 and torch.count_nonzero(layer.lora_A.weight) > 0
    assert layer.weight is base.weight  # the base Parameter itself: base state-dict keys unchanged
    assert isinstance(layer.lora_dropout, nn.Identity)
    torch.testing.assert_close(layer(x), expected, atol=0, rtol=0)


@pytest.mark.parametrize("fan", [False, True])
@pytest.mark.parametrize("rslora", [False, True])
def test_forward_matches_formula(fan, rslora):
    base = _linear(fan)
    layer = LoRALinear(base, r=4, alpha=8, use_rslora=rslora)
    _randomise(layer)
    x = torch.randn(2, 7, 8)
    s = 8 / (math.sqrt(4) if rslora else 4)
    want = x @ _w_oi(base, fan).T + base.bias + s * (x @ layer.lora_A.weight.T) @ layer.lora_B.weight.T
    torch.testing.assert_close(layer(x), want, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(layer(x), base(x), atol=1e-3)


@pytest.mark.parametrize("fan", [False, True])
def test_dora_forward_matches_formula(fan):
    base = _linear(fan)
    layer = LoRALinear(base, r=4, alpha=8, use_dora=True)
    w0 = _w_oi(base, fan)
    torch.testing.assert_close(layer.lora_magnitude.detach(), torch.linalg.norm(w0, dim=1))
    _randomise(layer)
    x = torch.randn(2, 7, 8)
    delta = 2.0 * layer.lora_B.weight @ layer.lora_A.weight
    adapted = w0 + delta
    want = x @ (layer.lora_magnitude[:, None] / torch.linalg.norm(adapted, dim=1)[:, None] * adapted).T
    want = want + base.bias
    torch.testing.assert_close(layer(x), want, atol=1e-5, rtol=1e-5)


def test_only_lora_tensors_get_gradients_and_norm_is_detached():
    layer = LoRALinear(_linear(False), r=2, alpha=4, use_dora=True)
    layer.weight.requires_grad_(False)
    layer.bias.requires_grad_(False)
    _randomise(layer)
    layer(torch.randn(4, 8)).pow(2).sum().backward()
    for p in (layer.lora_A.weight, layer.lora_B.weight, layer.lora_magnitude):
        assert p.grad is not None and torch.count_nonzero(p.grad) > 0
    assert layer.weight.grad is None


@pytest.mark.parametrize("fan", [False, True])
@pytest.mark.parametrize("dora", [False, True])
def test_merge_unmerge_idempotent_and_exact(fan, dora):
    base = _linear(fan)
    w0 = base.weight.detach().clone()
    layer = LoRALinear(base, r=4, alpha=8, use_dora=dora)
    _randomise(layer)
    x = torch.randn(3, 8)
    unmerged = layer(x)
    layer.merge()
    merged_w = layer.weight.detach().clone()
    layer.merge()  # second merge: no-op
    torch.testing.assert_close(layer.weight.detach(), merged_w, atol=0, rtol=0)
    assert layer.merged and not torch.allclose(merged_w, w0)
    torch.testing.assert_close(layer(x), unmerged, atol=1e-5, rtol=1e-5)
    layer.unmerge()
    layer.unmerge()
    assert not layer.merged
    torch.testing.assert_close(layer.weight.detach(), w0, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(layer(x), unmerged, atol=1e-5, rtol=1e-5)


def test_train_eval_never_merge():
    layer = LoRALinear(_linear(False), r=2, alpha=4)
    _randomise(layer)
    w = layer.weight.detach().clone()
    layer.eval()
    layer.train()
    assert not layer.merged
    torch.testing.assert_close(layer.weight.detach(), w, atol=0, rtol=0)


def test_dropout_only_on_lora_path():
    base = _linear(False)
    layer = LoRALinear(base, r=4, alpha=8, dropout=0.5)
    assert isinstance(layer.lora_dropout, nn.Dropout)
    x = torch.randn(64, 8)
    # B = 0: the LoRA path is zero, so dropout on it must leave the output equal to the base.
    layer.train()
    torch.testing.assert_close(layer(x), base(x))
    _randomise(layer)
    torch.manual_seed(0)
    a = layer(x)
    torch.manual_seed(1)
    b = layer(x)
    assert not torch.allclose(a, b)
    layer.eval()
    torch.testing.assert_close(layer(x), layer(x), atol=0, rtol=0)


def test_embedding_lora_formula_and_merge():
    torch.manual_seed(0)
    base = nn.Embedding(20, 6, padding_idx=0)
    ids = torch.tensor([[1, 5, 0], [19, 2, 2]])
    expected = base(ids)
    w0 = base.weight.detach().clone()
    layer = LoRAEmbedding(base, r=3, alpha=6)
    torch.testing.assert_close(layer(ids), expected, atol=0, rtol=0)  # A = 0 at start
    with torch.no_grad():
        layer.lora_embedding_A.normal_()
    want = expected + 2.0 * layer.lora_embedding_A.T[ids] @ layer.lora_embedding_B.T
    out = layer(ids)
    torch.testing.assert_close(out, want, atol=1e-5, rtol=1e-5)
    layer.merge()
    layer.merge()
    torch.testing.assert_close(layer(ids), out, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(layer.weight.detach(), w0, atol=1e-3)
    layer.unmerge()
    torch.testing.assert_close(layer.weight.detach(), w0, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("fan", [False, True])
@pytest.mark.parametrize("bias_trained", [False, True])
def test_frozen_base_outputs_and_gradients_match_the_textbook_graph(fan, bias_trained):
    # W0 frozen, no dropout (the usual LoRA step): outputs and every gradient equal those of the
    # textbook graph W0x + b + s·B·A·x.
    base = _linear(fan)
    layer = LoRALinear(base, r=4, alpha=8)
    _randomise(layer)
    layer.weight.requires_grad_(False)
    layer.bias.requires_grad_(bias_trained)
    x = torch.randn(3, 7, 8, dtype=torch.float64, requires_grad=True)
    layer.double()
    params = [x, layer.lora_A.weight, layer.lora_B.weight] + ([layer.bias] if bias_trained else [])
    y = layer(x)
    w = layer.weight.t() if fan else layer.weight
    ref = x @ w.T + layer.bias + 2.0 * (x @ layer.lora_A.weight.T) @ layer.lora_B.weight.T
    torch.testing.assert_close(y, ref)
    upstream = torch.randn_like(y)
    got = torch.autograd.grad(y, params, upstream)
    want = torch.autograd.grad(ref, params, upstream)
    for g, w_ in zip(got, want, strict=True):
        torch.testing.assert_close(g, w_)
    assert layer.weight.grad is None  # the frozen base gets no gradient
