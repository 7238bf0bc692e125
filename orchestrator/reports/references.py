"""Published reference numbers, printed beside ours and labelled so nobody reads them as like-for-like.

They come from the LoRA paper (Hu et al. 2021, arXiv:2106.09685): Table 2 (RoBERTa-base with
LoRA, GLUE dev sets; MRPC and QQP accuracy, CoLA Matthews correlation, STS-B Pearson, the rest
accuracy) and Table 3 (GPT-2 M with LoRA, E2E NLG test set). Our jobs train other (smaller)
base models for a few steps and score GLUE validation data, so these are a horizon, not a target.

Values are stored as published (points); `registry_value()` puts them on the registry's scale
(BLEU, METEOR, ROUGE-L and the GLUE metrics are fractions there; NIST and CIDEr are not).
"""

from __future__ import annotations

from dataclasses import dataclass

# Metrics the registry records as fractions in [0, 1] (or [-1, 1] for correlations): a "point"
# of them is 0.01. NIST and CIDEr are on their own scales and count as they are.
FRACTION_METRICS = frozenset(
    {
        "accuracy",
        "f1",
        "f1_macro",
        "matthews_corr",
        "pearson",
        "spearman",
        "bleu",
        "meteor",
        "rouge_l",
        "majority_class_rate",
    }
)


def points(metric: str, value: float) -> float:
    """`value` in points: ×100 for a fraction metric, unchanged for NIST / CIDEr."""
    return value * 100.0 if metric in FRACTION_METRICS else value


@dataclass(frozen=True)
class Reference:
    source: str
    base_model: str
    eval_set: str
    task: str
    metric: str
    published: float  # as printed in the paper (points)

    @property
    def label(self) -> str:
        return f"{self.source}, {self.base_model}, {self.eval_set}"

    def registry_value(self) -> float:
        return self.published / 100.0 if self.metric in FRACTION_METRICS else self.published

    def to_dict(self) -> dict[str, object]:
        return {
            "source": self.source,
            "base_model": self.base_model,
            "eval_set": self.eval_set,
            "task": self.task,
            "metric": self.metric,
            "published": self.published,
            "value": self.registry_value(),
            "label": self.label,
        }


_GLUE = ("LoRA paper (Hu et al. 2021)", "RoBERTa-base LoRA", "GLUE dev")
_E2E = ("LoRA paper (Hu et al. 2021)", "GPT-2 M LoRA", "E2E test")

GLUE_REFERENCES: dict[str, Reference] = {
    task: Reference(*_GLUE, task=task, metric=metric, published=value)
    for task, metric, value in (
        ("mnli", "accuracy", 87.5),
        ("sst2", "accuracy", 95.1),
        ("mrpc", "accuracy", 89.7),
        ("cola", "matthews_corr", 63.4),
        ("qnli", "accuracy", 93.3),
        ("qqp", "accuracy", 90.8),
        ("rte", "accuracy", 86.6),
        ("stsb", "pearson", 91.5),
    )
}
GLUE_AVERAGE_REFERENCE = 87.2  # the paper's own average of the eight (points)

E2E_REFERENCES: dict[str, Reference] = {
    metric: Reference(*_E2E, task="e2e", metric=metric, published=value)
    for metric, value in (
        ("bleu", 70.4),
        ("nist", 8.85),
        ("meteor", 46.8),
        ("rouge_l", 71.8),
        ("cider", 2.53),
    )
}
