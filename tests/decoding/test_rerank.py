"""Best-of-N and weighted vote: candidates are the sampling decoder's draws, the pick follows the scores."""

import math

import pytest
import torch
from conftest import noisy_copy, tiny
from scipy.stats import chisquare

from lmlab.decoding import build, rerank_decoders, token_decoders
from lmlab.decoding.reference import Config as SampleConfig
from lmlab.decoding.reference import Sample
from lmlab.decoding.rerank import (
    BestOfN,
    Config,
    VoteConfig,
    WeightedVote,
    best_index,
    majority_vote,
    weighted_vote,
)
from lmlab.objectives.implicit_prm import EVAL_COEF, ImplicitPRM, as_scorer

PROMPT = [3, 1, 4, 1, 5]


def samples(model, n, seed, eos_id=None, temperature=1.0):
    dec = Sample(SampleConfig(temperature=temperature))
    return [dec.generate(model, PROMPT, 10, seed=seed + i, eos_id=eos_id).tokens for i in range(n)]


def test_candidates_are_the_sampling_decoders_draws(target):
    flat = lambda p, c: [0.0] * len(c)  # noqa: E731
    gen = BestOfN(Config(n=5, temperature=0.8), scorer=flat).generate(target, PROMPT, 10, seed=11)
    want = samples(target, 5, 11, temperature=0.8)
    assert gen.stats.candidates == want and gen.stats.n == 5
    assert len({tuple(c) for c in want}) > 1  # the seeds differ, so do the draws
    assert gen.stats.new_tokens == 50 and gen.stats.target_calls == 5 * 10
    with_eos = BestOfN(Config(n=5), scorer=lambda p, c: [0.0] * len(c)).generate(target, PROMPT, 10, seed=2, eos_id=7)
    assert with_eos.stats.candidates == samples(target, 5, 2, eos_id=7)


def test_n_1_is_the_sampling_decoder(target):
    for seed in (0, 1, 2):
        gen = BestOfN(Config(n=1), scorer=lambda p, c: [1.0]).generate(target, PROMPT, 10, seed=seed)
        assert gen.tokens == Sample().generate(target, PROMPT, 10, seed=seed).tokens
    assert BestOfN(Config(n=1, seed=4), scorer=lambda p, c: [1.0]).generate(target, PROMPT, 10).tokens == \
        Sample().generate(target, PROMPT, 10, seed=4).tokens  # the config's seed when generate gets none


def test_best_of_n_returns_the_top_scored_candidate(target):
    ranking = [0.1, 0.9, 0.3, 0.9, -2.0]  # ties: the earliest
    seen = []

    def scorer(prompt_ids, candidates):
        seen.append((prompt_ids, candidates))
        return ranking

    gen = BestOfN(Config(n=5), scorer=scorer).generate(target, PROMPT, 10, seed=3)
    assert gen.stats.chosen == 1 and gen.tokens == samples(target, 5, 3)[1]
    assert seen == [(PROMPT, samples(target, 5, 3))] and gen.stats.scores == ranking
    by_sum = BestOfN(Config(n=6), scorer=lambda p, c: [float(sum(x)) for x in c]).generate(target, PROMPT, 10, seed=9)
    assert sum(by_sum.tokens) == max(sum(c) for c in samples(target, 6, 9))


def test_weighted_vote_picks_the_larger_summed_sigmoid(target):
    answer_of = lambda toks: toks[-1] % 2  # noqa: E731
    answers = [answer_of(c) for c in samples(target, 8, 5)]
    majority = max((0, 1), key=answers.count)
    assert 0 < answers.count(1 - majority) < answers.count(majority)  # two answers, one in the minority

    def favour_minority(prompt_ids, candidates):
        return [4.0 if answer_of(c) != majority else -4.0 for c in candidates]

    dec = WeightedVote(VoteConfig(n=8), scorer=favour_minority, answer_of=answer_of)
    gen = dec.generate(target, PROMPT, 10, seed=5)
    assert answer_of(gen.tokens) == 1 - majority and gen.tokens in samples(target, 8, 5)
    cands = samples(target, 8, 5)  # the decoder's vote agrees with the vote over the stored scores
    assert answer_of(gen.tokens) == weighted_vote(answers, favour_minority(PROMPT, cands))
    sig = lambda s: 1 / (1 + math.exp(-s))  # noqa: E731
    assert gen.stats.votes[1 - majority] == pytest.approx(answers.count(1 - majority) * sig(4.0))
    assert gen.stats.votes[majority] == pytest.approx(answers.count(majority) * sig(-4.0))
    dec = WeightedVote(VoteConfig(n=8), scorer=lambda p, c: [0.0] * len(c), answer_of=answer_of)
    flat = dec.generate(target, PROMPT, 10, seed=5)
    assert answer_of(flat.tokens) == majority  # equal scores: plain majority vote


