"""Response log-probabilities: the quantity every preference and implicit-reward method is built on.

DPO (Rafailov et al., arXiv:2305.18290), the implicit PRM (Yuan et al., arXiv:2412.01981, official code
github.com/PRIME-RL/ImplicitPRM) and RISE (Xu et al., arXiv:2410.06638) all score a response y to a prompt x by
summed token log-probabilities over the response only (the prompt masked), ``log pi(y | x) = sum_i log pi(y_i |
x, y_<i)``, and compare a policy with a frozen reference through the token log-ratios ``log pi_theta - log pi_ref``.

Layout of a batch: ``ids`` (B, T) holds prompt + response (+ padding); ``response_mask`` (B, T) is True on the
response tokens (the tokens being scored, never position 0). Token t is predicted by the logits at t - 1, so the
per-token tensors here are (B, T - 1), aligned with ``ids[:, 1:]``.
"""

from __future__ import annotations

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


def naive_sequence_logprob(model: LM, prompt: list[int], response: list[int]) -> float:
    """Reference: one forward per response token over the exact prefix (no batching, no padding)."""
    total = 0.0
    for i, tok in enumerate(response):
        prefix = torch.tensor([prompt + response[:i]])
        total += float(F.log_softmax(model(prefix)[0, -1].float(), dim=-1)[tok])
    return total
