"""Best-of-N and weighted vote: candidates are the sampling decoder's draws, the pick follows the scores."""

import math

import pytest
from conftest import noisy_copy

from lmlab.decoding.reference import Config as SampleConfig
from lmlab.decoding.reference import Sample
from lmlab.decoding.rerank import BestOfN, Config, WeightedVote
from lmlab.objectives.implicit_prm import ImplicitPRM, as_scorer, weighted_vote

PROMPT = [3, 1, 4, 1, 5]


def samples(model, n, seed, eos_id=None, temperature=1.0):
    dec = Sample(SampleConfig(temperature=temperature))
    return [dec.generate(model, PROMPT, 10, seed=seed + i, eos_id=eos_id).tokens for i in range(n)]


def test_candidates_are_the_sampling_decoders_draws(target):
    gen = BestOfN(lambda p, c: [0.0] * len(c), Config(n=5, temperature=0.8)).generate(target, PROMPT, 10, seed=11)
    want = samples(target, 5, 11, temperature=0.8)
    assert gen.stats.candidates == want and gen.stats.n == 5
    assert len({tuple(c) for c in want}) > 1  # the seeds differ, so do the draws
    assert gen.stats.new_tokens == 50 and gen.stats.target_calls == 5 * 10
    with_eos = BestOfN(lambda p, c: [0.0] * len(c), Config(n=5)).generate(target, PROMPT, 10, seed=2, eos_id=7)
    assert with_eos.stats.candidates == samples(target, 5, 2, eos_id=7)


def test_n_1_is_the_sampling_decoder(target):
    for seed in (0, 1, 2):
        gen = BestOfN(lambda p, c: [1.0], Config(n=1)).generate(target, PROMPT, 10, seed=seed)
        assert gen.tokens == Sample().generate(target, PROMPT, 10, seed=seed).tokens
    assert BestOfN(lambda p, c: [1.0], Config(n=1, seed=4)).generate(target, PROMPT, 10).tokens == \
        Sample().generate(target, PROMPT, 10, seed=4).tokens  # the config's seed when generate gets none


def test_best_of_n_returns_the_top_scored_candidate(target):
    ranking = [0.1, 0.9, 0.3, 0.9, -2.0]  # ties: the earliest
    seen = []

    def scorer(prompt_ids, candidates):
        seen.append((prompt_ids, candidates))
        return ranking

    gen = BestOfN(scorer, Config(n=5)).generate(target, PROMPT, 10, seed=3)
    assert gen.stats.chosen == 1 and gen.tokens == samples(target, 5, 3)[1]
    assert seen == [(PROMPT, samples(target, 5, 3))] and gen.stats.scores == ranking
    by_sum = BestOfN(lambda p, c: [float(sum(x)) for x in c], Config(n=6)).generate(target, PROMPT, 10, seed=9)
    assert sum(by_sum.tokens) == max(sum(c) for c in samples(target, 6, 9))


def test_weighted_vote_picks_the_larger_summed_sigmoid(target):
    answer_of = lambda toks: toks[-1] % 2  # noqa: E731
    answers = [answer_of(c) for c in samples(target, 8, 5)]
    majority = max((0, 1), key=answers.count)
    assert 0 < answers.count(1 - majority) < answers.count(majority)  # two answers, one in the minority

    def favour_minority(prompt_ids, candidates):
        return [4.0 if answer_of(c) != majority else -4.0 for c in candidates]

    gen = WeightedVote(favour_minority, answer_of, Config(n=8)).generate(target, PROMPT, 10, seed=5)
    assert answer_of(gen.tokens) == 1 - majority and gen.tokens in samples(target, 8, 5)
    cands = samples(target, 8, 5)  # the decoder's vote agrees with the objectives family's helper
    assert answer_of(gen.tokens) == weighted_vote(answers, favour_minority(PROMPT, cands))
    sig = lambda s: 1 / (1 + math.exp(-s))  # noqa: E731
    assert gen.stats.votes[1 - majority] == pytest.approx(answers.count(1 - majority) * sig(4.0))
    assert gen.stats.votes[majority] == pytest.approx(answers.count(majority) * sig(-4.0))
    flat = WeightedVote(lambda p, c: [0.0] * len(c), answer_of, Config(n=8)).generate(target, PROMPT, 10, seed=5)
    assert answer_of(flat.tokens) == majority  # equal scores: plain majority vote


def test_best_of_n_with_the_implicit_prm(target):
    prm = ImplicitPRM(target, noisy_copy(target, 0.3))
    scorer = as_scorer(prm, sep_ids=[7])
    gen = BestOfN(scorer, Config(n=4)).generate(target, PROMPT, 10, seed=0)
    scores = scorer(PROMPT, samples(target, 4, 0))
    assert gen.stats.scores == pytest.approx(scores) and gen.stats.chosen == scores.index(max(scores))
    assert len(set(scores)) == 4


def test_bad_input_is_named(target):
    with pytest.raises(ValueError, match="n must be >= 1, got 0"):
        Config(n=0)
    with pytest.raises(ValueError, match="returned 1 scores for 3 candidates"):
        BestOfN(lambda p, c: [0.0], Config(n=3)).generate(target, PROMPT, 4, seed=0)
    with pytest.raises(ValueError, match="NaN"):
        BestOfN(lambda p, c: [float("nan")], Config(n=1)).generate(target, PROMPT, 4, seed=0)
    with pytest.raises(ValueError, match="transform 'softmax'"):
        WeightedVote(lambda p, c: [0.0], lambda t: 0, transform="softmax")