def test_best_of_n_with_the_implicit_prm(target):
    prm = ImplicitPRM(target, noisy_copy(target, 0.3))
    scorer = as_scorer(prm, sep_ids=[7])
    gen = BestOfN(Config(n=4), scorer=scorer).generate(target, PROMPT, 10, seed=0)
    scores = scorer(PROMPT, samples(target, 4, 0))
    assert gen.stats.scores == pytest.approx(scores) and gen.stats.chosen == scores.index(max(scores))
    assert len(set(scores)) == 4


def test_voting_and_best_of_n_on_hand_made_groups():
    answers, scores = [1, 1, 1, 2, 2], [-3.0, -3.0, -3.0, 3.0, 3.0]
    assert majority_vote(answers) == 1  # 3 votes against 2
    assert weighted_vote(answers, scores) == 2  # 2 * sigmoid(3) = 1.90 > 3 * sigmoid(-3) = 0.14
    assert weighted_vote(answers, [0.0] * 5) == 1
    # the official 0.001 coefficient: the weights are ~0.5, so the vote is majority vote
    assert weighted_vote(answers, [EVAL_COEF * s for s in scores]) == 1
    assert weighted_vote(["a", "b"], [1.0, 1.0]) == "a" and majority_vote(["b", "a"]) == "b"  # ties: seen first
    assert best_index([0.1, 0.7, 0.7, -1.0]) == 1
    for bad in (lambda: best_index([]), lambda: weighted_vote([], []), lambda: majority_vote([])):
        with pytest.raises(ValueError, match="empty group"):
            bad()
    with pytest.raises(ValueError, match="2 answers but 1 scores"):
        weighted_vote([1, 2], [0.0])
    with pytest.raises(ValueError, match="NaN"):
        best_index([0.0, float("nan")])


def test_bad_input_is_named(target):
    with pytest.raises(ValueError, match="n must be >= 1, got 0"):
        Config(n=0)
    with pytest.raises(ValueError, match="returned 1 scores for 3 candidates"):
        BestOfN(Config(n=3), scorer=lambda p, c: [0.0]).generate(target, PROMPT, 4, seed=0)
    with pytest.raises(ValueError, match="NaN"):
        BestOfN(Config(n=1), scorer=lambda p, c: [float("nan")]).generate(target, PROMPT, 4, seed=0)
    with pytest.raises(ValueError, match="weight 'softmax' is not one of"):
        VoteConfig(weight="softmax")
    with pytest.raises(TypeError, match="scorer must be callable"):
        BestOfN(Config(), scorer=[1.0])
    with pytest.raises(TypeError, match="needs a rerank.VoteConfig"):
        WeightedVote(Config(n=2), scorer=lambda p, c: [0.0] * len(c))
    with pytest.raises(TypeError, match="answer_of must be callable"):
        WeightedVote(scorer=lambda p, c: [0.0] * len(c), answer_of="last")


def test_candidates_without_an_answer_do_not_vote(target):
    """Three candidates have no answer (None) and would outvote the rest; they do not vote unless all are None."""
    answer_of = lambda toks: None if toks[0] % 2 else toks[0]  # noqa: E731
    cands = samples(target, 8, 5)
    assert sum(answer_of(c) is None for c in cands) > max(
        sum(answer_of(c) == a for c in cands) for a in {answer_of(c) for c in cands} - {None})
    gen = WeightedVote(VoteConfig(n=8), scorer=lambda p, c: [0.0] * len(c), answer_of=answer_of).generate(
        target, PROMPT, 10, seed=5)
    assert answer_of(gen.tokens) is not None and None not in gen.stats.votes
    none = WeightedVote(VoteConfig(n=8), scorer=lambda p, c: [0.0] * len(c), answer_of=lambda t: None).generate(
        target, PROMPT, 10, seed=5)
    assert none.stats.votes == {None: 4.0} and none.tokens == cands[0]


