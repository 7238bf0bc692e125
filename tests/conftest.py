"""Shared test fixtures: tiny real models (random-init from a config, seeded) and their inputs."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# libgomp's default spin-waiting makes torch 10x slower on a shared, oversubscribed 2-core machine.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("LORAFLEET_DATA_DIR", str(Path(__file__).resolve().parents[2] / "shared" / "data"))
# Tokenised splits cached on disk (lora_engine.data.token_cache): one fresh folder per test session,
# never the user's ~/.cache, so a run neither reads nor leaves another run's files.
os.environ.setdefault("LORAFLEET_DATA_CACHE", tempfile.mkdtemp(prefix="lorafleet-test-tokens-"))

import pytest

TINY_CASES = [  # (alias, kind): one classification model per encoder/decoder family, plus a causal LM
    ("tiny-gpt2", "classification"),
    ("tiny-bert", "classification"),
    ("tiny-roberta", "classification"),
    ("tiny-llama", "generation"),
]


@pytest.fixture
def tiny_model():
    """Factory: tiny_model(alias, kind="classification", num_labels=3) -> (model in eval mode, tokenizer)."""
    from lora_engine.models import load_base_model

    def make(alias: str, kind: str = "classification", num_labels: int | None = 3):
        model, tok = load_base_model(alias, kind, num_labels if kind == "classification" else None)
        return model.eval(), tok

    return make


@pytest.fixture
def tiny_inputs():
    """Factory: tiny_inputs(tokenizer) -> a padded batch of two rows of different lengths."""

    def make(tokenizer):
        return dict(tokenizer(["the quick brown fox jumps over", "hello world"], return_tensors="pt",
                              padding=True))

    return make


@pytest.fixture
def perturb_lora():
    """perturb_lora(model, seed=0): make every LoRA tensor non-trivial (B ≠ 0), so equivalence
    tests cannot pass because the update is zero."""
    import torch

    def perturb(model, seed: int = 0):
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_" in name:
                    p.add_(0.2 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
        return model

    return perturb


# The tenants' API as a real process, for every test module that asks (tests/api_server.py).
from tests.api_server import api_server, api_settings_env  # noqa: E402, F401
