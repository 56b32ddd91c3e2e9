"""Plain autoregressive decoding with a KV cache: greedy argmax and sampling (temperature, top-k, top-p).

These are the ground truth every lossless decoder is tested against: speculative greedy output must be
token-identical to ``Greedy``, speculative sampling must follow the distribution ``Sample`` draws from
(``core.sampling.probs`` is the one definition of that distribution). One prefill pass over the prompt,
then one single-token forward pass per new token.

    gen = Greedy().generate(model, prompt_ids, max_new_tokens=64)
    gen = Sample(Config(temperature=0.8, top_p=0.95)).generate(model, prompt_ids, 64, seed=0)
    gen.tokens, gen.stats.tokens_per_second
"""

from __future__ import annotations

import time
from typing import Any

import torch

from lmlab.core.sampling import make_generator, probs, sample

from .base import Generation, Sampling, SamplingParams, Stats
from .loop import check_request, new_cache

Config = SamplingParams  # the distribution ``Sample`` draws from (temperature, top_k, top_p)


@torch.no_grad()
def autoregressive(model: Any, prompt: list[int] | torch.Tensor, max_new_tokens: int, sampling: Sampling,
                   seed: int | None = None, eos_id: int | None = None, constraint: Any = None) -> Generation:
    """Token-by-token decoding of ``model`` (greedy unless ``sampling.sample``).

    ``constraint`` (e.g. ``decoding.constrained.JsonSchema``): ``mask(logits)`` sets the logits of tokens that
    would break the format to -inf before each choice, ``accept(token)`` advances it, and decoding stops once
    ``done``; the distribution is the model's, renormalised over the allowed tokens.
    """
    t0 = time.perf_counter()
    prompt = check_request(model, prompt, max_new_tokens)
    gen = make_generator(seed)
    device = model.device
    cache = new_cache(model, len(prompt) + max_new_tokens)
    stats = Stats(target_calls=1, target_tokens=len(prompt))
    logits = model(torch.tensor([prompt], device=device), cache=cache)[0, -1]  # (V,)
    out: list[int] = []
    while True:
        if constraint is not None:
            logits = constraint.mask(logits)
        if sampling.sample:
            nxt = int(sample(probs(logits, sampling.temperature, sampling.top_k, sampling.top_p), gen))
        else:
            nxt = int(logits.argmax())
        out.append(nxt)
        stats.rounds += 1
        if constraint is not None:
            constraint.accept(nxt)
        if len(out) == max_new_tokens or nxt == eos_id or (constraint is not None and constraint.done):
            break
        logits = model(torch.tensor([[nxt]], device=device), cache=cache)[0, -1]
        stats.target_calls += 1
        stats.target_tokens += 1
    stats.new_tokens = len(out)
    stats.seconds = time.perf_counter() - t0
    return Generation(out, stats)


class Greedy:
    """Plain greedy decoding (argmax at every step). It has no config; ``cfg`` must be None."""

    def __init__(self, cfg: None = None):
        if cfg is not None:
            raise ValueError(f"greedy decoding takes no config, got {cfg!r}")

    def generate(self, model: Any, prompt: list[int] | torch.Tensor, max_new_tokens: int,
                 seed: int | None = None, eos_id: int | None = None) -> Generation:
        return autoregressive(model, prompt, max_new_tokens, Sampling(), seed, eos_id)


class Sample:
    """Plain ancestral sampling from ``core.sampling.probs(logits, temperature, top_k, top_p)``."""

    def __init__(self, cfg: SamplingParams | None = None):
        self.cfg = cfg or SamplingParams()
        self.sampling = Sampling(sample=True, temperature=self.cfg.temperature, top_k=self.cfg.top_k,
                                 top_p=self.cfg.top_p)

    def generate(self, model: Any, prompt: list[int] | torch.Tensor, max_new_tokens: int,
                 seed: int | None = None, eos_id: int | None = None) -> Generation:
        return autoregressive(model, prompt, max_new_tokens, self.sampling, seed, eos_id)


@torch.no_grad()
def greedy_fill(model: Any, ids: torch.Tensor, maskable: torch.Tensor, eos_id: int | None = None,
                stop_at_eos: bool = True) -> tuple[torch.Tensor, int]:
    """Batched greedy decoding: fill the ``maskable`` tail of each row of ``ids`` (B, L) with the model's argmax.

    Rows are grouped by prompt length (the non-maskable head) and each group decodes with one KV cache, one
    prefill and one single-token forward per position, the same steps ``Greedy`` takes for one row. A group
    stops early once every row has emitted ``eos_id`` (when ``stop_at_eos``); positions after a row's eos are
    left as the model wrote them. Returns (tokens (B, L) on the model's device, model calls).
    """
    device = model.device
    ids, maskable = ids.to(device), maskable.to(device)
    out = ids.clone()
    plen = (~maskable).sum(-1)  # (B,) prompt length per row
    calls = 0
    for p in plen.unique().tolist():
        rows = (plen == p).nonzero().squeeze(-1)  # (b,)
        n = ids.shape[1] - p
        cache = model.new_cache(batch=len(rows), max_len=ids.shape[1])
        logits = model(ids[rows, :p], cache=cache)[:, -1]  # (b, V)
        calls += 1
        done = torch.zeros(len(rows), dtype=torch.bool, device=device)
        for i in range(n):
            nxt = logits.argmax(-1)  # (b,)
            out[rows, p + i] = nxt
            if eos_id is not None:
                done |= nxt == eos_id
            if i + 1 == n or (stop_at_eos and bool(done.all())):
                break
            logits = model(nxt[:, None], cache=cache)[:, -1]
            calls += 1
    return out, calls
