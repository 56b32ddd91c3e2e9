"""Chain speculative decoding: greedy-exact, exact accounting, lossless sampling, clear errors."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from conftest import noisy_copy, tiny
from test_verify import chi2_p

from lmlab.core.sampling import probs
from lmlab.decoding.base import Sampling
from lmlab.decoding.chain import ChainSpeculative, Config
from lmlab.decoding.drafts import layer_skip
from lmlab.decoding.reference import Greedy


def test_greedy_output_is_token_identical(target, prompts):
    drafts = [noisy_copy(target, 0.05), noisy_copy(target, 0.5), layer_skip(target, [1])]
    for prompt in prompts:
        ref = Greedy().generate(target, prompt, 24).tokens
        for draft, depth in zip(drafts, (4, 2, 1)):
            gen = ChainSpeculative(Config(depth=depth), draft).generate(target, prompt, 24)
            assert gen.tokens == ref, (prompt, depth)
            s = gen.stats
            assert s.accepted + s.rounds == s.new_tokens  # the last round never drafts past max_new_tokens
            assert s.new_tokens == 24 and s.target_calls == s.rounds + (len(prompt) > 1)
            assert s.proposed <= depth * s.rounds and s.tau == pytest.approx(24 / s.rounds)


def test_perfect_draft_accepts_everything_and_counts_draft_work(target):
    """Draft = target: every round emits depth + 1 tokens; the draft feeds the pending tokens + depth - 1."""
    gen = ChainSpeculative(Config(depth=3), target).generate(target, [1, 2, 3], 12)
    s = gen.stats
    assert gen.tokens == Greedy().generate(target, [1, 2, 3], 12).tokens
    assert (s.rounds, s.accepted, s.proposed, s.tau) == (3, 9, 9, 4.0)
    # round 1 feeds the 3 prompt tokens, later rounds the last draft token + the bonus token; 2 chained each
    assert (s.draft_calls, s.draft_tokens) == (9, 3 + 2 + 2 + 3 * 2)


def test_sampling_is_seeded_and_lossless():
    model = tiny(vocab=4, dim=16, layers=1, head_std=1.0)
    dec = ChainSpeculative(Config(depth=2, sampling=Sampling(sample=True, temperature=0.9)), tiny(4, 16, 1, seed=5))
    assert dec.generate(model, [1, 2], 8, seed=4).tokens == dec.generate(model, [1, 2], 8, seed=4).tokens
    outcomes = list(itertools.product(range(4), repeat=2))
    with torch.no_grad():
        p = {a: probs(model(torch.tensor([[1, 2, a]]))[0], 0.9).double() for a in range(4)}  # (3, V) each
        exact = np.array([float(p[a][1, a] * p[a][2, b]) for a, b in outcomes])
    counts = np.zeros(len(outcomes))
    for seed in range(500):
        counts[outcomes.index(tuple(dec.generate(model, [1, 2], 2, seed=seed).tokens))] += 1
    assert chi2_p(counts, exact / exact.sum()) > 1e-3


def test_bad_input(target):
    with pytest.raises(ValueError, match="depth must be >= 1, got 0"):
        Config(depth=0)
    with pytest.raises(ValueError, match="needs a draft"):
        ChainSpeculative(Config())
    with pytest.raises(ValueError, match="draft vocabulary size 50 != target vocabulary size 48"):
        ChainSpeculative(Config(), tiny(vocab=50)).generate(target, [1], 4)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        Config(sampling=Sampling(sample=True, temperature=0.0))
    short = tiny(vocab=48, dim=16, layers=1)
    short.cfg.max_seq_len = 8
    with pytest.raises(ValueError, match="draft's context of 8"):
        ChainSpeculative(Config(), short).generate(target, [1, 2, 3], 10)