# ---------------------------------------------------------------- registry lines and build


def test_build_makes_the_registered_rerank_decoders(target):
    scorer = lambda p, c: [float(x[0]) for x in c]  # noqa: E731
    dec = build("best_of_n", overrides=["n=6", "temperature=0.7"], scorer=scorer)
    assert isinstance(dec, BestOfN) and dec.cfg.n == 6 and dec.cfg.temperature == 0.7
    assert dec.generate(target, PROMPT, 5, seed=1).tokens == \
        BestOfN(Config(n=6, temperature=0.7), scorer=scorer).generate(target, PROMPT, 5, seed=1).tokens
    vote = build("weighted_vote", overrides=["n=5", "weight=identity"], scorer=scorer, answer_of=lambda t: t[-1] % 3)
    assert isinstance(vote, WeightedVote) and vote.cfg.weight == "identity"
    assert build("weighted_vote", scorer=scorer).answer_of([4, 2]) == (4, 2)  # default: whole continuations vote
    assert set(rerank_decoders()) == {"best_of_n", "weighted_vote"}
    assert "best_of_n" in token_decoders() and "best_of_n" not in token_decoders(rerank=False)


@pytest.mark.parametrize("name,kw,msg", [
    ("best_of_n", {}, "needs a scorer"),
    ("best_of_n", {"scorer": max, "answer_of": len}, "takes no answer_of"),
    ("best_of_n", {"scorer": max, "draft": "skip:odd"}, "takes no draft"),
    ("greedy", {"scorer": max}, "takes no scorer"),
    ("sample", {"answer_of": len}, "takes no scorer"),
])
def test_build_refuses_what_a_decoder_does_not_take(name, kw, msg):
    with pytest.raises(ValueError, match=msg):
        build(name, **kw)


# ---------------------------------------------------------------- distribution


def exact_best_of_n_law(p: torch.Tensor, score: torch.Tensor, n: int) -> torch.Tensor:
    """P(best-of-n returns token y) for one-token candidates drawn i.i.d. from p, distinct scores:
    the largest score among n draws is score[y] = F(y)^n - F(y-)^n, F the CDF in score order."""
    order = torch.argsort(score)
    cdf = torch.cumsum(p[order], 0)
    law = cdf ** n - torch.cat([cdf.new_zeros(1), cdf[:-1]]) ** n
    return torch.zeros_like(p).index_copy(0, order, law)


@pytest.mark.parametrize("n", [1, 3])
def test_best_of_n_draws_from_the_law_of_the_maximum(n):
    """Distributional test: with one-token candidates and a fixed score per token, the returned token follows
    the law of the argmax of n i.i.d. draws from the sampling distribution (n = 1: the distribution itself)."""
    model = tiny(vocab=8, dim=16, layers=1, seed=5, head_std=0.25)
    with torch.no_grad():
        p = torch.softmax(model(torch.tensor([PROMPT]))[0, -1] / 0.9, -1)  # (V,)
    score = torch.randperm(8, generator=torch.Generator().manual_seed(0)).double()
    dec = BestOfN(Config(n=n, temperature=0.9), scorer=lambda pr, c: [float(score[x[0]]) for x in c])
    draws = 800
    counts = torch.bincount(torch.tensor([dec.generate(model, PROMPT, 1, seed=s * n).tokens[0]
                                          for s in range(draws)]), minlength=8).double()
    law = exact_best_of_n_law(p.double(), score, n)
    keep = law * draws >= 5

    def cells(x: torch.Tensor) -> torch.Tensor:  # the rare tokens pooled into one cell
        return torch.cat([x[keep], x[~keep].sum().view(1)]) if (~keep).any() else x

    obs = cells(counts).numpy()
    assert chisquare(obs, cells(law).numpy() * draws).pvalue > 1e-3
    other = cells(exact_best_of_n_law(p.double(), score, n + 2)).numpy()  # power: another n's law is rejected
    assert chisquare(obs, other * draws).pvalue < 1e-3
