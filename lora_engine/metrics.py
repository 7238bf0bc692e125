"""Task metrics as pure functions of (predictions, references).

Classification / regression (GLUE's official metrics):

- accuracy = mean(pred == label)
- F1 (MRPC, QQP; positive class 1) = 2PR / (P + R)
- Matthews corr (CoLA) = (TP·TN − FP·FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)), 0 when undefined
- Pearson r, Spearman ρ (STS-B); a constant prediction has no defined correlation and scores 0
- custom classification: accuracy and macro-F1 (unweighted mean of per-class F1)

E2E (`e2e_metrics`) follows the official E2E NLG Challenge script (tuetschek/e2e-metrics):
one hypothesis per distinct MR, scored against all of that MR's references.

- BLEU-4 and NIST-5 as mteval-v13a computes them (the script's Perl, or its Python port):
  case-insensitive, mteval's 13a tokenisation, corpus level, n-gram counts clipped by the maximum
  over the references. BLEU runs pycocoevalcap's BleuScorer with the closest reference length for
  the brevity penalty (mteval's choice); NIST is written out in `nist` (see there why not nltk's).
- METEOR 1.5, ROUGE-L and CIDEr-D from pycocoevalcap after Stanford's PTB tokenizer with
  lowercasing and punctuation removal, exactly the MS-COCO pipeline the official script runs.
  METEOR and the tokenizer run the Java jars shipped in pycocoevalcap (Java 8+, offline).

BLEU, METEOR and ROUGE-L are on a 0–1 scale (the E2E baseline scores BLEU 0.66); NIST is on its
own scale (~8.6 for the baseline) and CIDEr on 0–10 (~2.2).
"""

from __future__ import annotations

import math
import re
import subprocess
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from lora_engine.catalog import GLUE_TASKS, TASKS


def _check(preds: Sequence, labels: Sequence) -> tuple[np.ndarray, np.ndarray]:
    if len(preds) != len(labels):
        raise ValueError(f"{len(preds)} predictions but {len(labels)} labels")
    if len(preds) == 0:
        raise ValueError("no predictions to score")
    return np.asarray(preds), np.asarray(labels)


def accuracy(preds: Sequence[int], labels: Sequence[int]) -> float:
    p, y = _check(preds, labels)
    return float((p == y).mean())


def f1(preds: Sequence[int], labels: Sequence[int], positive: int = 1) -> float:
    """Binary F1 of class `positive`; 0 when there is no true or predicted positive."""
    from sklearn.metrics import f1_score

    p, y = _check(preds, labels)
    return float(f1_score(y, p, pos_label=positive, average="binary", zero_division=0))


def f1_macro(preds: Sequence[int], labels: Sequence[int]) -> float:
    """Mean per-class F1 over the classes present in labels or predictions."""
    from sklearn.metrics import f1_score

    p, y = _check(preds, labels)
    return float(f1_score(y, p, average="macro", zero_division=0))


def matthews_corr(preds: Sequence[int], labels: Sequence[int]) -> float:
    from sklearn.metrics import matthews_corrcoef

    p, y = _check(preds, labels)
    return float(matthews_corrcoef(y, p))


def _correlation(kind: str, preds: Sequence[float], labels: Sequence[float]) -> float:
    from scipy import stats

    p, y = _check(preds, labels)
    p, y = p.astype(float), y.astype(float)
    if len(p) < 2 or np.ptp(p) == 0 or np.ptp(y) == 0:
        return 0.0  # correlation is undefined for a constant series: score it as "no correlation"
    r = (stats.pearsonr if kind == "pearson" else stats.spearmanr)(p, y)[0]
    return float(r)


def pearson(preds: Sequence[float], labels: Sequence[float]) -> float:
    return _correlation("pearson", preds, labels)


def spearman(preds: Sequence[float], labels: Sequence[float]) -> float:
    return _correlation("spearman", preds, labels)


_GLUE_FUNCS = {
    "accuracy": accuracy,
    "f1": f1,
    "matthews_corr": matthews_corr,
    "pearson": pearson,
    "spearman": spearman,
}


def glue_metrics(task: str, preds: Sequence, labels: Sequence) -> dict[str, float]:
    """The task's official metrics, named as in the catalog (e.g. mrpc -> accuracy, f1)."""
    if task not in GLUE_TASKS:
        raise ValueError(f"{task!r} is not a GLUE task; GLUE tasks: {', '.join(GLUE_TASKS)}")
    return {name: _GLUE_FUNCS[name](preds, labels) for name in TASKS[task].metrics}


def classification_metrics(preds: Sequence[int], labels: Sequence[int]) -> dict[str, float]:
    """Custom classification: accuracy and macro-F1 (fair to rare classes)."""
    return {"accuracy": accuracy(preds, labels), "f1_macro": f1_macro(preds, labels)}


# ---------------------------------------------------------------------------------------------
# Generation


