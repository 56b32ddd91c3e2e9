"""Implicit PRM: step rewards from any (policy, reference) pair of LMs, with no step labels.

Paper: "Free Process Rewards without Process Labels" (Yuan et al., arXiv 2412.01981, ICML 2025); official code
github.com/PRIME-RL/ImplicitPRM (scoring in ``eval/prm_eval_utils.py``).

The idea: parameterise an outcome reward as a scaled log-likelihood ratio, ``r(y) = beta * sum_i log
pi_theta(y_i|x,y_<i) / pi_ref(y_i|x,y_<i)``, and train it on final-answer labels only (CE or DPO). Then the
running sum of the token terms up to token t is a soft Q-value of that outcome reward (Proposition 3.1), so
per-step process rewards come for free: ``r^t = q^{end of step t} - q^{end of step t-1}``. Any DPO checkpoint and
its base model is such a pair; so is an ``adapters.AdaptedModel`` and the frozen base it wraps.

Scoring, as the official evaluation does it: token reward ``beta * (logp_theta - logp_ref)`` masked to the
response; cumulative sum gathered at the last token of each step gives the "accumulative" values q^t (the first
step's sum starts at the end of the prompt, i.e. from 0); first differences give the "single" per-step rewards
r^t; one number per response by ``min`` (the paper's PRM view) or ``sum`` (of single rewards = the outcome reward,
the ORM view); best-of-N takes the argmax; weighted majority vote sums ``sigmoid(score)`` per distinct final answer
(both rules live in ``decoding.rerank``: the ``best_of_n`` / ``weighted_vote`` decoders and ``best_index`` /
``weighted_vote`` over stored scores).
"w/o ref" (``use_reference=False``) uses ``beta * logp_theta`` alone.

Defaults and sources:
- ``beta`` 0.05 = the training beta of the official CE/DPO scripts (``train/tasks/run_ce.sh``). The official
  evaluation scores with ``coef = 0.001`` instead (``EVAL_COEF``). A positive scale changes no argmax nor any
  ``min``/``sum`` ranking, so best-of-N does not care; it matters only where a sigmoid is taken. For a weighted
  vote with a CE-trained model use the training beta: then ``sigmoid(score)`` with ``sum`` is exactly the
  probability of a correct outcome the model was trained to predict. Use 0.001 to reproduce the official numbers
  (the weights are then ~0.5 each: majority vote with reward tie-breaking).
- aggregation ``min`` over ``single`` step rewards (the paper's PRM scoring; the repo's issue #9 shows the choice
  is not stated in the paper, so both axes are configurable and must be reported).
Deviations: steps are given as token indices (or split at separator tokens), not re-templated ``Step k:`` text;
padding is excluded by per-row lists instead of the official 1e3 fill.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from lmlab.core.config import param
from lmlab.core.lm import require_lm

from .preference import response_batch, token_logprobs

TRAIN_BETA = 0.05  # official training beta (train/tasks/run_ce.sh, run_dpo.sh)
EVAL_COEF = 0.001  # official scoring coefficient (eval/prm_eval_utils.py)
AGGREGATIONS = ("min", "sum", "last", "mean")
REWARD_KINDS = ("single", "accumulative")


@dataclass(kw_only=True)
class Config:
    beta: float = param(TRAIN_BETA, "scale of the token rewards beta * log(pi_theta / pi_ref); > 0",
                        source="arXiv 2412.01981 training scripts (beta 0.05); official scoring uses 0.001")
    aggregation: str = param("min", "how step values become one score per response", choices=AGGREGATIONS,
                             source="eval/prm_eval_utils.py (min or sum)")
    reward: str = param("single", "step values: per-step rewards r^t (single) or running sums q^t (accumulative)",
                        choices=REWARD_KINDS, source="eval/prm_eval_utils.py")
    use_reference: bool = param(True, "subtract the reference log-probs; False = the 'w/o ref' variant")

    def __post_init__(self) -> None:
        if not self.beta > 0:
            raise ValueError(f"beta must be > 0, got {self.beta}")
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(f"aggregation {self.aggregation!r} is not one of {AGGREGATIONS}")
        if self.reward not in REWARD_KINDS:
            raise ValueError(f"reward {self.reward!r} is not one of {REWARD_KINDS}")


def aggregate(values: torch.Tensor, how: str) -> float:
    """One number from a response's step values (1-D, at least one step): min, sum, last or mean."""
    if values.ndim != 1 or values.numel() == 0:
        raise ValueError(f"step values must be a non-empty 1-D tensor, got shape {tuple(values.shape)}")
    ops = {"min": lambda v: v.min(), "sum": lambda v: v.sum(), "last": lambda v: v[-1], "mean": lambda v: v.mean()}
    if how not in ops:
        raise ValueError(f"aggregation {how!r} is not one of {AGGREGATIONS}")
    return float(ops[how](values.detach()))


