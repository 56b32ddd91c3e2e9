"""Implicit PRM: step rewards telescope to the outcome reward, token rewards == a per-token loop, identical
models give zero, aggregation / first-error / voting rules on hand-made values, bad input named."""

import copy
import dataclasses

import pytest
import torch
import torch.nn.functional as F

from lmlab import adapters
from lmlab.adapters.layers import lora
from lmlab.core.transformer import Transformer
from lmlab.objectives.implicit_prm import (
    Config,
    ImplicitPRM,
    aggregate,
    as_scorer,
    best_threshold,
    first_error_accuracy,
    processbench_f1,
    step_ends_from_separator,
)
from lmlab.objectives.preference import naive_sequence_logprob, token_logprobs
from lmlab.objectives.preference import response_batch as batch

ROWS = [([1, 2, 3], [4, 5, 6, 7, 8]), ([7], [8, 9, 10, 11, 12, 13]), ([5, 5, 5, 5], [6, 2])]


def model(cfg, seed: int) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(cfg).double().eval()


@pytest.fixture
def pair(tiny_cfg):
    return model(tiny_cfg, 0), model(tiny_cfg, 1)


def outcome(policy, ref, beta):
    return [beta * (naive_sequence_logprob(policy, p, r) - naive_sequence_logprob(ref, p, r)) for p, r in ROWS]


SPLITS = {  # step ends in ids coordinates, one list per row of ROWS
    "one step": [[7], [6], [5]],
    "every token": [[3, 4, 5, 6, 7], [1, 2, 3, 4, 5, 6], [4, 5]],
    "uneven": [[4, 7], [2, 3, 6], [5]],
}


@pytest.mark.parametrize("split", list(SPLITS))
def test_step_rewards_sum_to_the_outcome_reward(pair, split):
    prm = ImplicitPRM(*pair, Config(beta=0.05))
    ids, mask = batch(ROWS)
    with torch.no_grad():
        rewards = prm.step_rewards(ids, mask, SPLITS[split])
        want = outcome(*pair, 0.05)
    assert [len(r) for r in rewards] == [len(e) for e in SPLITS[split]]
    for r, w in zip(rewards, want):
        assert abs(float(r.sum()) - w) < 1e-6 and abs(w) > 1e-3  # a real, non-zero outcome reward
    # the ORM view and the last accumulative value are that same outcome reward
    for kind, how in (("single", "sum"), ("accumulative", "last")):
        got = ImplicitPRM(*pair, Config(beta=0.05, reward=kind, aggregation=how)).score(ids, mask, SPLITS[split])
        assert got == pytest.approx(want, abs=1e-6)


def test_token_rewards_equal_a_naive_per_token_loop(pair):
    policy, ref = pair
    prm = ImplicitPRM(policy, ref, Config(beta=0.3))
    ids, mask = batch(ROWS)
    with torch.no_grad():
        got = prm.token_rewards(ids, mask)
        want = torch.zeros_like(got)
        for b, (p, r) in enumerate(ROWS):
            for i, tok in enumerate(r):
                prefix = torch.tensor([p + r[:i]])
                lp = F.log_softmax(policy(prefix)[0, -1].float(), -1)[tok]
                lr = F.log_softmax(ref(prefix)[0, -1].float(), -1)[tok]
                want[b, len(p) + i - 1] = 0.3 * (lp - lr)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert (got[~mask[:, 1:]] == 0).all() and (got[mask[:, 1:]] != 0).all()


def test_identical_policy_and_reference_give_zero_rewards(tiny_cfg):
    policy = model(tiny_cfg, 3)
    prm = ImplicitPRM(policy, copy.deepcopy(policy))
    ids, mask = batch(ROWS)
    with torch.no_grad():
        assert (prm.token_rewards(ids, mask) == 0).all()
    assert all((r == 0).all() for r in prm.step_rewards(ids, mask, SPLITS["uneven"]))


