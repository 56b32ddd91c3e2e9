"""Meta-evaluation (agreement of an evaluator with human labels) and the cost ledger of a run.

- Pointwise (SummEval, WMT, ...): Kendall tau-b and Spearman rho between evaluator scores and human scores,
  through ``scipy.stats`` (the paper reports both, in percent).
- Pairwise (MT-Bench human, AlpacaFarm, LLMBar): accuracy of the predicted winner against the human label; a
  predicted "tie" earns half a point (the official judge has no tie; metric votes can tie).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from lmlab.pipelines.runner import Summary


def correlations(scores: Sequence[float], human: Sequence[float]) -> dict[str, float]:
    """Kendall tau-b and Spearman rho of ``scores`` against ``human`` (scipy); NaN when either is constant."""
    from scipy import stats

    if len(scores) != len(human):
        raise ValueError(f"got {len(scores)} scores but {len(human)} human scores: expected as many")
    if len(scores) < 2:
        raise ValueError(f"correlations need at least 2 items, got {len(scores)}")
    tau = stats.kendalltau(scores, human).statistic
    rho = stats.spearmanr(scores, human).statistic
    return {"kendall_tau": float(tau), "spearman_rho": float(rho)}


def pairwise_accuracy(predicted: Sequence[str], labels: Sequence[str]) -> float:
    """Share of pairs whose predicted winner ("A" / "B" / "tie" = half a point) matches the label ("A" / "B")."""
    if len(predicted) != len(labels) or not labels:
        raise ValueError(f"got {len(predicted)} predictions for {len(labels)} labels: expected as many, >= 1")
    bad = [x for x in labels if x not in ("A", "B")] + [x for x in predicted if x not in ("A", "B", "tie")]
    if bad:
        raise ValueError(f"labels must be 'A' or 'B' and predictions 'A', 'B' or 'tie'; got {bad[:5]}")
    points = [0.5 if p == "tie" else float(p == y) for p, y in zip(predicted, labels)]
    return sum(points) / len(points)


def cost_ledger(summary: Summary, usd_per_m_prompt: float = 0.0, usd_per_m_completion: float = 0.0
                ) -> dict[str, Any]:
    """Requests, tokens and (given prices per million tokens) dollars of a run, in total and per written record."""
    if usd_per_m_prompt < 0 or usd_per_m_completion < 0:
        raise ValueError(f"prices must be >= 0, got {usd_per_m_prompt} and {usd_per_m_completion}")
    led = summary.ledger
    usd = (led.prompt_tokens * usd_per_m_prompt + led.completion_tokens * usd_per_m_completion) / 1e6
    per = max(summary.written, 1)
    return {"records": summary.written, "failed": summary.failed, "requests": led.requests, "cached": led.cached,
            "prompt_tokens": led.prompt_tokens, "completion_tokens": led.completion_tokens, "usd": usd,
            "requests_per_record": led.requests / per, "tokens_per_record": (led.prompt_tokens +
                                                                              led.completion_tokens) / per,
            "usd_per_record": usd / per if summary.written else math.nan}
