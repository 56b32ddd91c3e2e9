"""Data for compressors and their evaluation: calibration windows from a token stream, windowed perplexity.

``windows`` cuts a 1-D token stream into ``n`` windows of ``length`` tokens, either at seeded random offsets
(calibration, FlatQuant/GPTQ style) or evenly spaced over the whole stream (evaluation: every part of a
validation split is represented). A stream too short for the request is an error, never a silent shrink.
``perplexity`` is exp(mean next-token NLL) over all predicted tokens of the windows and ``score_windows`` the
full result (``core.scoring``: the one NLL implementation, with the tokenizer's BOS convention).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from lmlab.core.scoring import NLL, score


def windows(tokens: np.ndarray | torch.Tensor, n: int, length: int, seed: int | None = None) -> torch.Tensor:
    """(n, length) long windows of ``tokens``: random offsets with a ``seed``, else evenly spaced."""
    tokens = torch.as_tensor(np.asarray(tokens, dtype=np.int64))
    if tokens.ndim != 1:
        raise ValueError(f"expected a 1-D token stream, got shape {tuple(tokens.shape)}")
    if n < 1 or length < 2:
        raise ValueError(f"need n >= 1 windows of length >= 2, got n={n}, length={length}")
    if len(tokens) < length or (seed is None and len(tokens) < n * length):
        raise ValueError(f"token stream of {len(tokens)} tokens is too short for {n} windows of {length} "
                         "tokens; "
                         "pass more text or ask for fewer / shorter windows")
    if seed is None:
        starts = torch.linspace(0, len(tokens) - length, n).long()
    else:
        gen = torch.Generator().manual_seed(seed)
        starts = torch.randint(0, len(tokens) - length + 1, (n,), generator=gen)
    return torch.stack([tokens[s:s + length] for s in starts.tolist()])


@torch.no_grad()
def perplexity(model: nn.Module, ids: torch.Tensor, batch_size: int = 4, bos_id: int | None = None) -> float:
    """exp(mean NLL) of next-token prediction over windows ids (N, T), in eval mode: T - 1 predictions per
    window, or T with ``bos_id`` put in front (``core.scoring.bos_convention(tokenizer)`` says whether)."""
    return score_windows(model, ids, batch_size, bos_id).perplexity


@torch.no_grad()
def score_windows(model: nn.Module, ids: torch.Tensor, batch_size: int = 4, bos_id: int | None = None) -> NLL:
    """``core.scoring.score`` in eval mode: total / mean NLL, tokens, perplexity and whether BOS was used."""
    was_training = model.training
    model.eval()
    try:
        return score(model, ids, bos_id=bos_id, batch_size=batch_size)
    finally:
        model.train(was_training)
