"""Length extrapolation and needle-depth evaluations (DAPE v2's perplexity-vs-length, MoICE's accuracy-vs-depth).

``length_extrapolation(model, ids, train_len)`` scores one held-out token stream at T, 2T, 4T, 8T (T = the training
length): the stream is cut into non-overlapping windows of each length and scored by :func:`core.scoring.score`,
so every length reads the same stream and each token is a target at most once (the first token of a window is its
context only, so at length T' a window scores T' - 1 tokens and the scored sets differ by those first tokens). The
stream used is the longest prefix that is a whole number of windows at every length. A model whose
``max_seq_len`` is below a requested length is an error (it cannot place those positions), never a silent
truncation.

``depth_accuracy(model, codec, task, depths, n)`` is greedy (or masked, for bidirectional models) exact-match
accuracy of a task-trained model on the retrieval probe at each needle depth, through the task recipe's decoding
and the task's exact verifier.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from lmlab.core.scoring import score
from lmlab.decoding.masked import Config as DecodeConfig
from lmlab.recipes.tasks import accuracy
from lmlab.tasks.retrieval import RetrievalTask, depth_sweep


def _check_factors(factors: Sequence[int]) -> list[int]:
    out = list(factors)
    if not out or any(isinstance(f, bool) or not isinstance(f, int) or f < 1 for f in out):
        raise ValueError(f"factors must be a non-empty sequence of ints >= 1, got {factors!r}")
    return out


def _stream(token_ids: Any) -> torch.Tensor:
    """Held-out ids as a 1-D integer tensor (N,); ValueError naming what was given otherwise."""
    ids = torch.as_tensor(token_ids)
    if ids.ndim != 1 or ids.is_floating_point() or ids.is_complex():
        raise ValueError(f"token_ids must be a 1-D sequence of integer token ids, got shape {tuple(ids.shape)} "
                         f"{ids.dtype}")
    return ids.long()


@torch.no_grad()
def length_extrapolation(model: Any, token_ids: Any, train_len: int, factors: Sequence[int] = (1, 2, 4, 8),
                         batch_size: int = 8, bos_id: int | None = None) -> dict[int, dict[str, float]]:
    """{factor: {length, windows, tokens, mean_nll, perplexity}} at lengths ``factor * train_len``.

    ``token_ids``: held-out ids (N,), at least one window of the longest length. ``batch_size``: windows per
    forward pass. ``bos_id``: put a BOS in front of every window (``core.scoring.bos_convention``); it then
    counts against ``max_seq_len`` and every window token is scored. The model is scored in eval mode and
    left in the mode it came in.
    """
    if isinstance(train_len, bool) or not isinstance(train_len, int) or train_len < 2:
        raise ValueError(f"train_len must be an int >= 2 (a window must predict a token), got {train_len!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    factors = _check_factors(factors)
    lengths = {f: f * train_len for f in factors}
    limit = int(model.max_seq_len)
    extra = 0 if bos_id is None else 1
    too_long = {f: t for f, t in lengths.items() if t + extra > limit}
    if too_long:
        raise ValueError(f"lengths {sorted(too_long.values())} (factors {sorted(too_long)} x train_len {train_len}"
                         f"{' + BOS' if extra else ''}) exceed the model's max_seq_len {limit}")
    ids = _stream(token_ids)
    step = math.lcm(*lengths.values())  # a whole number of windows at every length
    usable = ids.numel() // step * step
    if usable == 0:
        raise ValueError(f"token_ids hold {ids.numel()} tokens; lengths {sorted(lengths.values())} need at least "
                         f"{step} (their least common multiple)")
    ids = ids[:usable].to(model.device)
    was = model.training
    model.eval()
    try:
        out = {}
        for f, t in lengths.items():
            windows = ids.view(-1, t)  # (usable / t, t) non-overlapping windows
            nll = score(model, windows, bos_id=bos_id, batch_size=batch_size)
            out[f] = {"length": t, "windows": windows.shape[0], "tokens": nll.tokens, "mean_nll": nll.mean_nll,
                      "perplexity": nll.perplexity}
    finally:
        model.train(was)
    return out


def depth_accuracy(model: Any, codec: Any, task: RetrievalTask, depths: Sequence[float], n: int, seed: int = 0,
                   decode: DecodeConfig | None = None) -> dict[float, float]:
    """{depth: exact-match accuracy over ``n`` retrieval examples with the needle at that depth fraction}.

    ``codec``: the :class:`~lmlab.tasks.encoding.TaskCodec` the model was trained with (its tokenizer and layout).
    Every depth uses the same contexts (``depth_sweep`` with one seed), so only the needle's position varies.
    """
    if not isinstance(task, RetrievalTask):
        raise ValueError(f"depth_accuracy needs a RetrievalTask, got {type(task).__name__}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n (examples per depth) must be an int >= 1, got {n!r}")
    sets = depth_sweep(task, depths, n, seed)
    return {d: accuracy(model, task, codec, examples, decode) for d, examples in sets.items()}
