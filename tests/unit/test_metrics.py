"""Metrics against small hand-computed tables, edges included."""

import math

import pytest

from lora_engine.catalog import GLUE_TASKS, TASKS
from lora_engine.metrics import (
    accuracy,
    bleu,
    classification_metrics,
    e2e_metrics,
    f1,
    f1_macro,
    generation_metrics,
    glue_metrics,
    matthews_corr,
    mteval_tokenize,
    nist,
    pearson,
    ptb_tokenize,
    spearman,
)


@pytest.mark.parametrize(
    ("fn", "preds", "labels", "expected"),
    [
        (accuracy, [1, 0, 1, 1], [1, 1, 1, 0], 0.5),
        (accuracy, [2, 2], [2, 2], 1.0),
        # TP=1 FP=1 FN=1: P = R = 1/2
        (f1, [1, 1, 0, 0], [1, 0, 1, 0], 0.5),
        # TP=2 FP=1 FN=0: P = 2/3, R = 1 -> 0.8
        (f1, [1, 1, 1, 0], [1, 1, 0, 0], 0.8),
        (f1, [0, 0], [0, 0], 0.0),  # no positive anywhere: defined as 0
        # TP=2 TN=1 FP=1 FN=0: (2·1 − 1·0) / sqrt(3·2·2·1)
        (matthews_corr, [1, 1, 1, 0], [1, 1, 0, 0], 2 / math.sqrt(12)),
        (matthews_corr, [1, 1, 0, 0], [1, 0, 1, 0], 0.0),
        (matthews_corr, [1, 0, 1, 0], [0, 1, 0, 1], -1.0),
        (matthews_corr, [1, 1, 1, 1], [1, 0, 1, 0], 0.0),  # constant prediction
        # per class F1: c0 1, c1 2/3 (P 1, R 1/2), c2 2/3 (P 1/2, R 1)
        (f1_macro, [0, 1, 2, 2], [0, 1, 1, 2], (1 + 2 / 3 + 2 / 3) / 3),
        (pearson, [1, 2, 3], [2, 4, 6], 1.0),
        # x dev (-1,0,1), y (1,4,9) dev (-11/3,-2/3,13/3): r = 8 / (sqrt 2 · sqrt(294)/3)
        (pearson, [1, 2, 3], [1, 4, 9], 24 / math.sqrt(588)),
        (spearman, [1, 2, 3], [1, 4, 9], 1.0),
        (spearman, [1, 2, 3], [3, 2, 1], -1.0),
        (pearson, [2.5, 2.5, 2.5], [1, 2, 3], 0.0),  # constant: undefined, scored 0
        (spearman, [1.0], [3.0], 0.0),
    ],
)
def test_hand_computed(fn, preds, labels, expected):
    assert fn(preds, labels) == pytest.approx(expected)


@pytest.mark.parametrize("task", GLUE_TASKS)
def test_glue_metrics_names_follow_the_catalog(task):
    preds, labels = ([0.5, 1.0, 4.0], [0.0, 2.0, 5.0]) if task == "stsb" else ([0, 1, 1], [0, 1, 0])
    out = glue_metrics(task, preds, labels)
    assert tuple(out) == TASKS[task].metrics
    assert all(isinstance(v, float) for v in out.values())


def test_glue_metrics_values_and_errors():
    assert glue_metrics("mrpc", [1, 1, 0, 0], [1, 0, 1, 0]) == {"accuracy": 0.5, "f1": 0.5}
    assert glue_metrics("cola", [1, 0, 1, 0], [0, 1, 0, 1]) == {"matthews_corr": -1.0}
    assert classification_metrics([0, 1, 2, 2], [0, 1, 1, 2]) == pytest.approx(
        {"accuracy": 0.75, "f1_macro": 7 / 9})
    with pytest.raises(ValueError, match="not a GLUE task"):
        glue_metrics("e2e", [1], [1])
    with pytest.raises(ValueError, match="3 predictions but 2 labels"):
        accuracy([1, 0, 1], [1, 0])
    with pytest.raises(ValueError, match="no predictions"):
        f1([], [])


def test_mteval_tokenisation():
    assert mteval_tokenize("It costs £20-25, isn't it? Yes. 3.5 Stars.") == [
        "it", "costs", "£20", "-", "25", ",", "isn't", "it", "?", "yes", ".", "3.5", "stars", ".",
    ]


