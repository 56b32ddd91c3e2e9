"""Base-set search: MoICE's base set is model-specific (the maintainers, issue #1: "needs to be searched").

``search_bases(model, candidates, score_fn)`` scores candidate base sets with a user-given function and returns
the best. Each trial applies MoICE to a fresh copy of ``model`` (``copy.deepcopy``: the model is never modified;
memory is one extra model at a time) and calls ``score_fn(moice_model, bases) -> float`` (higher is better),
which may train the routers first (e.g. a few router-only Trainer steps) and then measure, for example,
retrieval accuracy on a needle-at-depth probe.

Strategies:
    greedy  start from ``[first]`` (the model's own base: it rotates the router input) and add, N - 1 times, the
            candidate whose addition scores best; N - 1 rounds of at most len(candidates) trials.
    grid    every set ``[first] + c`` for c a combination of N - 1 candidates (C(len(candidates), N - 1) trials).

    result = search_bases(model, [2500, 5000, 20000, 40000], probe, n_bases=3, first=10000)
    result.bases, result.score, result.trials      # best set, its score, every (bases, score) tried
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from torch import nn

from .apply import apply_moice
from .attention import Config


@dataclass
class SearchResult:
    bases: list[float]  # the best base set found, bases[0] = ``first``
    score: float  # its score
    trials: list[tuple[list[float], float]] = field(default_factory=list)  # every set tried, in order, with its score


def _score(model: nn.Module, bases: list[float], cfg: Config | None,
           score_fn: Callable[[nn.Module, list[float]], float], trials: list[tuple[list[float], float]]) -> float:
    if cfg is None:
        trial_cfg = Config(bases=list(bases))  # dense: K = N
    else:
        trial_cfg = dataclasses.replace(cfg, bases=list(bases), top_k=min(cfg.top_k, len(bases)))
    value = float(score_fn(apply_moice(copy.deepcopy(model), trial_cfg), list(bases)))
    trials.append((list(bases), value))
    return value


def search_bases(model: nn.Module, candidates: Sequence[float], score_fn: Callable[[nn.Module, list[float]], float],
                 *, n_bases: int, first: float, strategy: str = "greedy", cfg: Config | None = None) -> SearchResult:
    """The best base set of ``n_bases`` bases, ``first`` then ``n_bases - 1`` of ``candidates`` (see the module doc).

    ``cfg`` gives the other MoICE settings of every trial (its bases are replaced; its top_k is capped at each
    set's size; default: dense routing, K = N).
    """
    pool = [float(c) for c in dict.fromkeys(candidates) if float(c) != float(first)]
    if strategy not in ("greedy", "grid"):
        raise ValueError(f"search strategy {strategy!r} is unknown; expected 'greedy' or 'grid'")
    if n_bases < 1 or n_bases - 1 > len(pool):
        raise ValueError(f"n_bases={n_bases} needs 1 <= n_bases <= 1 + {len(pool)} distinct candidates other than "
                         f"first={first}")
    Config(bases=[first, *pool])  # checks every base (positive, finite)
    trials: list[tuple[list[float], float]] = []
    if strategy == "grid":
        sets = [[float(first), *combo] for combo in itertools.combinations(pool, n_bases - 1)]
        scores = [_score(model, s, cfg, score_fn, trials) for s in sets]
        best = max(range(len(sets)), key=scores.__getitem__)
        return SearchResult(sets[best], scores[best], trials)
    chosen = [float(first)]
    best_score = _score(model, chosen, cfg, score_fn, trials) if n_bases == 1 else float("-inf")
    for _ in range(n_bases - 1):
        left = [c for c in pool if c not in chosen]
        scores = [_score(model, [*chosen, c], cfg, score_fn, trials) for c in left]
        i = max(range(len(left)), key=scores.__getitem__)
        chosen, best_score = [*chosen, left[i]], scores[i]
    return SearchResult(chosen, best_score, trials)