def test_an_adapted_model_and_its_base_are_a_pair(tiny_cfg):
    base = model(tiny_cfg, 0)
    tuned = adapters.apply(copy.deepcopy(base), lora(rank=4))
    ids, mask = batch(ROWS)
    with torch.no_grad():
        assert (ImplicitPRM(tuned, base).token_rewards(ids, mask) == 0).all()  # B = 0: the adapter is the base
        for _, layer in tuned.adapter_layers():
            for mix in layer.adapters.values():
                mix.B.normal_(0.0, 0.1)
        rewards = ImplicitPRM(tuned, base, Config(beta=1.0)).step_rewards(ids, mask, SPLITS["uneven"])
        want = outcome(tuned, base, 1.0)
    assert [float(r.sum()) for r in rewards] == pytest.approx(want, abs=1e-6)
    assert min(abs(w) for w in want) > 1e-4


def test_cached_reference_logprobs_and_the_no_reference_variant(pair):
    policy, ref = pair
    ids, mask = batch(ROWS)
    cache = ImplicitPRM(policy, ref).reference_logprobs(ids, mask)
    with torch.no_grad():
        fresh = ImplicitPRM(policy, ref).token_rewards(ids, mask)
        cached = ImplicitPRM(policy, None).token_rewards(ids, mask, ref_logprobs=cache)  # no reference model run
        no_ref = ImplicitPRM(policy, None, Config(use_reference=False, beta=0.5)).token_rewards(ids, mask)
        torch.testing.assert_close(cached, fresh, rtol=0, atol=0)
        junk = cache + 7.0 * (~mask[:, 1:])  # a cache with values off the response: they are ignored
        torch.testing.assert_close(ImplicitPRM(policy, None).token_rewards(ids, mask, ref_logprobs=junk), fresh)
        torch.testing.assert_close(no_ref, 0.5 * token_logprobs(policy, ids, mask).float())
    with pytest.raises(ValueError, match="no reference model"):
        ImplicitPRM(policy, None).token_rewards(ids, mask)
    with pytest.raises(ValueError, match=r"ref_logprobs \(3, 4\) must be"):
        ImplicitPRM(policy, None).token_rewards(ids, mask, ref_logprobs=cache[:, :4])


def test_score_aggregates_the_chosen_step_values(pair):
    ids, mask = batch(ROWS)
    ends = SPLITS["uneven"]
    qs, rs = ImplicitPRM(*pair).step_values(ids, mask, ends)
    for kind, values in (("single", rs), ("accumulative", qs)):
        for how in ("min", "sum", "last", "mean"):
            got = ImplicitPRM(*pair, Config(reward=kind, aggregation=how)).score(ids, mask, ends)
            assert got == pytest.approx([aggregate(v, how) for v in values], abs=1e-9)
    for q, r in zip(qs, rs):  # q is the running sum of r
        torch.testing.assert_close(q, r.cumsum(0))


def test_aggregation_rules_on_hand_made_values():
    v = torch.tensor([0.3, -0.2, 0.5, 0.1])
    assert aggregate(v, "min") == pytest.approx(-0.2)
    assert aggregate(v, "sum") == pytest.approx(0.7)
    assert aggregate(v, "last") == pytest.approx(0.1)
    assert aggregate(v, "mean") == pytest.approx(0.175)
    with pytest.raises(ValueError, match="'max' is not one of"):
        aggregate(v, "max")
    with pytest.raises(ValueError, match="non-empty 1-D"):
        aggregate(torch.tensor([]), "min")


def test_step_ends_from_separator():
    SEP = 9  # e.g. ';' in "x0+d1=r1;r1+d2=r2"
    ids, mask = batch([([1, 2], [3, 9, 4, 9, 5]), ([1], [9, 3, 4, 9]), ([2, 9], [3, 4])])
    assert step_ends_from_separator(ids, mask, [SEP]) == [[3, 5, 6], [1, 4], [3]]  # the prompt's 9 is no boundary
    assert step_ends_from_separator(ids, mask, []) == [[6], [4], [3]]


