"""RevisEval: Improving LLM-as-a-Judge via Response-Adapted References (Zhang et al., ICLR 2025, arXiv 2410.05193;
official code: github.com/Don-Joey/RevisEval).

The idea: a reference-based evaluator is only as good as its reference, and a fixed human reference is often far
from the response being judged. RevisEval first lets a reviser LLM rewrite the response itself, fixing only what
is wrong, into a *response-adapted reference* r* = R(x, y); then any reference-based evaluator (an LLM judge or
classic metrics such as BLEU and BERTScore) scores y against r*. Pointwise, meta-evaluation is Kendall tau /
Spearman rho against human scores; pairwise, accuracy against human preferences, with a majority vote over
classic metrics as the best metric-only variant.

Layout: ``pipeline.py`` (Config, the revise and judge stages, the strict verdict parsers, ``RevisEval``),
``metrics.py`` (sacrebleu BLEU / chrF, rouge-score ROUGE-L, bert-score with an offline MiniLM, majority vote),
``meta_eval.py`` (accuracy, Kendall / Spearman via scipy, the cost ledger). Prompts are files under
``pipelines/prompts/reviseval/``.

Deviations: the prompts are our wording in the MT-Bench format (the reviser's instructions follow the official
notebook's: revise one answer using another model's response, "not necessarily better", as a reference, and
output only the revised answer). Added as options (defaults off = official): both-order revision (each response
revised informed by the other, metrics averaged over the two references; the official code revises response B
only, which favours B) and position-swap averaging of the judge. A tie of metric votes is reported as "tie" and
scored as half a point. METEOR, MoverScore and BARTScore are not included (no offline data / model here).

Defaults: reviser T = 0.3 and judge T = 0.1 (official ``main.ipynb``); judge verdict ``[[A]]`` / ``[[B]]`` with no
tie (official prompt); metric set {BLEU, ROUGE-L, chrF, BERTScore} (methods spec 6.6(a)); BERTScore with
all-MiniLM-L6-v2 at layer 6, no baseline rescaling (no rescale file exists for MiniLM).
"""

from .meta_eval import correlations, cost_ledger, pairwise_accuracy
from .metrics import METRICS, bertscore, bleu, chrf, majority_vote, minilm_dir, prefer, rouge_l
from .pipeline import Config, RevisEval, judge_stage, parse_rating, parse_verdict, revise_stage, shuffle_pairs

__all__ = ["METRICS", "Config", "RevisEval", "bertscore", "bleu", "chrf", "correlations", "cost_ledger",
           "judge_stage", "majority_vote", "minilm_dir", "pairwise_accuracy", "parse_rating", "parse_verdict",
           "prefer", "revise_stage", "rouge_l", "shuffle_pairs"]
