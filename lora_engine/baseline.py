"""The trivial baseline of a task: what a model that learned nothing scores.

Classification: the best any constant prediction scores, metric by metric, with the task's own
metrics on the evaluated rows: accuracy = the evaluated rows' majority rate, MCC 0, F1 that of
"always the positive class" (MRPC's is 0.80, which is why a one-epoch MRPC F1 of 0.82 meant
nothing). The best constant, not the training majority's: a model stuck on the minority class
of the training split must not pass as better than trivial. Regression: a constant has no
correlation, 0. A score at or below this is no result, and the benchmark says so instead of
printing it as one.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from lora_engine.catalog import GLUE_TASKS, TASKS

# A score within this many points (x100) of the trivial baseline counts as "at the baseline":
# the sampling noise of a few hundred validation rows is about that size.
MARGIN = 0.02


def trivial_scores(task: str, labels: Sequence, eval_labels: Sequence) -> dict[str, float]:
    """Each metric's best score over the constant predictions of every label in `labels` (the
    training labels) and `eval_labels`; regression: 0."""
    info = TASKS[task]
    if info.kind == "regression":
        return {m: 0.0 for m in info.metrics}
    if info.kind != "classification":
        raise ValueError(f"task {task!r} is {info.kind}: no trivial classifier baseline")
    if not eval_labels:
        raise ValueError("trivial_scores needs the evaluated rows' labels")
    from lora_engine.metrics import classification_metrics, glue_metrics

    best: dict[str, float] = {}
    for label in sorted(Counter([*labels, *eval_labels])):
        preds = [label] * len(eval_labels)
        scores = (glue_metrics(task, preds, list(eval_labels)) if task in GLUE_TASKS
                  else classification_metrics(preds, list(eval_labels)))
        for name, value in scores.items():
            best[name] = max(best.get(name, value), value)
    return best


def at_baseline(score: float, trivial: float, margin: float = MARGIN) -> bool:
    """True when `score` is no better than the trivial baseline (within `margin`)."""
    return score <= trivial + margin


def task_trivial_scores(task: str, *, data_dir, dataset=None) -> dict[str, float]:
    """`trivial_scores` from the task's own training and validation files."""
    from lora_engine.data import load_examples

    train = load_examples(task, "train", data_dir=data_dir, dataset=dataset)
    val = load_examples(task, "validation", data_dir=data_dir, dataset=dataset)
    return trivial_scores(task, [ex.label for ex in train], [ex.label for ex in val])


# Metrics a constant prediction scores 0 on whatever the data: no file needed.
ZERO_FOR_A_CONSTANT = ("matthews_corr", "pearson", "spearman")


def trivial_score(task: str, metric: str, *, data_dir) -> float | None:
    """The trivial baseline of one metric of a built-in classification/regression task; None when
    there is none (generation, custom tasks) or the task's files are not in `data_dir`."""
    if metric in ZERO_FOR_A_CONSTANT:
        return 0.0
    if task not in GLUE_TASKS:
        return None
    try:
        return task_trivial_scores(task, data_dir=data_dir).get(metric)
    except (OSError, ValueError):  # no local copy of the data (LoraFleetInputError is a ValueError)
        return None
