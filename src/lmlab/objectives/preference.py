"""Response log-probabilities: the quantity every preference and implicit-reward method is built on.

DPO (Rafailov et al., arXiv:2305.18290), the implicit PRM (Yuan et al., arXiv:2412.01981, official code
github.com/PRIME-RL/ImplicitPRM) and RISE (Xu et al., arXiv:2410.06638) all score a response y to a prompt x by
summed token log-probabilities over the response only (the prompt masked), ``log pi(y | x) = sum_i log pi(y_i |
x, y_<i)``, and compare a policy with a frozen reference through the token log-ratios ``log pi_theta - log pi_ref``.

Layout of a batch: ``ids`` (B, T) holds prompt + response (+ padding); ``response_mask`` (B, T) is True on the
response tokens (the tokens being scored, never position 0). Token t is predicted by the logits at t - 1, so the
per-token tensors here are (B, T - 1), aligned with ``ids[:, 1:]``.

Losses on these quantities (all with the implicit reward ``r(y) = beta * (log pi_theta(y|x) - log pi_ref(y|x))``):
- DPO: ``-log sigma(r(y_w) - r(y_l))`` (Rafailov et al. eq. 7), optionally plus RISE's NLL term on the chosen
  response ``alpha * NLL(y_w | x) / |y_w|`` (training.md 2.2, the RPO form; TRL's ``rpo_alpha``);
- CE (the implicit PRM's ``CETrainer``): BCE of ``sigma(r(y))`` against the outcome label, per response.
Pairing for DPO follows the implicit PRM's data rule (training.md 1.2): every correct x every wrong rollout of one
prompt; prompts whose rollouts are all correct or all wrong give no pair.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lmlab.core.lm import LM


def check_mask(ids: torch.Tensor, response_mask: torch.Tensor) -> None:
    if ids.ndim != 2 or response_mask.shape != ids.shape:
        raise ValueError(f"ids {tuple(ids.shape)} and response_mask {tuple(response_mask.shape)} must both be (B, T)")
    if response_mask[:, 0].any():
        raise ValueError("response_mask is True at position 0: the first token has no context to be scored from")
    empty = (~response_mask.bool()).all(dim=1).nonzero().flatten().tolist()
    if empty:
        raise ValueError(f"rows {empty[:5]} have an empty response (response_mask all False)")


def response_batch(rows: Sequence[tuple[Sequence[int], Sequence[int]]], pad_id: int = 0
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ``ids`` (B, T) of prompt + response rows and their ``response_mask`` (B, T)."""
    T = max(len(p) + len(r) for p, r in rows)
    ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
    mask = torch.zeros(len(rows), T, dtype=torch.bool)
    for i, (p, r) in enumerate(rows):
        ids[i, : len(p) + len(r)] = torch.tensor(list(p) + list(r), dtype=torch.long)
        mask[i, len(p): len(p) + len(r)] = True
    return ids, mask


