"""The `auto` budget rule: a table computed by hand from the rule in lora_engine/budget.py."""

import pytest

from lora_engine.budget import Budget, resolve_budget

AUTO = {"batch_size": None, "epochs": None, "max_steps": None}


@pytest.mark.parametrize(
    ("rows", "kind", "extra", "expected"),
    [
        # Below 64 rows nothing is held out, so nothing is evaluated; 12000/rows epochs, capped at 10.
        (1, "classification", {}, Budget(16, 10.0, 0, 0, 0)),
        (63, "classification", {}, Budget(16, 10.0, 0, 0, 0)),
        # 64 rows: 32 held out (the floor), 32 train = 2 steps an epoch, 20 steps, eval every ceil(20/4)=5
        # capped at one epoch = 2.
        (64, "classification", {}, Budget(16, 10.0, 2, 32, 3)),
        # RTE: 224 held out (10%), 2016 train, 12000/2016 = 5.95 -> 6 epochs of 126 steps.
        (2240, "classification", {}, Budget(16, 6.0, 126, 224, 3)),
        # Batch size edge: 3999 training rows after the holdout -> 16; 4000 -> 32.
        # 3999: 250 steps an epoch, 3 epochs = 750, eval every ceil(750/4) = 188: at 188, 376, 564 and
        # the final 750 (187 would add one at 748, two steps before the final one);
        # 4000: 125 steps, 3 epochs = 375, eval every ceil(375/4) = 94.
        (4443, "classification", {}, Budget(16, 3.0, 188, 444, 3)),
        (4444, "classification", {}, Budget(32, 3.0, 94, 444, 3)),
        # 9000 rows: 500 held out (the cap), 8500 train = 266 steps, 12000/8500 -> 1 epoch, eval 67.
        (9000, "regression", {}, Budget(32, 1.0, 67, 500, 3)),
        # Step cap edge: 64000 train = 2000 steps, exactly the cap -> one whole epoch.
        (64500, "classification", {}, Budget(32, 1.0, 500, 500, 3)),
        # 64532 train = 2017 steps > 2000 -> 0.99 epochs (rounded down), 1997 steps, eval 500.
        (65032, "classification", {}, Budget(32, 0.99, 500, 500, 3)),
        # A million rows: 31235 steps an epoch -> 0.06 epochs = 1875 steps, eval 469.
        (1_000_000, "classification", {}, Budget(32, 0.06, 469, 500, 3)),
        # Generation (E2E's 42061 rows): batch 8, 600-step cap -> 0.11 epochs; never scored in training.
        (42061, "generation", {}, Budget(8, 0.11, 0, 0, 0)),
        (100, "generation", {}, Budget(8, 10.0, 0, 0, 0)),
        # Gradient accumulation counts optimizer steps: 126 batches / 4 = 32 steps an epoch.
        (2240, "classification", {"grad_accum": 4}, Budget(16, 6.0, 32, 224, 3)),
        # An explicit budget is followed exactly: no evaluation, nothing held out, batch by the rule.
        (2240, "classification", {"max_steps": 50}, Budget(16, None, 0, 0, 0)),
        (2240, "classification", {"epochs": 2.0, "batch_size": 8}, Budget(8, 2.0, 0, 0, 0)),
        # ... unless evaluation is asked for: the holdout and patience are then automatic.
        (2240, "classification", {"epochs": 2.0, "eval_every": 50}, Budget(16, 2.0, 50, 224, 3)),
        # Given values win over the rule: 2140 train = 134 steps an epoch, 12000/2140 -> 6 epochs.
        (2240, "classification", {"eval_holdout": 100, "patience": 0}, Budget(16, 6.0, 134, 100, 0)),
    ],
)
def test_the_auto_budget_table(rows, kind, extra, expected):
    assert resolve_budget(train_rows=rows, kind=kind, **{**AUTO, **extra}) == expected


def test_an_empty_training_split_is_refused():
    with pytest.raises(ValueError, match="train_rows must be >= 1"):
        resolve_budget(train_rows=0, kind="classification", **AUTO)
