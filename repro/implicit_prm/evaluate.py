"""Test metrics on N samples per prompt: pass@1, majority vote, pass@N, best-of-N and weighted votes with each
reward model, and first-error localisation (argmin of the per-step implicit reward vs the true first wrong step).

Accuracy of a picked sample or voted answer is final-answer correctness (as MATH500 is graded); ``strict`` rows
count a sample only when every step is right too.
"""

from __future__ import annotations

import torch

from lmlab.decoding.rerank import majority_vote, weighted_vote
from lmlab.objectives.implicit_prm import EVAL_COEF, first_error_accuracy

from .experiment import Rollouts
from .rewards import bon_accuracy


def groups(ro: Rollouts) -> list[range]:
    return [range(i, i + ro.n) for i in range(0, len(ro.prompts), ro.n)]


def baselines(ro: Rollouts) -> dict[str, float]:
    truth = {ro.prompts[r]: ro.finals[r] for r in range(len(ro.prompts)) if ro.strict[r]}
    out = {"pass1": sum(ro.final_ok) / len(ro.final_ok), "pass1_strict": sum(ro.strict) / len(ro.strict)}
    gs = groups(ro)
    out["passN"] = sum(any(ro.final_ok[r] for r in g) for g in gs) / len(gs)
    votes = [majority_vote([ro.finals[r] for r in g]) for g in gs]
    out["majority"] = sum(vote_ok(ro, g, v) for g, v in zip(gs, votes)) / len(gs)
    out["test_prompts_with_a_strict_sample"] = len(truth)
    return out


def vote_ok(ro: Rollouts, g: range, answer) -> bool:
    """The voted answer is right iff some sample of the group with that final answer is final-correct."""
    return any(ro.final_ok[r] and ro.finals[r] == answer for r in g) if answer is not None else False


def weighted(ro: Rollouts, scores: list[float]) -> float:
    gs = groups(ro)
    votes = [weighted_vote([ro.finals[r] for r in g], [scores[r] for r in g]) for g in gs]
    return sum(vote_ok(ro, g, v) for g, v in zip(gs, votes)) / len(gs)


def prm_metrics(name: str, ro: Rollouts, rewards: list[torch.Tensor], beta: float) -> dict[str, float]:
    """BoN (min / sum of single step rewards), weighted votes at the training beta and at the official 0.001,
    and first-error localisation on strictly wrong samples whose written step count is the task's."""
    mins = [float(r.min()) for r in rewards]
    sums = [float(r.sum()) for r in rewards]
    scale = EVAL_COEF / beta  # the rewards were computed with ``beta``
    out = {f"bon_{name}_min": bon_accuracy(mins, ro.final_ok, ro.n),
           f"bon_{name}_sum": bon_accuracy(sums, ro.final_ok, ro.n),
           f"bon_{name}_min_strict": bon_accuracy(mins, ro.strict, ro.n),
           f"wmaj_{name}_min": weighted(ro, mins), f"wmaj_{name}_sum": weighted(ro, sums),
           f"wmaj_{name}_min_coef001": weighted(ro, [s * scale for s in mins]),
           f"wmaj_{name}_sum_coef001": weighted(ro, [s * scale for s in sums])}
    K = max(ro.n_steps)
    keep = [r for r in range(len(rewards)) if ro.first_error[r] is not None and ro.n_steps[r] == len(rewards[r])
            and ro.first_error[r] < len(rewards[r])]
    fe = first_error_accuracy([rewards[r] for r in keep], [ro.first_error[r] for r in keep])
    out |= {f"fe_{name}": fe.accuracy, f"fe_{name}_chance": fe.chance, f"fe_{name}_ratio": fe.accuracy / fe.chance,
            f"fe_{name}_n": fe.n, "fe_max_steps": K}
    return out
