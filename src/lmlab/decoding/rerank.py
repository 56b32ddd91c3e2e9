"""Sample N, score, pick: best-of-N and weighted majority vote over candidates from the plain sampling decoder.

Candidate i is exactly ``Sample(cfg).generate(model, prompt, max_new_tokens, seed=seed + i)`` (the shared
``reference.autoregressive`` loop), so the candidates follow the sampling decoder's distribution and N = 1 is the
sampling decoder itself. Any scorer plugs in through ``Scorer``: a reward model, a verifier, or the implicit PRM
(``objectives.implicit_prm.as_scorer``). The official implicit-PRM evaluation (arXiv 2412.01981) uses both
selections: best-of-N argmax, and a vote summing ``sigmoid(score)`` per distinct final answer.

    pick = BestOfN(Config(n=16, temperature=0.5), scorer=scorer).generate(model, prompt, 64, seed=0)
    vote = WeightedVote(VoteConfig(n=16), scorer=scorer, answer_of=answer_of).generate(model, prompt, 64, seed=0)
    pick.tokens, pick.stats.scores, pick.stats.chosen

Registered as ``best_of_n`` and ``weighted_vote`` (cap "rerank"): ``decoding.build("best_of_n", scorer=scorer)``.
The selection rules are also functions over scores already computed (``best_index``, ``weighted_vote``,
``majority_vote``), e.g. for scoring stored rollouts.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from lmlab.core.config import param

from .base import Generation, Sampling, SamplingParams
from .loop import check_request
from .reference import autoregressive

WEIGHTS = ("sigmoid", "identity")


class Scorer(Protocol):
    """Scores the candidate continuations of one prompt; higher is better. One float per candidate."""

    def __call__(self, prompt_ids: list[int], candidates: list[list[int]]) -> list[float]: ...


@dataclass(kw_only=True)
class Config(SamplingParams):
    """The sampling distribution of the candidates (temperature, top_k, top_p) plus how many and from which seed."""

    n: int = param(4, "candidates sampled per prompt (N of best-of-N); >= 1",
                   source="arXiv 2412.01981 evaluates N in {1, 2, 4, 8, 16, 32, 64}")
    seed: int | None = param(None, "seed of candidate 0 (candidate i uses seed + i) when generate gets none")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.n < 1:
            raise ValueError(f"n must be >= 1, got {self.n}")


@dataclass(kw_only=True)
class VoteConfig(Config):
    """Best-of-N's sampling plus how a score becomes a vote weight."""

    weight: str = param("sigmoid", "vote weight of a candidate: sigmoid(score) (implicit PRM, the official vote) "
                        "or the raw score (identity)", choices=WEIGHTS,
                        source="eval/prm_eval_utils.py of arXiv 2412.01981")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.weight not in WEIGHTS:
            raise ValueError(f"weight {self.weight!r} is not one of {WEIGHTS}")


@dataclass
class RerankStats:
    n: int = 0  # candidates sampled
    scores: list[float] = field(default_factory=list)  # the scorer's score of each candidate, in sampling order
    chosen: int = -1  # index of the returned candidate
    candidates: list[list[int]] = field(default_factory=list)  # every candidate's new tokens
    votes: dict[Any, float] = field(default_factory=dict)  # WeightedVote: summed weight per answer (else empty)
    new_tokens: int = 0  # tokens sampled over all candidates
    target_calls: int = 0  # model forward passes over all candidates (prefills included)
    seconds: float = 0.0  # wall-clock time of sampling and scoring

    def summary(self) -> dict[str, Any]:
        """Counts, the chosen index, its score and the votes (for logs and ``lmlab generate``)."""
        out: dict[str, Any] = {"n": self.n, "chosen": self.chosen, "new_tokens": self.new_tokens,
                               "target_calls": self.target_calls, "seconds": self.seconds}
        if self.scores:
            out |= {"chosen_score": self.scores[self.chosen], "best_score": max(self.scores),
                    "worst_score": min(self.scores)}
        if self.votes:
            out |= {"answers": len(self.votes), "winning_votes": max(self.votes.values()),
                    "total_votes": sum(self.votes.values())}
        return out


def sample_candidates(model: Any, prompt: list[int], max_new_tokens: int, cfg: Config, seed: int | None,
                      eos_id: int | None, stats: RerankStats) -> list[list[int]]:
    """N candidates from the plain sampling loop; candidate i uses seed + i (None: the global RNG)."""
    sampling = Sampling(sample=True, temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p)
    seed = cfg.seed if seed is None else seed
    out = []
    for i in range(cfg.n):
        gen = autoregressive(model, prompt, max_new_tokens, sampling, None if seed is None else seed + i, eos_id)
        out.append(list(gen.tokens))
        stats.new_tokens += gen.stats.new_tokens
        stats.target_calls += gen.stats.target_calls
    stats.n, stats.candidates = cfg.n, out
    return out


def scored_candidates(model: Any, prompt: list[int] | Any, max_new_tokens: int, cfg: Config, scorer: Scorer,
                      seed: int | None, eos_id: int | None) -> tuple[list[list[int]], RerankStats]:
    """The checked request's candidates, and stats holding their counts and scores."""
    stats = RerankStats()
    prompt = check_request(model, prompt, max_new_tokens)
    cands = sample_candidates(model, prompt, max_new_tokens, cfg, seed, eos_id, stats)
    stats.scores = checked_scores(scorer, prompt, cands)
    return cands, stats


