"""The one speculative generation loop: propose -> score -> verify -> commit, for any proposer and any model.

A model is a ``core.lm.LM``: ``forward(ids, *, cache, positions, mask) -> logits (B, T, V)`` and
``new_cache(batch, max_len)`` returning a ``core.lm.Cache`` (``length``, ``truncate(n)``, ``gather(index)``): the
lmlab ``Transformer`` (``core.kv_cache.KVCache``) and Hugging Face models wrapped by ``core.hf.HFCausalLM``.

Target cache invariant: at the start of a round it holds every committed token except the last one (the root).
``score`` appends [root] + draft nodes with a tree mask (``core.masks.tree``) and positions = L + depth;
``commit`` keeps the prefix, the root and the accepted nodes (``KVCache.truncate`` when they are contiguous,
``KVCache.gather`` otherwise), so the cache again equals what sequential decoding would have written.
"""

from __future__ import annotations

import inspect
import time
from typing import Any

import torch

from lmlab.core import masks
from lmlab.core.lm import LM, require_lm
from lmlab.core.sampling import make_generator

from .base import Generation, Proposals, Proposer, Sampling, Stats
from .verify import verify


def vocab_size(model: LM) -> int:
    """Output vocabulary of an LM (``core.lm.LM``: a Transformer, an HFCausalLM, a draft view)."""
    return int(require_lm(model, "decoding").vocab_size)


def context_length(model: LM) -> int:
    """Longest sequence the LM accepts."""
    return int(require_lm(model, "decoding").max_seq_len)


def check_request(model: Any, prompt: list[int] | torch.Tensor, max_new_tokens: int) -> list[int]:
    """Validate a generation request; returns the prompt as a list of ints."""
    if isinstance(prompt, torch.Tensor):
        if prompt.ndim == 2 and prompt.shape[0] == 1:
            prompt = prompt[0]
        if prompt.ndim != 1:
            raise ValueError(f"prompt must be 1-D token ids (batch size 1), got shape {tuple(prompt.shape)}")
        prompt = prompt.tolist()
    prompt = [int(t) for t in prompt]
    if not prompt:
        raise ValueError("prompt is empty; give at least one token id")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    V, ctx = vocab_size(model), context_length(model)
    bad = [t for t in prompt if not 0 <= t < V]
    if bad:
        raise ValueError(f"prompt token id {bad[0]} is outside the model's vocabulary [0, {V})")
    if len(prompt) + max_new_tokens > ctx:
        raise ValueError(f"prompt of {len(prompt)} tokens + max_new_tokens {max_new_tokens} exceeds the "
                         f"model's context of {ctx} tokens")
    return prompt


def check_draft(target: Any, draft: Any) -> None:
    """A draft must share the target's vocabulary (token ids are compared, never re-tokenized)."""
    vt, vd = vocab_size(target), vocab_size(draft)
    if vt != vd:
        raise ValueError(f"draft vocabulary size {vd} != target vocabulary size {vt}; the draft must use the "
                         "target's tokenizer")


class DraftDecoder:
    """Base of the draft-model decoders (chain, tree, GSD): a config (``config_class()`` when None) and a draft."""

    config_class: type

    def __init__(self, cfg: Any = None, draft: Any = None):
        if draft is None:
            raise ValueError(f"{type(self).__name__} needs a draft model (a small model or a layer skip)")
        self.cfg, self.draft = cfg or self.config_class(), draft


def check_positive(owner: str, **values: int) -> None:
    for name, v in values.items():
        if v < 1:
            raise ValueError(f"{owner}.{name} must be >= 1, got {v}")


def score(target: Any, cache: Any, root: int, props: Proposals) -> torch.Tensor:
    """Target logits (1 + N, V) at [root] + the N draft nodes; appends their 1 + N entries to ``cache``."""
    L, N = cache.length, len(props)
    device = target.device
    ids = torch.tensor([[root, *props.tokens]], device=device)  # (1, 1+N)
    if N == 0:
        return target(ids, cache=cache)[0]
    parents = [-1] + [p + 1 for p in props.parents]  # the root is node 0, a child of the cached prefix
    depth = [0] * (N + 1)
    for i in range(1, N + 1):
        depth[i] = depth[parents[i]] + 1
    positions = torch.tensor(depth, device=device) + L  # (1+N,)
    mask = masks.tree(parents, prefix_len=L, device=device)  # (1+N, L+1+N)
    return target(ids, cache=cache, positions=positions, mask=mask)[0]


def commit(cache: Any, keep_from: int, slots: list[int]) -> None:
    """Keep cache positions [0, keep_from) followed by ``slots`` (increasing): truncate or compact."""
    if slots == list(range(keep_from, keep_from + len(slots))):
        cache.truncate(keep_from + len(slots))
    else:
        index = torch.cat([torch.arange(keep_from), torch.tensor(slots, dtype=torch.long)])
        cache.gather(index)


def new_cache(model: Any, max_len: int | None, rollback: int = 0, batch: int = 1) -> Any:
    """A cache of ``max_len`` positions. ``rollback``: how many positions one round may write and then undo; a
    model whose ``new_cache`` takes it (sliding-window layers keep that many beyond their window) gets it."""
    if rollback and "rollback" in inspect.signature(model.new_cache).parameters:
        return model.new_cache(batch=batch, max_len=max_len, rollback=rollback)
    return model.new_cache(batch=batch, max_len=max_len)


@torch.no_grad()
def speculative_generate(target: Any, proposer: Proposer, prompt: list[int] | torch.Tensor,
                         max_new_tokens: int, depth: int, budget: int, sampling: Sampling,
                         seed: int | None = None, eos_id: int | None = None) -> Generation:
    """Lossless speculative decoding of ``target`` with draft tokens from ``proposer``.

    ``depth`` bounds the draft tree's depth and ``budget`` its node count (both only size the caches here;
    the proposer enforces them). Greedy output is the target's greedy output; sampled output follows the
    target's sampling distribution exactly (see ``verify``).
    """
    t0 = time.perf_counter()
    prompt = check_request(target, prompt, max_new_tokens)
    stats = Stats()
    gen = make_generator(seed)
    P = len(prompt)
    max_len = P + max_new_tokens + budget + depth + 2
    cache = new_cache(target, max_len, rollback=budget + depth + 2)
    device = target.device
    if P > 1:  # the last prompt token is the first round's root
        target(torch.tensor([prompt[:-1]], device=device), cache=cache)
        stats.target_calls += 1
        stats.target_tokens += P - 1
    proposer.begin(prompt, P + max_new_tokens, max_len)
    seq, out = list(prompt), []
    while len(out) < max_new_tokens:
        remaining = max_new_tokens - len(out)
        props = proposer.propose(seq, min(depth, remaining - 1), gen)
        L = cache.length
        logits = score(target, cache, seq[-1], props)  # (1+N, V)
        path, nxt = verify(logits, props, sampling, gen)
        commit(cache, L + 1, [L + 1 + i for i in path])
        proposer.accept(path)
        new = [props.tokens[i] for i in path] + [nxt]
        seq += new
        out += new
        stats.rounds += 1
        stats.target_calls += 1
        stats.target_tokens += 1 + len(props)
        stats.proposed += len(props)
        stats.accepted += len(path)
        if eos_id is not None and eos_id in new:
            break
    if eos_id is not None and eos_id in out:
        out = out[: out.index(eos_id) + 1]
    out = out[:max_new_tokens]
    stats.draft_calls, stats.draft_tokens = proposer.draft_calls, proposer.draft_tokens
    stats.new_tokens = len(out)
    stats.seconds = time.perf_counter() - t0
    return Generation(out, stats)
