"""Decoder contracts: "greedy-lossless" decoders reproduce plain greedy token for token; "sampling" decoders
draw the first two tokens from the exact distribution of the target's logits (chi-square goodness of fit)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from conftest import make_decoder, names_with, tiny_lm
from scipy.stats import chisquare

from lmlab.decoding import REGISTRY as DECODING
from lmlab.decoding import build as build_decoder
from lmlab.decoding.base import Sampling
from lmlab.decoding.drafts import layer_skip
from lmlab.decoding.reference import Greedy

LOSSLESS = names_with("decoding", "greedy-lossless")
SAMPLING = names_with("decoding", "sampling")
P_MIN = 1e-3  # reject the fit below this p-value; fixed seeds make every run draw the same tokens

# ---------------------------------------------------------------- greedy


def prompts(vocab: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(123)
    return [torch.randint(0, vocab, (n,), generator=g).tolist() for n in (1, 4, 9)]


def drafts(name: str, target: torch.nn.Module, seed: int) -> list:
    """[None] for a decoder without a draft; else another random model and a layer-skip view of the target."""
    if "draft" not in DECODING.entry(name).caps:
        return [None]
    return [tiny_lm(seed + 100, vocab=target.cfg.vocab_size, dim=16), layer_skip(target, [1])]


def target_lm(seed: int) -> torch.nn.Module:
    return tiny_lm(seed, dim=32 * (seed + 1))  # two shapes: width 32 and width 64


@torch.no_grad()
def recomputed_greedy(model: torch.nn.Module, prompt: list[int], n: int) -> list[int]:
    """Greedy decoding without a cache: a full forward pass over the whole sequence for every token."""
    seq = list(prompt)
    for _ in range(n):
        seq.append(int(model(torch.tensor([seq]))[0, -1].argmax()))
    return seq[len(prompt):]


@pytest.mark.parametrize("seed", [0, 1])
def test_reference_greedy_matches_recomputation_without_cache(seed):
    model = target_lm(seed)
    for prompt in prompts(48):
        assert Greedy().generate(model, prompt, 16).tokens == recomputed_greedy(model, prompt, 16)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("name", LOSSLESS)
def test_greedy_lossless_decoders_match_plain_greedy(name, seed):
    target = target_lm(seed)
    accepted = 0
    for draft, prompt in itertools.product(drafts(name, target, seed), prompts(48)):
        dec = make_decoder(name, draft=draft)
        ref = Greedy().generate(target, prompt, 16).tokens
        eos = ref[5]  # a token greedy emits: decoding must stop right after its first occurrence
        ref_eos = Greedy().generate(target, prompt, 16, eos_id=eos).tokens
        assert ref_eos[-1] == eos and len(ref_eos) <= 6
        gen = dec.generate(target, prompt, 16)
        assert gen.tokens == ref, f"{name} with draft {type(draft).__name__}, prompt {prompt}"
        assert dec.generate(target, prompt, 16, eos_id=eos).tokens == ref_eos, f"{name} with eos {eos}"
        accepted += gen.stats.accepted
    if "draft" in DECODING.entry(name).caps:
        assert accepted > 0, f"{name}: no draft token was ever accepted, so the accept path went untested"


# ---------------------------------------------------------------- sampling


def merge_small_cells(observed: np.ndarray, expected: np.ndarray, least: float = 5.0):
    """Pool cells in order of increasing expected count until each pooled cell expects >= ``least``."""
    obs, exp, acc_o, acc_e = [], [], 0.0, 0.0
    for i in np.argsort(expected, kind="stable"):
        acc_o, acc_e = acc_o + observed[i], acc_e + expected[i]
        if acc_e >= least:
            obs.append(acc_o)
            exp.append(acc_e)
            acc_o = acc_e = 0.0
    if acc_e > 0:  # what is left over (only when everything together expects < least) joins the last cell
        obs, exp = (obs[:-1] + [obs[-1] + acc_o], exp[:-1] + [exp[-1] + acc_e]) if obs else ([acc_o], [acc_e])
    return np.array(obs), np.array(exp)


def fit_pvalue(counts: dict[tuple[int, int], int], exact: dict[tuple[int, int], float]) -> float:
    """Chi-square p-value of the observed pair counts against the exact pair probabilities."""
    impossible = [pair for pair in counts if exact.get(pair, 0.0) == 0.0]
    assert not impossible, f"drawn pairs of probability 0: {impossible}"
    cells = sorted(exact)
    n = sum(counts.values())
    observed = np.array([counts.get(c, 0) for c in cells], dtype=float)
    expected = np.array([exact[c] for c in cells]) * n
    obs, exp = merge_small_cells(observed, expected)
    return float(chisquare(obs, exp * obs.sum() / exp.sum()).pvalue)


@torch.no_grad()
def exact_pairs(model: torch.nn.Module, prompt: list[int], temperature: float) -> dict[tuple[int, int], float]:
    """P(x1, x2) = softmax(l1 / T)[x1] * softmax(l2(x1) / T)[x2] from the model's logits."""
    V = model.cfg.vocab_size
    seqs = torch.tensor([prompt + [a] for a in range(V)])  # (V, P + 1)
    logits = model(seqs).double() / temperature  # (V, P + 1, V)
    p1 = torch.softmax(logits[0, -2], -1)  # (V,) first token, the same in every row
    p2 = torch.softmax(logits[:, -1], -1)  # (V, V) second token given the first
    return {(a, b): float(p1[a] * p2[a, b]) for a in range(V) for b in range(V)}


