"""Checks that a failed operation left a model exactly as it was (modules and every tensor)."""

from __future__ import annotations

import torch


def snapshot(model):
    modules = [(n, type(m)) for n, m in model.named_modules()]
    return modules, {k: v.clone() for k, v in model.state_dict().items()}


def assert_unchanged(model, snap) -> None:
    modules, state = snap
    assert [(n, type(m)) for n, m in model.named_modules()] == modules
    now = model.state_dict()
    assert now.keys() == state.keys()
    assert all(torch.equal(now[k], state[k]) for k in state)
