"""Pinned losses of tiny 2-step runs: a refactor that changes the numerics fails here.

The numbers were obtained once by running exactly these specs through `train()` on the CPU
(torch 2.13, transformers 5.24, 2 threads; repeated runs gave identical values) and pasting
`repr(loss)` of `TrainResult.losses`. They cover the seeded head/LoRA init, the data order
(length-bucketed sampler), dropout RNG, the loss functions (classification CE; completion-only
causal-LM CE), AdamW with decoupled weight decay, the warm-up/decay schedule and grad clipping:
step 2's loss depends on step 1's update. If a change is intended, re-run and re-pin, saying why.
The tolerance (2e-6 relative) admits float reordering from another thread count, not a real change.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
DATA = Path(os.environ["LORAFLEET_DATA_DIR"])

from lora_engine.generate import DecodeSettings  # noqa: E402
from lora_engine.recipe import train  # noqa: E402

TINY_DECODE = DecodeSettings(num_beams=1, no_repeat_ngram_size=0, max_new_tokens=4)
REL = 2e-6


@pytest.fixture
def gen_data(tmp_path) -> Path:
    rows = [{"prompt": f"name[N{i % 5}], food[F{i % 3}]\n", "completion": f"N{i % 5} serves F{i % 3} food."}
            for i in range(20)]
    path = tmp_path / "g.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_sst2_tiny_bert_lora_two_steps(tmp_path):
    # Every hyper-parameter that the catalog could change is given explicitly: the pin guards the
    # code's numerics, not the defaults.
    res = train({"task": "sst2", "base_model": "tiny-bert", "max_steps": 2, "batch_size": 8, "eval_size": 8,
                 "max_length": 64, "dropout": 0.1, "lr": 5e-4, "head_lr": 2e-3, "warmup_ratio": 0.06,
                 "targets": ["query", "value"]},
                tmp_path / "a", data_dir=DATA)
    # Re-pinned when BERT's pretrained pooler joined the trained head (step 2 moved), and again when
    # training moved to lora_engine.forward: its dropout draws cover the real tokens only, so
    # both steps moved (the forward itself equals HF's to 1e-5 in eval mode: test_forward).
    assert res.losses == pytest.approx([0.6932574510574341, 0.6929703950881958], rel=REL)


def test_generation_tiny_llama_lora_two_steps(tmp_path, gen_data):
    res = train({"task": "custom-generation", "dataset": str(gen_data), "base_model": "tiny-llama",
                 "max_steps": 2, "batch_size": 4, "max_length": 48, "eval_size": 2, "lr": 2e-4,
                 "warmup_ratio": 0.06}, tmp_path / "g", data_dir=DATA, decode=TINY_DECODE)
    assert res.losses == pytest.approx([10.906314849853516, 10.929520606994629], rel=REL)


def test_generation_tiny_gpt2_dora_two_steps(tmp_path, gen_data):
    res = train({"task": "custom-generation", "dataset": str(gen_data), "base_model": "tiny-gpt2",
                 "method": "dora", "max_steps": 2, "batch_size": 4, "max_length": 48, "eval_size": 2,
                 "lr": 2e-4, "warmup_ratio": 0.06}, tmp_path / "g", data_dir=DATA, decode=TINY_DECODE)
    assert res.losses == pytest.approx([10.80936336517334, 10.814447402954102], rel=REL)
