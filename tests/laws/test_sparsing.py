"""Sparsing law: the two activation-ratio laws recover published parameters from their own curves, converge
where the log baseline diverges, and bad input is refused with a clear error."""

from __future__ import annotations

import numpy as np
import pytest

from lmlab.laws import sparsing as S

D = np.geomspace(5.0, 300.0, 30)  # billions of tokens, where every published curve is in (0, 1)


def points(name: str, noise: float = 0.0, seed: int = 0) -> dict:
    y = S.published_curve(name, D) * (1 + noise * np.random.default_rng(seed).standard_normal(D.size))
    return {"tokens": D, "activation_ratio": y}


@pytest.mark.parametrize("name", sorted(S.PUBLISHED))
def test_exact_curves_give_back_the_published_parameters(name):
    fit = S.sparsing_law(name.split("-")[1]).fit(points(name), n_boot=0)
    for k, v in S.PUBLISHED[name].items():
        assert fit.params[k] == pytest.approx(v, rel=1e-3), k
    assert fit.r2 > 0.999999


@pytest.mark.parametrize("name", ["0.8b-relu", "0.1b-silu", "0.8b-silu"])
def test_noisy_curves_recover_alpha_and_the_limit(name):
    fit = S.sparsing_law(name.split("-")[1]).fit(points(name, noise=0.002, seed=1), n_boot=20)
    assert fit.params["alpha"] == pytest.approx(S.PUBLISHED[name]["alpha"], rel=0.05)
    assert fit.params["A0"] == pytest.approx(S.PUBLISHED[name]["A0"], rel=0.02)
    lo, hi = fit.ci["A0"]
    assert lo <= fit.params["A0"] <= hi and fit.derived["A_limit"] == fit.params["A0"]


def test_relu_law_decreases_and_silu_law_increases_to_their_limits():
    relu, silu = S.published_curve("0.4b-relu", D), S.published_curve("0.4b-silu", D)
    assert np.all(np.diff(relu) < 0) and np.all(relu > S.PUBLISHED["0.4b-relu"]["A0"])
    assert np.all(np.diff(silu) > 0) and np.all(silu < S.PUBLISHED["0.4b-silu"]["A0"])


@pytest.mark.parametrize("name", ["0.8b-relu", "0.8b-silu"])
def test_compare_reports_law_and_log_baseline(name):
    act = name.split("-")[1]
    out = S.compare(points(name, noise=0.001), S.Config(activation=act, n_boot=10), extrapolate=10.0)
    s, a0 = out["summary"], S.PUBLISHED[name]["A0"]
    assert s["law_r2"] > 0.99 and s["law_r2"] >= s["baseline_r2"] and s["law_mae"] <= s["baseline_mae"]
    # the power law converges to its limit; the log baseline keeps moving away from it
    assert abs(s["law_at_extrapolation"] - a0) < 0.01
    assert abs(s["baseline_at_extrapolation"] - a0) > abs(s["law_at_extrapolation"] - a0)
    assert s["extrapolation_tokens"] == pytest.approx(3000.0)


def test_bad_input():
    with pytest.raises(ValueError, match="no sparsing law"):
        S.sparsing_law("gelu")
    with pytest.raises(ValueError, match="unknown published fit"):
        S.published_curve("7b-relu", D)
    with pytest.raises(ValueError, match="missing"):
        S.compare({"tokens": D, "ratio": D / 1000})
    with pytest.raises(ValueError, match="must be > 0"):
        S.compare({"tokens": -D, "activation_ratio": np.full(D.size, 0.5)})
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        S.compare({"tokens": D, "activation_ratio": np.full(D.size, 1.5)})
    with pytest.raises(ValueError, match="4 parameters .* the 3 points have 3 distinct 'tokens' values"):
        S.relu_law().fit({"tokens": D[:3], "activation_ratio": np.full(3, 0.5)})
