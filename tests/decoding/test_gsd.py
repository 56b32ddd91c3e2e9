"""GSD: merging saves draft work without losing proposals, graphs unroll correctly, output stays exact."""

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
from lmlab.decoding.graph import DraftGraph, flatten, grow
from lmlab.decoding.gsd import Config, ContextMergeIndex, GraphSpeculative
from lmlab.decoding.reference import Greedy
from lmlab.decoding.tree import Config as TreeConfig
from lmlab.decoding.tree import TreeSpeculative


def draft_graph(table: torch.Tensor, m: int | None, seq=(0, 1), depth=4, k=3, budget=1000, gamma=0.0):
    runner = DraftRunner(Bigram(table))
    runner.begin(512, 64)
    merge = ContextMergeIndex(m) if m is not None else None
    shape = Config(top_k=k, sibling_threshold=0.0, leaf_threshold=gamma, budget=budget)
    g = grow(runner, list(seq), depth, shape, merge)
    return g, flatten(g, budget, depth), runner.tokens


def paths(props) -> set[tuple[int, ...]]:
    out, prefix = set(), []
    for tok, p in zip(props.tokens, props.parents):
        prefix.append((prefix[p] if p >= 0 else ()) + (tok,))
        out.add(prefix[-1])
    return out


def test_merge_keys_use_the_token_and_m_preceding_tokens():
    g = DraftGraph([5, 6, 7])  # root = 7
    a = g.add(0, 8, 0.5, False)
    assert ContextMergeIndex(0).key(g, a, 9) == (9, ())
    assert ContextMergeIndex(1).key(g, a, 9) == (9, (8,))
    assert ContextMergeIndex(3).key(g, a, 9) == (9, (6, 7, 8))  # reaches back into the committed tokens
    index = ContextMergeIndex(1)
    index.insert((9, (8,)), a)
    index.insert((9, (8,)), 99)  # the first node with a key stays the merge target
    assert index.lookup((9, (8,))) == a and index.lookup((9, (7,))) is None


@pytest.mark.parametrize("m", [0, 1])
def test_merging_loses_no_proposal_when_the_draft_only_sees_the_last_token(m):
    """For a bigram draft, a merged subtree is exactly what drafting the candidate would have produced."""
    torch.manual_seed(0)
    table = torch.randn(5, 5) * 2
    _, (tree, _, _), tree_work = draft_graph(table, None)
    g, (graph, slots, copies), gsd_work = draft_graph(table, m)
    assert paths(graph) == paths(tree) and len(graph) == len(tree) == 3 + 9 + 27 + 81
    assert gsd_work < 0.6 * tree_work  # far fewer draft token-evaluations
    merges = sum(1 for v, n in enumerate(g.nodes) for w, _ in n.edges if g.nodes[w].parent != v)
    assert merges > 0 and sum(copies) > 0
    assert all(s == -1 for s, c in zip(slots, copies) if c)  # copies never reuse the draft's cached keys


def test_cycles_are_cut_by_the_depth_cap_and_budget():
    table = torch.full((4, 4), -5.0)
    table[2, 2] = 5.0  # token 2 almost surely follows token 2
    g, (props, _, copies), work = draft_graph(table, 0, seq=(1, 2), depth=6, k=1)
    assert len(g) == 1 and g.nodes[0].edges[0][0] == 0  # the root's only edge is a self-loop
    assert props.tokens == [2] * 6 and props.parents == [-1, 0, 1, 2, 3, 4] and all(copies)
    assert work == 2  # one draft call on the prompt, nothing else
    _, (props, _, _), _ = draft_graph(table, 0, seq=(1, 2), depth=6, k=1, budget=4)
    assert len(props) == 4


def test_greedy_output_is_token_identical(target, prompts):
    torch.manual_seed(3)
    cases = [(noisy_copy(target, 0.05), Config(depth=4, budget=12, leaf_threshold=0.0, merge_context=0)),
             (noisy_copy(target, 0.2), Config(depth=3, budget=6, merge_context=1)),
             (layer_skip(target, [2]), Config(depth=5, budget=10, merge_context=2, sibling_threshold=0.05)),
             (Bigram(torch.randn(48, 48).double() * 3), Config(depth=4, budget=16, merge_context=0))]
    merged = 0
    for prompt in prompts:
        ref = Greedy().generate(target, prompt, 24).tokens
        for draft, cfg in cases:
            dec = GraphSpeculative(cfg, draft)
            gen = dec.generate(target, prompt, 24)
            assert gen.tokens == ref, (prompt, cfg)
            merged += gen.stats.merged_accepts
    assert merged > 0  # accepted paths went through merge edges


def test_no_merging_is_token_tree_decoding(target):
    draft = noisy_copy(target, 0.1)
    a = GraphSpeculative(Config(depth=4, budget=8, merge_context=-1), draft).generate(target, [4, 5, 6], 20)
    b = TreeSpeculative(TreeConfig(depth=4, budget=8), draft).generate(target, [4, 5, 6], 20)
    assert a.tokens == b.tokens
    for field in ("draft_tokens", "proposed", "rounds"):
        assert getattr(a.stats, field) == getattr(b.stats, field)


def test_sampling_is_lossless_with_merged_proposals():
    model = tiny(vocab=4, dim=16, layers=1, head_std=1.0)
    s = Sampling(sample=True, temperature=0.9, top_k=3)
    dec = GraphSpeculative(Config(depth=2, budget=6, merge_context=0, sampling=s), tiny(4, 16, 1, seed=7))
    outcomes = list(itertools.product(range(4), repeat=2))
    with torch.no_grad():
        p = {a: probs(model(torch.tensor([[1, 2, a]]))[0], 0.9, 3).double() for a in range(4)}  # (3, V)
    exact = np.array([float(p[a][1, a] * p[a][2, b]) for a, b in outcomes])
    counts = np.zeros(len(outcomes))
    merges = 0
    for seed in range(500):
        gen = dec.generate(model, [1, 2], 3, seed=seed)
        counts[outcomes.index(tuple(gen.tokens[:2]))] += 1  # the first round drafts 2 deep
        merges += gen.stats.merge_edges
    assert merges > 0 and chi2_p(counts, exact / exact.sum()) > 1e-3


def test_bad_config():
    with pytest.raises(ValueError, match="merge_context must be >= -1"):
        Config(merge_context=-2)
    with pytest.raises(ValueError, match="budget must be >= 1, got 0"):
        Config(budget=0)
    with pytest.raises(ValueError, match="depth must be >= 1, got -1"):
        Config(depth=-1)
    with pytest.raises(ValueError, match="leaf_threshold"):
        Config(leaf_threshold=-0.1)
