"""Token-tree speculative decoding: greedy-exact, tree shape rules (top-k, sibling pruning, budget, depth)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from conftest import Bigram, noisy_copy, tiny
from test_verify import chi2_p

from lmlab.core.sampling import probs
from lmlab.decoding.base import Sampling
from lmlab.decoding.drafts import DraftRunner, layer_skip
from lmlab.decoding.graph import flatten, grow
from lmlab.decoding.reference import Greedy
from lmlab.decoding.tree import Config, TreeSpeculative


def test_greedy_output_is_token_identical(target, prompts):
    cases = [(noisy_copy(target, 0.05), Config(depth=4, budget=16, leaf_threshold=0.0)),
             (noisy_copy(target, 0.3), Config(depth=3, budget=1)),
             (layer_skip(target, [1]), Config(depth=5, budget=6, top_k=2, sibling_threshold=0.0))]
    for prompt in prompts:
        ref = Greedy().generate(target, prompt, 24).tokens
        for draft, cfg in cases:
            gen = TreeSpeculative(cfg, draft).generate(target, prompt, 24)
            assert gen.tokens == ref, (prompt, cfg)
            s = gen.stats
            assert s.accepted + s.rounds == 24 and s.proposed <= cfg.budget * s.rounds
            assert s.accepted <= cfg.depth * s.rounds


def test_sampling_is_lossless_end_to_end():
    """Two sampled tokens from tree SD (top-k children, residual renormalisation) follow the target's
    temperature / top-k distribution: chi-square against the exact probabilities of all 16 outcomes."""
    model = tiny(vocab=4, dim=16, layers=1, head_std=1.0)
    s = Sampling(sample=True, temperature=0.9, top_k=3)
    dec = TreeSpeculative(Config(depth=2, budget=6, top_k=2, sibling_threshold=0.0, sampling=s),
                          tiny(4, 16, 1, seed=7))
    outcomes = list(itertools.product(range(4), repeat=2))
    with torch.no_grad():
        p = {a: probs(model(torch.tensor([[1, 2, a]]))[0], 0.9, 3).double() for a in range(4)}  # (3, V)
    exact = np.array([float(p[a][1, a] * p[a][2, b]) for a, b in outcomes])
    counts = np.zeros(len(outcomes))
    accepted = 0
    for seed in range(500):
        gen = dec.generate(model, [1, 2], 3, seed=seed)
        counts[outcomes.index(tuple(gen.tokens[:2]))] += 1
        accepted += gen.stats.accepted
    assert accepted > 0 and chi2_p(counts, exact / exact.sum()) > 1e-3
    assert counts[exact == 0].sum() == 0  # nothing outside the target's top-k is ever emitted


def shape_of(table: torch.Tensor, **kw):
    runner = DraftRunner(Bigram(table))
    runner.begin(64, 64)
    shape = Config(**(dict(top_k=3, sibling_threshold=0.0, leaf_threshold=0.0, budget=100) | kw))
    g = grow(runner, [0, 1], 3, shape)
    props, slots, copies = flatten(g, shape.budget, 3)
    return g, props, runner


def test_tree_rules_top_k_pruning_leaves_and_budget():
    torch.manual_seed(0)
    table = torch.randn(6, 6) * 2
    g, props, runner = shape_of(table)
    assert len(props) == 3 + 9 + 27 and not any(g.nodes[i].edges for i in range(13, 40))  # full 3-ary tree
    assert runner.tokens == 2 + 3 + 9  # pending prompt, then two tree steps (the deepest level is not fed)
    for node in g.nodes:  # children are the draft's top-k of the node's token, best first
        top = torch.softmax(table[node.token], -1).topk(3).indices.tolist()
        assert [g.nodes[w].token for w, _ in node.edges] == (top if node.depth < 3 else [])
    g, props, _ = shape_of(table, sibling_threshold=0.5)  # sibling pruning: q >= 0.5 q_max
    for node in g.nodes:
        qs = [q for _, q in node.edges]
        assert all(q >= 0.5 * qs[0] for q in qs)
    _, props, _ = shape_of(table, budget=5)  # node cap: the 5 likeliest, parents before children
    assert len(props) == 5 and all(p < i for i, p in enumerate(props.parents))
    g, _, _ = shape_of(table, leaf_threshold=1.0)  # every candidate is a low-confidence leaf: one step only
    assert max(n.depth for n in g.nodes) == 1
    g, props, runner = shape_of(table, width=2)  # a beam: the 2 likeliest candidates of each step
    assert [sum(n.depth == d for n in g.nodes) for d in (1, 2, 3)] == [2, 2, 2] and len(props) == 6
    assert runner.tokens == 2 + 2 + 2


def test_bad_config():
    bad = [(dict(depth=0), "depth must be >= 1, got 0"), (dict(top_k=0), "top_k"),
           (dict(budget=-2), "budget must be >= 1, got -2"), (dict(sibling_threshold=1.5), "sibling"),
           (dict(width=-1), "width must be >= 0")]
    for kw, msg in bad:
        with pytest.raises(ValueError, match=msg):
            Config(**kw)
