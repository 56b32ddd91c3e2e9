"""Next-token NLL and perplexity: the one implementation every evaluation in lmlab calls.

``score(model, ids, bos_id=None)`` sums the next-token negative log-likelihood (nats, float32 log-softmax) over
windows ``ids`` (N, T) or a list of batches (B, T). Without ``bos_id`` the first token of a window is context
and T - 1 tokens are scored. With ``bos_id`` each window is fed as [BOS, w_0 .. w_{T-1}]: BOS is context only
(never a target) and all T tokens are scored, as a model trained with a BOS in front of every text expects
(Gemma; scoring it without BOS measures a model out of its training distribution).

Which convention applies is the tokenizer's: ``bos_convention(tok)`` is the BOS id that a tokenizer puts in
front of a text by default (Gemma's does), else None (Llama / SmolLM2, and lmlab's own tokenizers, whose
``encode`` never adds specials). Results carry ``bos_used`` so every printed number says which was used.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class NLL:
    total_nll: float  # sum of next-token NLL over the scored tokens (nats)
    tokens: int  # scored tokens (N (T - 1) without BOS, N T with BOS)
    mean_nll: float  # total_nll / tokens (nats per token)
    perplexity: float  # exp(mean_nll)
    bos_used: bool  # a BOS token was put in front of every window (context only, not scored)


def token_nll(logits: torch.Tensor, targets: torch.Tensor, reduction: str = "sum") -> torch.Tensor:
    """NLL of ``targets`` (B, T) under ``logits`` (B, T, V), log-softmax in float32; reduction sum | mean | none."""
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), reduction=reduction)


def token_batches(ids: torch.Tensor | Iterable[torch.Tensor], batch_size: int | None = None,
                  min_len: int = 1) -> list[torch.Tensor]:
    """(N, T) split into ``batch_size`` rows (whole when None), or the given list of (B, T) batches; each must be
    integer token ids with T >= ``min_len`` (ValueError naming the shape otherwise)."""
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if isinstance(ids, torch.Tensor):
        batches = list(ids.split(batch_size)) if batch_size else [ids]
    else:
        batches = [b for x in ids for b in (x.split(batch_size) if batch_size else [x])]
    if not batches:
        raise ValueError("nothing to score: expected token ids (N, T) or a non-empty list of (B, T) batches")
    for b in batches:
        if not isinstance(b, torch.Tensor) or b.ndim != 2 or b.shape[1] < min_len or b.is_floating_point():
            raise ValueError(f"token ids must be integer tensors of shape (B, T >= {min_len}), got "
                             f"{getattr(b, 'shape', type(b).__name__)} {getattr(b, 'dtype', '')}")
    return batches


@torch.no_grad()
def score(model: nn.Module, ids: torch.Tensor | Iterable[torch.Tensor], *, bos_id: int | None = None,
          batch_size: int | None = None) -> NLL:
    """Next-token NLL of ``model(ids) -> logits (B, T, V)`` over windows ids (N, T) or a list of (B, T) batches.

    The model's train / eval mode is left as it is (callers that evaluate put it in eval mode).
    """
    total, count = 0.0, 0
    for batch in token_batches(ids, batch_size):
        if bos_id is not None:
            batch = torch.cat([batch.new_full((batch.shape[0], 1), int(bos_id)), batch], dim=1)  # (B, 1 + T)
        if batch.shape[1] < 2:
            raise ValueError(f"windows of {batch.shape[1]} token(s) predict nothing; need T >= 2 (or BOS + 1)")
        logits = model(batch)  # (B, T', V)
        total += float(token_nll(logits[:, :-1], batch[:, 1:]))
        count += batch[:, 1:].numel()
    mean = total / count
    return NLL(total, count, mean, math.exp(mean), bos_id is not None)


def bos_convention(tok: Any) -> int | None:
    """The BOS id ``tok`` puts in front of a text by default, else None.

    ``tok``: a transformers tokenizer, lmlab's ``HFTokenizer`` (its wrapped ``.tok`` is asked) or an lmlab
    tokenizer (None: their ``encode`` adds no specials and lmlab models are trained without BOS). Decided by
    what the tokenizer does (``add_special_tokens=True`` on a short text), which is what ``add_bos_token`` says.
    """
    hf = getattr(tok, "tok", tok)
    bos = getattr(hf, "bos_token_id", None)
    if bos is None or not callable(getattr(hf, "encode", None)):
        return None
    with_specials = list(hf.encode("a", add_special_tokens=True))
    plain = list(hf.encode("a", add_special_tokens=False))
    return int(bos) if with_specials[:1] == [bos] and plain[:1] != [bos] else None