SMALL_V, TEMPERATURE, PROMPT, DRAWS = 6, 0.8, [1, 4, 2], 600


def small_model(seed: int) -> torch.nn.Module:
    """A one-layer model over 6 tokens whose next-token distribution is peaked but far from one-hot."""
    return tiny_lm(seed, vocab=SMALL_V, dim=16, layers=1, head_std=0.2)


def sampling_target() -> torch.nn.Module:
    return small_model(3)


def sampled_pairs(dec, model: torch.nn.Module, draws: int = DRAWS) -> dict[tuple[int, int], int]:
    """Counts of the first two tokens over seeded draws (three tokens each, so drafts run two deep)."""
    counts: dict[tuple[int, int], int] = {}
    for seed in range(draws):
        pair = tuple(dec.generate(model, PROMPT, 3, seed=seed).tokens[:2])
        counts[pair] = counts.get(pair, 0) + 1
    return counts


def test_the_sampling_fixture_is_not_degenerate():
    exact = exact_pairs(sampling_target(), PROMPT, TEMPERATURE)
    assert abs(sum(exact.values()) - 1) < 1e-9
    assert max(exact.values()) < 0.3 and sum(p * DRAWS >= 5 for p in exact.values()) >= 20


def test_the_fit_rejects_draws_from_another_model():
    """The test has power: plain sampling of the draft model does not pass as the target's distribution."""
    target, other = sampling_target(), small_model(103)
    dec = make_decoder("sample", sampling=Sampling(sample=True, temperature=TEMPERATURE))
    assert fit_pvalue(sampled_pairs(dec, other, DRAWS // 2), exact_pairs(target, PROMPT, TEMPERATURE)) < P_MIN


def test_merging_pools_every_cell_to_at_least_five():
    obs, exp = merge_small_cells(np.array([9, 1, 0, 3, 29.0]), np.array([6.0, 0.5, 1.0, 4.0, 30.5]))
    assert obs.tolist() == [4, 9, 29] and exp.tolist() == [5.5, 6.0, 30.5]


@pytest.mark.parametrize("name", SAMPLING)
def test_sampling_decoders_draw_from_the_target_distribution(name):
    target = sampling_target()
    draft = small_model(103)  # disagrees often: rejections happen
    dec = make_decoder(name, draft=draft, sampling=Sampling(sample=True, temperature=TEMPERATURE))
    assert dec.generate(target, PROMPT, 3, seed=7).tokens == dec.generate(target, PROMPT, 3, seed=7).tokens
    p = fit_pvalue(sampled_pairs(dec, target), exact_pairs(target, PROMPT, TEMPERATURE))
    assert p > P_MIN, f"{name}: first two tokens do not follow the target distribution (p = {p:.2g})"


# ---------------------------------------------------------------- rerank

RERANK = names_with("decoding", "rerank")


@pytest.mark.parametrize("name", RERANK)
def test_rerank_decoders_with_one_candidate_are_plain_sampling(name):
    """N = 1: whatever the scorer says, the one candidate is the sampling decoder's draw for the seed."""
    target = sampling_target()
    cfg = DECODING.config(name)(n=1, temperature=TEMPERATURE)
    dec = build_decoder(name, cfg, scorer=lambda prompt, cands: [-1.0] * len(cands))
    plain = make_decoder("sample", sampling=Sampling(sample=True, temperature=TEMPERATURE))
    draws = [dec.generate(target, PROMPT, 3, seed=s).tokens for s in range(6)]
    assert draws == [plain.generate(target, PROMPT, 3, seed=s).tokens for s in range(6)]
    assert len({tuple(d) for d in draws}) > 1
