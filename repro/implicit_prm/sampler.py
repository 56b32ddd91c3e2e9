"""Batched temperature sampling of the answer region with the KV cache (``decoding.reference.greedy_fill``'s loop
with a draw from ``core.sampling.probs`` in place of the argmax).

Rows are grouped by prompt length; each group runs one prefill and one single-token forward per answer position
with one KV cache, and draws every token from ``probs(logits, temperature)`` with one seeded generator, so a
call is reproducible. Positions after a row's ``<eos>`` are left as drawn (``TaskCodec.answer`` stops at the
first ``<eos>``).
"""

from __future__ import annotations

from typing import Any

import torch

from lmlab.core.sampling import probs, sample


@torch.no_grad()
def sample_fill(model: Any, ids: torch.Tensor, maskable: torch.Tensor, eos_id: int, temperature: float = 1.0,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Fill the ``maskable`` tail of each row of ``ids`` (B, L) with tokens drawn at ``temperature``: (B, L)."""
    if ids.shape != maskable.shape or ids.ndim != 2:
        raise ValueError(f"ids {tuple(ids.shape)} and maskable {tuple(maskable.shape)} must both be (B, L)")
    was = model.training
    model.eval()
    out = ids.clone()
    plen = (~maskable).sum(-1)  # (B,) prompt length per row
    for p in plen.unique().tolist():
        rows = (plen == p).nonzero().squeeze(-1)  # (b,)
        n = ids.shape[1] - p
        cache = model.new_cache(batch=len(rows), max_len=ids.shape[1])
        logits = model(ids[rows, :p], cache=cache)[:, -1]  # (b, V)
        done = torch.zeros(len(rows), dtype=torch.bool)
        for i in range(n):
            nxt = sample(probs(logits, temperature), generator)  # (b,)
            out[rows, p + i] = nxt
            done |= nxt == eos_id
            if i + 1 == n or bool(done.all()):
                break
            logits = model(nxt[:, None], cache=cache)[:, -1]
    model.train(was)
    return out