def mteval_tokenize(text: str) -> list[str]:
    """mteval-v13a's tokenisation, lowercased (the E2E script scores case-insensitively)."""
    text = text.replace("<skipped>", "").replace("-\n", "").replace("\n", " ")
    text = text.replace("&quot;", '"').replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">")
    text = f" {text.lower()} "
    text = re.sub(r"([\{-\~\[-\` -\&\(-\+\:-\@\/])", r" \1 ", text)  # punctuation except . , ' -
    text = re.sub(r"([^0-9])([\.,])", r"\1 \2 ", text)  # period/comma unless preceded by a digit
    text = re.sub(r"([\.,])([^0-9])", r" \1 \2", text)  # period/comma unless followed by a digit
    text = re.sub(r"([0-9])(-)", r"\1 \2 ", text)  # dash after a digit
    return text.split()


def _pycoco_dir() -> Path:
    import pycocoevalcap

    return Path(next(iter(pycocoevalcap.__path__)))


_LINE_BREAKS = re.compile(r"[\n\r\v\f\x1c-\x1e\x85\u2028\u2029]")


def _run_java(cmd: list[str], stdin: bytes) -> bytes:
    try:
        return subprocess.run(cmd, input=stdin, capture_output=True, check=True).stdout
    except FileNotFoundError:
        from lora_engine.errors import MissingTool

        raise MissingTool("java", "the E2E metrics run Java jars from pycocoevalcap",
                          "Java 8+, e.g. apt-get install default-jre-headless") from None
    except subprocess.CalledProcessError as exc:
        raise RuntimeError(f"{cmd[:4]} failed: {exc.stderr.decode(errors='replace')[-500:]}") from exc


def ptb_tokenize(texts: Sequence[str]) -> list[str]:
    """Stanford PTB tokenisation, lowercased, punctuation dropped: the MS-COCO evaluation input.

    Runs the CoreNLP jar shipped in pycocoevalcap once for all texts, reading stdin (pycocoevalcap's
    own wrapper writes a temp file inside site-packages, which may be read-only).
    """
    from pycocoevalcap.tokenizer.ptbtokenizer import PUNCTUATIONS, STANFORD_CORENLP_3_4_1_JAR

    jar = _pycoco_dir() / "tokenizer" / STANFORD_CORENLP_3_4_1_JAR
    # One text per line: every character Java may read as a line break becomes a space.
    lines = [_LINE_BREAKS.sub(" ", t) for t in texts]
    cmd = ["java", "-cp", str(jar), "edu.stanford.nlp.process.PTBTokenizer",
           "-preserveLines", "-lowerCase", "-encoding", "utf-8"]
    out = _run_java(cmd, "\n".join(lines).encode("utf-8"))
    tokenised = out.decode("utf-8").split("\n")
    if tokenised and tokenised[-1] == "" and len(tokenised) > len(lines):
        tokenised.pop()  # the final newline
    if len(tokenised) > len(lines):
        raise RuntimeError(f"PTB tokenizer returned {len(tokenised)} lines for {len(lines)} texts")
    tokenised += [""] * (len(lines) - len(tokenised))  # trailing empty texts give no output line
    punct = set(PUNCTUATIONS)
    return [" ".join(w for w in line.split() if w not in punct) for line in tokenised]


def _check_refs(hyps: Sequence[str], refs_per_hyp: Sequence[Sequence[str]]) -> None:
    if len(hyps) != len(refs_per_hyp):
        raise ValueError(f"{len(hyps)} hypotheses but {len(refs_per_hyp)} reference lists")
    if not hyps:
        raise ValueError("no hypotheses to score")
    empty = [i for i, refs in enumerate(refs_per_hyp) if not refs]
    if empty:
        raise ValueError(f"hypotheses {empty[:10]} have no references")


_NIST_BETA = -math.log(0.5) / math.log(1.5) ** 2


def bleu(hyps: Sequence[str], refs_per_hyp: Sequence[Sequence[str]]) -> float:
    """Corpus BLEU-4 as mteval-v13a: 13a tokens, lowercased, clipped n-gram precisions pooled over
    the corpus, brevity penalty from the reference closest in length (the shorter one on a tie)."""
    from pycocoevalcap.bleu.bleu_scorer import BleuScorer

    _check_refs(hyps, refs_per_hyp)
    scorer = BleuScorer(n=4)
    for hyp, refs in zip(hyps, refs_per_hyp, strict=True):
        scorer += (" ".join(mteval_tokenize(hyp)), [" ".join(mteval_tokenize(r)) for r in refs])
    score, _ = scorer.compute_score(option="closest")
    return float(score[3])