def token_logprobs(model: LM, ids: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """log pi(ids[:, t] | ids[:, :t]) for t = 1..T-1 on response tokens, 0 elsewhere: (B, T - 1), float32."""
    check_mask(ids, response_mask)
    logits = model(ids[:, :-1])  # (B, T - 1, V)
    logp = F.log_softmax(logits.float(), dim=-1)
    picked = logp.gather(-1, ids[:, 1:, None].to(logits.device)).squeeze(-1)  # (B, T - 1)
    return picked * response_mask[:, 1:].to(picked.device, picked.dtype)


def sequence_logprobs(model: LM, ids: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """Summed response log-probability log pi(y | x) per row: (B,)."""
    return token_logprobs(model, ids, response_mask).sum(-1)


def naive_response_logprob(model: LM, prompt: list[int], response: list[int]) -> torch.Tensor:
    """Reference: one forward per response token over the exact prefix (no batching, no padding); differentiable."""
    total = torch.zeros(())
    for i, tok in enumerate(response):
        prefix = torch.tensor([prompt + response[:i]])
        total = total + F.log_softmax(model(prefix)[0, -1].float(), dim=-1)[tok]
    return total


def naive_sequence_logprob(model: LM, prompt: list[int], response: list[int]) -> float:
    """The same sum as a Python float, accumulated in double precision (no rounding of its own)."""
    total = 0.0
    for i, tok in enumerate(response):
        prefix = torch.tensor([prompt + response[:i]])
        total += float(F.log_softmax(model(prefix)[0, -1].float(), dim=-1)[tok])
    return total


# ---------------------------------------------------------------------------------------------------- losses
def check_beta(beta: float) -> None:
    if not isinstance(beta, (int, float)) or isinstance(beta, bool) or not beta > 0:
        raise ValueError(f"beta must be a positive number (the implicit reward's scale), got {beta!r}")


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, beta: float, nll: torch.Tensor | None = None,
             nll_coef: float = 0.0) -> tuple[torch.Tensor, dict[str, float]]:
    """Mean sigmoid-DPO loss over pairs from summed response log-probs (each (B,)), plus ``nll_coef * mean(nll)``
    when given (``nll`` (B,): the chosen response's per-token NLL). Metrics: mean rewards, margin, accuracy."""
    check_beta(beta)
    shapes = {tuple(t.shape) for t in (policy_chosen, policy_rejected, ref_chosen, ref_rejected)}
    if len(shapes) != 1 or len(next(iter(shapes))) != 1:
        raise ValueError(f"dpo_loss needs four (B,) tensors of one shape, got shapes {sorted(shapes)}")
    if nll_coef and nll is None:
        raise ValueError(f"nll_coef={nll_coef} needs the chosen responses' nll (B,)")
    ref_chosen, ref_rejected = ref_chosen.detach(), ref_rejected.detach()  # the reference is a constant
    r_w = beta * (policy_chosen - ref_chosen)  # (B,) implicit rewards
    r_l = beta * (policy_rejected - ref_rejected)  # (B,)
    loss = -F.logsigmoid(r_w - r_l).mean()
    w, lo = r_w.detach(), r_l.detach()
    metrics = {"reward_chosen": float(w.mean()), "reward_rejected": float(lo.mean()),
               "reward_margin": float((w - lo).mean()), "reward_accuracy": float((w > lo).float().mean())}
    if nll is not None:
        metrics["dpo_loss"] = float(loss.detach())
        metrics["nll"] = float(nll.detach().mean())
        if nll_coef:
            loss = loss + nll_coef * nll.mean()
    return loss, metrics


def ce_reward_loss(policy_logp: torch.Tensor, ref_logp: torch.Tensor, label: torch.Tensor,
                   beta: float) -> tuple[torch.Tensor, dict[str, float]]:
    """Implicit PRM CE loss: mean BCE of sigma(beta * (log pi_theta(y) - log pi_ref(y))) against ``label`` in {0, 1}
    (all (B,)). The official CETrainer applies ``nn.BCELoss`` to the sigmoid; the logits form here is the same
    function without its log(0) clamp."""
    check_beta(beta)
    if not policy_logp.shape == ref_logp.shape == label.shape or policy_logp.ndim != 1:
        raise ValueError(f"ce_reward_loss needs three (B,) tensors, got {tuple(policy_logp.shape)}, "
                         f"{tuple(ref_logp.shape)}, {tuple(label.shape)}")
    label = label.to(policy_logp.dtype)
    if ((label != 0) & (label != 1)).any():
        raise ValueError(f"ce_reward_loss labels must be 0 or 1, got {sorted(set(label.tolist()))[:5]}")
    reward = beta * (policy_logp - ref_logp.detach())  # (B,)
    loss = F.binary_cross_entropy_with_logits(reward, label)
    acc = ((reward.detach() > 0) == (label > 0.5)).float().mean()
    return loss, {"reward_mean": float(reward.detach().mean()), "reward_accuracy": float(acc)}


def naive_dpo_loss(policy: LM, reference: LM, pairs: list[tuple[list[int], list[int], list[int]]], beta: float,
                   nll_coef: float = 0.0) -> torch.Tensor:
    """Reference for ``dpo_loss`` on (prompt, chosen, rejected) token lists: one example at a time, per-token
    log-probs, the loss written as log(1 + exp(-z))."""
    total = torch.zeros(())
    for prompt, chosen, rejected in pairs:
        pc, pr = naive_response_logprob(policy, prompt, chosen), naive_response_logprob(policy, prompt, rejected)
        with torch.no_grad():
            rc, rr = naive_response_logprob(reference, prompt, chosen), naive_response_logprob(reference, prompt,
                                                                                             rejected)
        z = beta * ((pc - rc) - (pr - rr))
        total = total + torch.log1p(torch.exp(-z)) + nll_coef * (-pc / len(chosen))
    return total / len(pairs)


def naive_ce_loss(policy: LM, reference: LM, rows: list[tuple[list[int], list[int], int]],
                  beta: float) -> torch.Tensor:
    """Reference for ``ce_reward_loss`` on (prompt, response, label) rows, as the official sigmoid + BCE."""
    total = torch.zeros(())
    for prompt, response, label in rows:
        with torch.no_grad():
            ref = naive_response_logprob(reference, prompt, response)
        p = torch.sigmoid(beta * (naive_response_logprob(policy, prompt, response) - ref))
        total = total - (torch.log(p) if label else torch.log(1 - p))
    return total / len(rows)


# ---------------------------------------------------------------------------------------------------- pairs
@dataclass
class PairCounts:
    prompts: int  # distinct prompts seen
    kept: int  # prompts with at least one correct and one wrong rollout
    all_correct: int  # dropped: every rollout correct
    all_wrong: int  # dropped: every rollout wrong
    pairs: int  # correct x wrong pairs over the kept prompts


def dpo_pairs(groups: Sequence[Hashable], correct: Sequence[bool]) -> tuple[list[tuple[int, int]], PairCounts]:
    """Rollout i belongs to prompt ``groups[i]`` and is ``correct[i]``: (chosen, rejected) index pairs, every
    correct x every wrong rollout of a prompt, in index order, and what was dropped."""
    if len(groups) != len(correct):
        raise ValueError(f"dpo_pairs got {len(groups)} group ids but {len(correct)} labels")
    by_prompt: dict[Hashable, tuple[list[int], list[int]]] = {}
    for i, (g, ok) in enumerate(zip(groups, correct)):
        by_prompt.setdefault(g, ([], []))[0 if ok else 1].append(i)
    pairs = [(w, lo) for good, bad in by_prompt.values() for w in good for lo in bad]
    kept = sum(bool(good) and bool(bad) for good, bad in by_prompt.values())
    all_correct = sum(not bad for _, bad in by_prompt.values())
    return pairs, PairCounts(len(by_prompt), kept, all_correct, len(by_prompt) - kept - all_correct, len(pairs))