def test_ptb_tokenisation_lowercases_and_drops_punctuation():
    # Brackets survive as -lrb-/-rrb-: the COCO pipeline lowercases before it compares with its
    # upper-case "-LRB-" list. The official scores carry that quirk, so ours do too.
    assert ptb_tokenize(["The Eagle, a pub.", "", "It isn't (cheap)!", "two\nlines\u2028here", ""]) == [
        "the eagle a pub", "", "it is n't -lrb- cheap -rrb-", "two lines here", "",
    ]


def test_bleu_hand_case_uses_closest_reference_length():
    # n-gram precisions 4/5, 3/4, 2/3, 1/2 (max counts over both references). The hypothesis has 5
    # words; the closest reference has 6 (not the shortest, 3), so BP = exp(1 − 6/5).
    refs = [["w1 w2 w3", "w1 w2 w3 w4 w6 w7"]]
    assert bleu(["W1 w2 w3 w4 w5"], refs) == pytest.approx(0.2 ** 0.25 * math.exp(1 - 6 / 5), abs=1e-6)
    # Equal distance (4 and 6 words around 5): the shorter one, so no penalty.
    assert bleu(["w1 w2 w3 w4 w5"], [["w1 w2 w3 w4", "w1 w2 w3 w4 w6 w7"]]) == pytest.approx(
        0.2 ** 0.25, abs=1e-6)


def test_nist_hand_cases():
    # refs "a b", "a c": 4 words; count a=2, b=c=1, ab=ac=1 -> info a=1, b=2, ab=log2(2/1)=1.
    # hyp "a b a": unigram hits a (clipped to 1) + b -> (1 + 2) / 3; bigram hits ab -> 1 / 2;
    # the trigram "a b a" misses. Hypothesis longer than the average reference: no penalty.
    assert nist(["a b a"], [["a b", "a c"]]) == pytest.approx(1.5)
    # A perfect copy: info a = b = log2(2/1) = 1, ab = log2(1/1) = 0 -> (1 + 1) / 2.
    assert nist(["a b"], [["A b"]]) == pytest.approx(1.0)
    # Too short: 1 word vs 4 -> info(a) = log2(4/1) = 2, BP = exp(−β ln²(1/4)), β = −ln .5 / ln² 1.5.
    beta = -math.log(0.5) / math.log(1.5) ** 2
    assert nist(["a"], [["a b c d"]]) == pytest.approx(2 * math.exp(-beta * math.log(0.25) ** 2))


def test_bleu_nist_edges():
    assert bleu(["w1 w2 w3 w4"], [["w1 w2 w3 w4"]]) == pytest.approx(1.0, abs=1e-6)
    assert bleu(["zzz"], [["w1 w2 w3 w4"]]) == pytest.approx(0.0, abs=1e-6)
    assert nist([""], [["w1 w2"]]) == 0.0
    assert nist(["a b c d e"], [["a b c d e"]]) > nist(["a b c x y"], [["a b c d e"]]) > 0
    with pytest.raises(ValueError, match="2 hypotheses but 1 reference lists"):
        bleu(["a", "b"], [["a"]])
    with pytest.raises(ValueError, match=r"hypotheses \[0\] have no references"):
        nist(["a"], [[]])


def test_e2e_metrics_identical_outputs_score_perfectly_and_meteor_runs():
    refs = [["The Eagle is a cheap pub.", "A cheap pub called The Eagle."],
            ["Zizzi serves Italian food in the city centre."],
            ["Green Man is a family friendly coffee shop near the river."]]
    hyps = [r[0] for r in refs]
    out = e2e_metrics(hyps, refs)
    assert set(out) == {"bleu", "nist", "meteor", "rouge_l", "cider"}
    assert out["bleu"] == pytest.approx(1.0, abs=1e-6)
    assert out["rouge_l"] == pytest.approx(1.0)
    assert 0.95 < out["meteor"] <= 1.0
    assert out["cider"] > 1.0 and out["nist"] > 1.0
    worse = e2e_metrics(["The Eagle is a pub.", "Zizzi is in the centre.", "Green Man."], refs, meteor=False)
    assert math.isnan(worse["meteor"])
    assert all(worse[k] < out[k] for k in ("bleu", "nist", "rouge_l", "cider"))


def test_rouge_l_hand_case_and_empty_hypothesis():
    # LCS("a b c d", "a c e d") = 3: P = R = 3/4, so F_beta = 3/4 for any beta.
    assert generation_metrics(["a b c d"], [["a c e d"]])["rouge_l"] == pytest.approx(0.75)
    out = generation_metrics(["", "x y"], [["a b"], ["x y"]])
    assert out["rouge_l"] == pytest.approx(0.5)
