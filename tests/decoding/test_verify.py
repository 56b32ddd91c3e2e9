"""Verification rules: greedy walk, and exactness of the two sampling rules (statistical tests, fast)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import chisquare

from lmlab.core.sampling import probs
from lmlab.decoding.base import Proposals, Sampling
from lmlab.decoding.verify import children_lists, verify, verify_greedy, verify_point_proposals

V = 5


def chi2_p(counts: np.ndarray, expected_p: np.ndarray) -> float:
    n = counts.sum()
    assert counts[expected_p == 0].sum() == 0, "an impossible outcome was drawn"
    keep = expected_p * n >= 5  # pool the rare outcomes into one bin
    obs, exp = counts[keep], expected_p[keep] * n
    if expected_p[~keep].sum() > 0:
        obs, exp = np.append(obs, counts[~keep].sum()), np.append(exp, expected_p[~keep].sum() * n)
    return float(chisquare(obs, exp * obs.sum() / exp.sum()).pvalue)


def test_children_lists_follow_proposal_order():
    props = Proposals([7, 8, 9, 7], [-1, -1, 0, 1])
    assert children_lists(props) == [[1, 2], [3], [4], [], []]


def test_greedy_walk_takes_the_matching_child_and_the_argmax_after_it():
    # root children: 3, 1; node "1" has child 4; target argmax: root -> 1, node(1) -> 4, node(4) -> 2
    props = Proposals([3, 1, 4], [-1, -1, 1])
    logits = torch.full((4, V), -1.0)
    logits[0, 1] = logits[2, 4] = logits[3, 2] = 1.0
    logits[1, 0] = 1.0
    assert verify_greedy(logits, props) == ([1, 2], 2)
    logits[2, 4], logits[2, 0] = -1.0, 1.0  # target disagrees at depth 2: stop with its own token
    assert verify_greedy(logits, props) == ([1], 0)
    assert verify_greedy(logits[:1], Proposals([], [])) == ([], 1)


@pytest.mark.parametrize("sampling", [Sampling(sample=True), Sampling(sample=True, temperature=0.7, top_k=3),
                                      Sampling(sample=True, top_p=0.8)], ids=["t1", "topk", "topp"])
def test_point_proposals_emit_exact_target_samples(sampling):
    """Root children a, b, a(duplicate); a has children c, d. The first emitted token must follow p_root and
    the token after an accepted a must follow p_a, whatever the proposals are."""
    torch.manual_seed(0)
    logits = torch.randn(6, V) * 1.5
    props = Proposals([2, 0, 2, 1, 4], [-1, -1, -1, 0, 0])  # nodes: a=2, b=0, dup a, c=1, d=4
    gen = torch.Generator().manual_seed(1)
    first = np.zeros(V)
    after_a = np.zeros(V)
    for _ in range(3000):
        path, nxt = verify_point_proposals(logits, props, sampling, gen)
        emitted = [props.tokens[i] for i in path] + [nxt]
        first[emitted[0]] += 1
        if path and path[0] in (0, 2):  # accepted a: the next token is drawn at node a
            after_a[emitted[1]] += 1
    p_root = probs(logits[0], sampling.temperature, sampling.top_k, sampling.top_p).double().numpy()
    p_a = probs(logits[1], sampling.temperature, sampling.top_k, sampling.top_p).double().numpy()
    assert chi2_p(first, p_root) > 1e-3
    assert chi2_p(after_a, p_a) > 1e-3
    assert 0.5 * np.abs(first / first.sum() - p_root).sum() < 0.04
    assert first[p_root == 0].sum() == 0  # filtered tokens are never emitted


def test_sampled_chain_rule_is_exact():
    """Leviathan et al.: x ~ q, accept w.p. min(1, p/q), else a sample of norm(max(p - q, 0))."""
    torch.manual_seed(0)
    s = Sampling(sample=True, temperature=0.9)
    logits = torch.randn(3, V)
    q = torch.softmax(torch.randn(2, V), -1)
    gen = torch.Generator().manual_seed(2)
    first = np.zeros(V)
    accepted = 0
    for _ in range(3000):
        toks = [int(torch.multinomial(q[i], 1, generator=gen)) for i in range(2)]
        path, nxt = verify(logits, Proposals(toks, [-1, 0], q), s, gen)
        first[([toks[0]] if path else [nxt])[0]] += 1
        accepted += bool(path)
    p0 = probs(logits[0], s.temperature).double().numpy()
    assert chi2_p(first, p0) > 1e-3
    expected_accept = np.minimum(p0, q[0].double().numpy()).sum()  # sum_x min(p, q)
    assert abs(accepted / 3000 - expected_accept) < 0.04


def test_sampled_chain_rule_needs_a_chain():
    props = Proposals([1, 2], [-1, -1], torch.full((2, V), 1 / V))
    with pytest.raises(ValueError, match="chain"):
        verify(torch.zeros(3, V), props, Sampling(sample=True))