class ImplicitPRM:
    """Process rewards of ``policy`` against ``reference`` (any two LMs sharing a vocabulary).

    ``reference`` may be None when ``cfg.use_reference`` is False or when every call passes precomputed
    ``ref_logprobs`` (from ``reference_logprobs``: the reference never changes, so cache them).
    """

    def __init__(self, policy: Any, reference: Any = None, cfg: Config | None = None):
        self.cfg = cfg or Config()
        self.policy = require_lm(policy, "ImplicitPRM (policy)")
        self.reference = None if reference is None else require_lm(reference, "ImplicitPRM (reference)")
        if self.reference is not None and self.reference.vocab_size != self.policy.vocab_size:
            raise ValueError(f"policy vocab_size {self.policy.vocab_size} != reference vocab_size "
                             f"{self.reference.vocab_size}: the log-ratio needs one shared vocabulary")

    @torch.no_grad()
    def reference_logprobs(self, ids: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
        """log pi_ref of the response tokens, (B, T - 1), zero off the response: cache and pass back in."""
        if self.reference is None:
            raise ValueError("no reference model: pass one to ImplicitPRM or give ref_logprobs")
        return token_logprobs(self.reference, ids, response_mask).float()

    def token_rewards(self, ids: torch.Tensor, response_mask: torch.Tensor,
                      ref_logprobs: torch.Tensor | None = None) -> torch.Tensor:
        """beta * (logp_theta - logp_ref) on response tokens, 0 elsewhere: (B, T - 1), aligned with ids[:, 1:]."""
        logp = token_logprobs(self.policy, ids, response_mask).float()  # (B, T-1)
        if self.cfg.use_reference:
            if ref_logprobs is None:
                ref_logprobs = self.reference_logprobs(ids, response_mask)
            elif tuple(ref_logprobs.shape) != tuple(logp.shape):
                raise ValueError(f"ref_logprobs {tuple(ref_logprobs.shape)} must be (B, T - 1) = {tuple(logp.shape)}")
            mask = response_mask[:, 1:].to(logp.device, logp.dtype)
            logp = logp - ref_logprobs.to(logp.device, logp.dtype) * mask
        return self.cfg.beta * logp

    def step_values(self, ids: torch.Tensor, response_mask: torch.Tensor, step_ends: Sequence[Sequence[int]],
                    ref_logprobs: torch.Tensor | None = None) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """(accumulative q^t per row, single r^t per row); each a 1-D tensor with one value per step."""
        check_step_ends(response_mask, step_ends)
        q_all = self.token_rewards(ids, response_mask, ref_logprobs).cumsum(-1)  # (B, T-1); column j <-> ids[j+1]
        qs, rs = [], []
        for row, ends in enumerate(step_ends):
            q = q_all[row, torch.as_tensor(list(ends), device=q_all.device) - 1]  # (K,)
            qs.append(q)
            rs.append(torch.diff(q, prepend=q.new_zeros(1)))  # r^1 = q^1 - 0 (cumsum is 0 at the prompt's end)
        return qs, rs

    def step_rewards(self, ids: torch.Tensor, response_mask: torch.Tensor, step_ends: Sequence[Sequence[int]],
                     ref_logprobs: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Per-step process rewards r^t per row (differences of the running sum at the step ends)."""
        return self.step_values(ids, response_mask, step_ends, ref_logprobs)[1]

    @torch.no_grad()
    def score(self, ids: torch.Tensor, response_mask: torch.Tensor, step_ends: Sequence[Sequence[int]],
              ref_logprobs: torch.Tensor | None = None) -> list[float]:
        """One score per row: ``cfg.aggregation`` over ``cfg.reward`` step values."""
        qs, rs = self.step_values(ids, response_mask, step_ends, ref_logprobs)
        values = rs if self.cfg.reward == "single" else qs
        return [aggregate(v, self.cfg.aggregation) for v in values]


def check_step_ends(response_mask: torch.Tensor, step_ends: Sequence[Sequence[int]]) -> None:
    """Step ends must be strictly increasing ids indices of response tokens, one non-empty list per row."""
    if len(step_ends) != response_mask.shape[0]:
        raise ValueError(f"step_ends has {len(step_ends)} rows, the batch has {response_mask.shape[0]}")
    for row, ends in enumerate(step_ends):
        ends = list(ends)
        if not ends:
            raise ValueError(f"row {row} has no steps (empty step_ends)")
        inside = response_mask[row].nonzero().flatten().tolist()
        bad = [e for e in ends if e not in inside]
        if bad:
            raise ValueError(f"row {row}: step end {bad[0]} is outside the response (token indices "
                             f"{inside[0]}..{inside[-1]})")
        if any(b <= a for a, b in zip(ends, ends[1:])):
            raise ValueError(f"row {row}: step ends {ends} are not strictly increasing")


def step_ends_from_separator(ids: torch.Tensor, response_mask: torch.Tensor,
                             sep_ids: Sequence[int]) -> list[list[int]]:
    """A step ends at every response token in ``sep_ids`` (the separator belongs to its step) and at the
    response's last token. E.g. ';' in "3+4=7;7+2=9" gives steps "3+4=7;" and "7+2=9". No separators: one step."""
    seps = set(int(s) for s in sep_ids)
    out = []
    for row in range(ids.shape[0]):
        pos = response_mask[row].nonzero().flatten().tolist()
        if not pos:
            raise ValueError(f"row {row} has an empty response")
        ends = [p for p in pos[:-1] if int(ids[row, p]) in seps]
        out.append(ends + [pos[-1]])
    return out


def as_scorer(prm: ImplicitPRM, sep_ids: Sequence[int] = (), pad_id: int = 0
              ) -> Callable[[list[int], list[list[int]]], list[float]]:
    """The PRM as a ``decoding.rerank.Scorer``: scores each candidate continuation of one prompt (steps split at
    ``sep_ids``; none = the whole response is one step)."""

    def scorer(prompt_ids: list[int], candidates: list[list[int]]) -> list[float]:
        if not prompt_ids or not candidates or any(len(c) == 0 for c in candidates):
            raise ValueError("the scorer needs a non-empty prompt and at least one non-empty candidate")
        ids, mask = response_batch([(prompt_ids, c) for c in candidates], pad_id)
        ids = ids.to(prm.policy.device)
        return prm.score(ids, mask, step_ends_from_separator(ids, mask, sep_ids))

    return scorer


# ---- evaluation: first-error localisation (ProcessBench-style); best-of-N and votes are decoding.rerank's

@dataclass
class FirstError:
    accuracy: float  # share of wrong responses where argmin_t r^t is the true first wrong step
    chance: float  # mean of 1/K over those responses (a uniform guess of the step)
    n: int  # wrong responses evaluated (rows with true first error None are skipped)


def first_error_accuracy(step_rewards: Sequence[torch.Tensor | Sequence[float]],
                         true_first_error: Sequence[int | None]) -> FirstError:
    """argmin of the per-step rewards vs the true first erroneous step (0-based; None = a correct response)."""
    if len(step_rewards) != len(true_first_error):
        raise ValueError(f"{len(step_rewards)} responses but {len(true_first_error)} first-error labels")
    hits, chance, n = 0, 0.0, 0
    for i, (r, t) in enumerate(zip(step_rewards, true_first_error)):
        if t is None:
            continue
        r = torch.as_tensor(r, dtype=torch.float64)
        if r.ndim != 1 or r.numel() == 0 or not 0 <= t < r.numel():
            raise ValueError(f"response {i}: first error {t} is not a step index of its {r.numel()} step rewards")
        hits += int(int(r.argmin()) == t)  # ties: the earliest step
        chance += 1.0 / r.numel()
        n += 1
    if n == 0:
        raise ValueError("no wrong responses (every true_first_error is None): nothing to localise")
    return FirstError(hits / n, chance / n, n)


def predicted_first_error(step_scores: Sequence[float], threshold: float) -> int | None:
    """ProcessBench's prediction: the first step scored below ``threshold``, None if no step is."""
    return next((i for i, s in enumerate(step_scores) if float(s) < threshold), None)


def processbench_f1(step_scores: Sequence[Sequence[float]], true_first_error: Sequence[int | None],
                    threshold: float) -> tuple[float, float, float]:
    """(accuracy on wrong responses, accuracy on correct ones, their harmonic mean F1) at one threshold.

    A wrong response counts when the predicted first error is the true one; a correct response counts when no
    step falls below the threshold (ProcessBench, Zheng et al. 2024)."""
    if len(step_scores) != len(true_first_error):
        raise ValueError(f"{len(step_scores)} responses but {len(true_first_error)} first-error labels")
    wrong = [predicted_first_error(s, threshold) == t for s, t in zip(step_scores, true_first_error) if t is not None]
    right = [predicted_first_error(s, threshold) is None for s, t in zip(step_scores, true_first_error) if t is None]
    if not wrong or not right:
        raise ValueError("ProcessBench F1 needs both wrong and correct responses")
    a, b = sum(wrong) / len(wrong), sum(right) / len(right)
    return a, b, (2 * a * b / (a + b) if a + b else 0.0)


def best_threshold(step_scores: Sequence[Sequence[float]],
                   true_first_error: Sequence[int | None]) -> tuple[float, float]:
    """(threshold, F1) maximising ``processbench_f1`` over every distinct cut between observed step scores (an
    exact search; the official code scans 2000 evenly spaced slices)."""
    vals = sorted({float(s) for row in step_scores for s in row})
    if not vals:
        raise ValueError("no step scores")
    cuts = [vals[0] - 1.0] + [(a + b) / 2 for a, b in zip(vals, vals[1:])] + [vals[-1] + 1.0]
    best = max(cuts, key=lambda c: processbench_f1(step_scores, true_first_error, c)[2])
    return best, processbench_f1(step_scores, true_first_error, best)[2]