def _ngrams(tokens: list[str], n: int) -> Counter:
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def nist(hyps: Sequence[str], refs_per_hyp: Sequence[Sequence[str]], n: int = 5) -> float:
    """Corpus NIST-n as mteval-v13a (and the E2E script's Python port of it) computes it.

    info(w1..wk) = log2(count(w1..wk-1) / count(w1..wk)), counts over all reference segments
    (for k = 1 the numerator is the total number of reference words).
    NIST = BP · Σ_k [Σ_{matched k-grams} info · min(hyp count, max count in one reference)]
                     / (k-grams in the hypotheses)
    BP = exp(−β · ln²(min(L_sys / L_ref, 1))), β = −ln 0.5 / ln² 1.5 (BP = 0.5 at 2/3 of L_ref),
    L_ref = Σ over segments of the segment's average reference length.

    Written out here because nltk's `corpus_nist` scores each reference separately and keeps the
    best, which is not what mteval does with several references (E2E has ~8 per MR).
    """
    _check_refs(hyps, refs_per_hyp)
    hyp_toks = [mteval_tokenize(h) for h in hyps]
    ref_toks = [[mteval_tokenize(r) for r in refs] for refs in refs_per_hyp]
    ref_counts = [Counter() for _ in range(n + 1)]  # ref_counts[k][k-gram]; k = 0: total words
    for refs in ref_toks:
        for ref in refs:
            ref_counts[0][()] += len(ref)
            for k in range(1, n + 1):
                ref_counts[k].update(_ngrams(ref, k))

    def info(gram: tuple) -> float:
        return math.log2(ref_counts[len(gram) - 1][gram[:-1]] / ref_counts[len(gram)][gram])

    matched_info = [0.0] * (n + 1)
    hyp_grams = [0] * (n + 1)
    sys_len = ref_len = 0.0
    for hyp, refs in zip(hyp_toks, ref_toks, strict=True):
        sys_len += len(hyp)
        ref_len += sum(len(r) for r in refs) / len(refs)
        for k in range(1, n + 1):
            hyp_grams[k] += max(len(hyp) - k + 1, 0)
            best = Counter()
            for ref in refs:
                best |= _ngrams(ref, k)  # | keeps the max count of each k-gram over the references
            for gram, count in _ngrams(hyp, k).items():
                if gram in best:
                    matched_info[k] += info(gram) * min(count, best[gram])
    score = sum(matched_info[k] / max(hyp_grams[k], 1) for k in range(1, n + 1))
    ratio = sys_len / ref_len if ref_len else 0.0
    if ratio >= 1:
        return score
    return 0.0 if ratio <= 0 else score * math.exp(-_NIST_BETA * math.log(ratio) ** 2)


def _coco_inputs(hyps, refs_per_hyp) -> tuple[dict, dict]:
    flat = list(hyps) + [r for refs in refs_per_hyp for r in refs]
    tok = ptb_tokenize(flat)
    res = {i: [tok[i]] for i in range(len(hyps))}
    gts, k = {}, len(hyps)
    for i, refs in enumerate(refs_per_hyp):
        gts[i] = tok[k : k + len(refs)]
        k += len(refs)
    return gts, res


def meteor_score(gts: dict, res: dict) -> float:
    """METEOR 1.5 (-l en -norm) over PTB-tokenised inputs; one JVM per call (~5 s start-up)."""
    import shutil

    from pycocoevalcap.meteor.meteor import Meteor

    if shutil.which("java") is None:
        _run_java(["java"], b"")  # raises the clear "install Java" error
    scorer = Meteor()
    try:
        return float(scorer.compute_score(gts, res)[0])
    finally:
        del scorer  # stops the JVM now, not at garbage collection


def e2e_metrics(
    hyps: Sequence[str], refs_per_hyp: Sequence[Sequence[str]], *, meteor: bool = True
) -> dict[str, float]:
    """{"bleu", "nist", "meteor", "rouge_l", "cider"} for one output per input vs. its references.

    `meteor=False` skips the METEOR JVM (reported as NaN) where start-up time matters.
    """
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    _check_refs(hyps, refs_per_hyp)
    gts, res = _coco_inputs(hyps, refs_per_hyp)
    # The COCO scorers reject an empty hypothesis string; a lone space tokenises to no words.
    res = {i: [h if h else " "] for i, (h,) in res.items()}
    return {
        "bleu": bleu(hyps, refs_per_hyp),
        "nist": nist(hyps, refs_per_hyp),
        "meteor": meteor_score(gts, res) if meteor else math.nan,
        "rouge_l": float(Rouge().compute_score(gts, res)[0]),
        "cider": float(Cider().compute_score(gts, res)[0]),
    }


def generation_metrics(hyps: Sequence[str], refs_per_hyp: Sequence[Sequence[str]]) -> dict[str, float]:
    """Custom generation: BLEU-4 and ROUGE-L, as for E2E (no METEOR JVM)."""
    from pycocoevalcap.rouge.rouge import Rouge

    _check_refs(hyps, refs_per_hyp)
    gts, res = _coco_inputs(hyps, refs_per_hyp)
    res = {i: [h if h else " "] for i, (h,) in res.items()}
    return {"bleu": bleu(hyps, refs_per_hyp), "rouge_l": float(Rouge().compute_score(gts, res)[0])}