def checked_scores(scorer: Scorer, prompt: list[int], candidates: list[list[int]]) -> list[float]:
    scores = [float(s) for s in scorer(prompt, candidates)]
    if len(scores) != len(candidates):
        raise ValueError(f"the scorer returned {len(scores)} scores for {len(candidates)} candidates")
    if any(math.isnan(s) for s in scores):
        raise ValueError(f"the scorer returned NaN: {scores}")
    return scores


def sigmoid(s: float) -> float:
    return 1.0 / (1.0 + math.exp(-s)) if s >= 0 else math.exp(s) / (1.0 + math.exp(s))


def best_index(scores: Sequence[float]) -> int:
    """Index of the highest score (ties: the earliest candidate); an empty group or a NaN score is an error."""
    if len(scores) == 0:
        raise ValueError("best-of-N got an empty group of candidates")
    vals = [float(s) for s in scores]
    if any(math.isnan(v) for v in vals):
        raise ValueError(f"scores contain NaN: {vals}")
    return max(range(len(vals)), key=lambda i: (vals[i], -i))


def vote(answers: Sequence[Hashable], weights: Sequence[float]) -> tuple[Hashable, dict[Any, float]]:
    """(the answer with the largest summed weight, ties: the answer seen first; the totals per answer)."""
    if len(answers) == 0:
        raise ValueError("the vote got an empty group of candidates")
    if len(answers) != len(weights):
        raise ValueError(f"{len(answers)} answers but {len(weights)} scores")
    totals: dict[Any, float] = {}
    for a, w in zip(answers, weights):
        totals[a] = totals.get(a, 0.0) + w
    return max(totals, key=lambda a: totals[a]), totals  # dicts keep first-seen order; max keeps the first of equals


def vote_weights(scores: Sequence[float], weight: str = "sigmoid") -> list[float]:
    """A vote weight per score: ``sigmoid(score)`` (implicit PRM, the official vote) or the score itself."""
    if weight not in WEIGHTS:
        raise ValueError(f"weight {weight!r} is not one of {WEIGHTS}")
    return [sigmoid(float(s)) if weight == "sigmoid" else float(s) for s in scores]


def weighted_vote(answers: Sequence[Hashable], scores: Sequence[float], weight: str = "sigmoid") -> Hashable:
    """The answer with the largest sum of ``weight(score)`` over its candidates (ties: the answer seen first)."""
    return vote(answers, vote_weights(scores, weight))[0]


def majority_vote(answers: Sequence[Hashable]) -> Hashable:
    """The most frequent answer (ties: the answer seen first)."""
    return vote(answers, [1.0] * len(answers))[0]


def check_scorer(scorer: Any) -> Scorer:
    if not callable(scorer):
        raise TypeError(f"scorer must be callable as scorer(prompt_ids, candidates) -> list[float], got "
                        f"{type(scorer).__name__}")
    return scorer


class BestOfN:
    """Sample ``cfg.n`` candidates, return the highest-scored one (ties: the earliest)."""

    def __init__(self, cfg: Config | None = None, *, scorer: Scorer):
        self.scorer, self.cfg = check_scorer(scorer), cfg or Config()

    def generate(self, model: Any, prompt: list[int] | Any, max_new_tokens: int, seed: int | None = None,
                 eos_id: int | None = None) -> Generation:
        t0 = time.perf_counter()
        cands, stats = scored_candidates(model, prompt, max_new_tokens, self.cfg, self.scorer, seed, eos_id)
        stats.chosen = best_index(stats.scores)
        stats.seconds = time.perf_counter() - t0
        return Generation(cands[stats.chosen], stats)


def whole_answer(tokens: list[int]) -> tuple[int, ...]:
    """The default final answer of a candidate: all of its tokens (a vote over exact continuations)."""
    return tuple(tokens)


class WeightedVote:
    """Sample ``cfg.n`` candidates, sum ``weight(score)`` per final answer ``answer_of(tokens)``, and return
    the best-scored candidate among those giving the winning answer.

    ``cfg.weight`` "sigmoid" (implicit PRM weights, the official weighted vote) or "identity" (raw scores);
    ``answer_of`` defaults to the whole continuation (pass an answer extractor for reasoning chains); candidates
    whose answer is None (none found) do not vote, unless no candidate has an answer."""

    def __init__(self, cfg: VoteConfig | None = None, *, scorer: Scorer,
                 answer_of: Callable[[list[int]], Hashable] = whole_answer):
        if not callable(answer_of):
            raise TypeError(f"answer_of must be callable as answer_of(tokens) -> answer, got "
                            f"{type(answer_of).__name__}")
        if cfg is not None and not isinstance(cfg, VoteConfig):
            raise TypeError(f"weighted_vote needs a rerank.VoteConfig (its weight field), got {type(cfg).__name__}")
        self.scorer, self.answer_of, self.cfg = check_scorer(scorer), answer_of, cfg or VoteConfig()

    def generate(self, model: Any, prompt: list[int] | Any, max_new_tokens: int, seed: int | None = None,
                 eos_id: int | None = None) -> Generation:
        t0 = time.perf_counter()
        cands, stats = scored_candidates(model, prompt, max_new_tokens, self.cfg, self.scorer, seed, eos_id)
        answers = [self.answer_of(c) for c in cands]
        weights = vote_weights(stats.scores, self.cfg.weight)
        voters = [i for i, a in enumerate(answers) if a is not None] or list(range(len(answers)))
        winner, stats.votes = vote([answers[i] for i in voters], [weights[i] for i in voters])
        stats.chosen = max((i for i, a in enumerate(answers) if a == winner), key=lambda i: (stats.scores[i], -i))
        stats.seconds = time.perf_counter() - t0
        return Generation(cands[stats.chosen], stats)