def test_first_error_accuracy_on_hand_made_data():
    rewards = [[0.1, -0.5, 0.2], [0.3, 0.2, -0.1], [-0.4, 0.0, 0.1, 0.2], [0.5, 0.6]]
    truth = [1, 0, 0, None]  # hit, miss (argmin 2), hit, a correct response (skipped)
    got = first_error_accuracy([torch.tensor(r) for r in rewards], truth)
    assert got.n == 3 and got.accuracy == pytest.approx(2 / 3)
    assert got.chance == pytest.approx((1 / 3 + 1 / 3 + 1 / 4) / 3)
    with pytest.raises(ValueError, match="first error 3 is not a step index of its 3"):
        first_error_accuracy(rewards[:1], [3])
    with pytest.raises(ValueError, match="no wrong responses"):
        first_error_accuracy(rewards[3:], [None])
    with pytest.raises(ValueError, match="2 responses but 1"):
        first_error_accuracy(rewards[:2], [1])


def test_processbench_f1_and_threshold_search():
    scores = [[0.9, 0.2, 0.8], [0.7, 0.6, 0.1], [0.9, 0.8], [0.6, 0.7]]
    truth = [1, 2, None, None]
    assert processbench_f1(scores, truth, 0.5) == (1.0, 1.0, 1.0)
    wrong, right, f1 = processbench_f1(scores, truth, 0.65)  # now step 1 of row 1 and step 0 of row 3 fall below
    assert (wrong, right) == (0.5, 0.5) and f1 == pytest.approx(0.5)
    t, best = best_threshold(scores, truth)
    assert best == 1.0 and 0.2 < t <= 0.6


def test_as_scorer_equals_the_batched_score(pair):
    prm = ImplicitPRM(*pair)
    prompt, cands = [1, 2, 3], [[4, 9, 6, 7], [8, 9], [5]]
    got = as_scorer(prm, sep_ids=[9])(prompt, cands)
    ids, mask = batch([(prompt, c) for c in cands])
    assert got == pytest.approx(prm.score(ids, mask, [[4, 6], [4], [3]]), abs=1e-12)
    with pytest.raises(ValueError, match="non-empty candidate"):
        as_scorer(prm)(prompt, [[4], []])


def test_bad_input_is_named(pair, tiny_cfg):
    policy, _ = pair
    other = Transformer(dataclasses.replace(tiny_cfg, vocab_size=50))
    with pytest.raises(ValueError, match="policy vocab_size 61 != reference vocab_size 50"):
        ImplicitPRM(policy, other)
    with pytest.raises(TypeError, match="lacks"):
        ImplicitPRM(object(), None)
    prm = ImplicitPRM(*pair)
    ids, mask = batch(ROWS)
    with pytest.raises(ValueError, match=r"row 0: step end 2 is outside the response \(token indices 3..7\)"):
        prm.step_rewards(ids, mask, [[2, 7], [6], [5]])
    with pytest.raises(ValueError, match="row 2: step end 6 is outside"):
        prm.step_rewards(ids, mask, [[7], [6], [6]])  # padding
    with pytest.raises(ValueError, match=r"not strictly increasing"):
        prm.step_rewards(ids, mask, [[5, 5, 7], [6], [5]])
    with pytest.raises(ValueError, match="row 1 has no steps"):
        prm.step_rewards(ids, mask, [[7], [], [5]])
    with pytest.raises(ValueError, match="step_ends has 2 rows, the batch has 3"):
        prm.step_rewards(ids, mask, [[7], [6]])
    for bad in ({"beta": 0.0}, {"aggregation": "max"}, {"reward": "token"}):
        with pytest.raises(ValueError, match="beta must be > 0|is not one of"):
            Config(**bad)
