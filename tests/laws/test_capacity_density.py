"""Capability density: the Densing-law numbers from the shipped table, exact inversion, guards, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lmlab.laws.capacity_density import (
    Config,
    ReferenceCurve,
    densing_fit,
    densing_points,
    envelope,
    load_models,
    loss_form,
    score_form,
)

LOSS = {"a": 40.0, "alpha": 0.3, "b": 300.0, "beta": 0.25}
SCORE = {"c": 0.8, "gamma": -4.0, "l": 2.0, "d": 0.2}


def curve(**kw) -> ReferenceCurve:
    args = {"loss": LOSS, "score": SCORE, "d0": 1e9, "score_range": (0.25, 0.95), "params_range": (1e5, 1e9)}
    return ReferenceCurve(**(args | kw))


def test_shipped_table_reproduces_the_densing_law():
    table = load_models()
    assert len(table["model"]) == 51
    fit = densing_fit(cfg=Config(n_boot=20))
    assert fit.params["A"] == pytest.approx(0.00654, abs=3e-4)
    assert fit.r2 >= 0.92
    assert 100 <= fit.derived["doubling_days"] <= 112
    env = densing_points(table, "envelope")["model"].tolist()
    assert env == ["Llama-13B", "Phi-1-1.2B", "Phi-1.5-1.2B", "Phi-2-2B", "MiniCPM-2.4B", "MiniCPM-1.2B",
                   "Gemma2-9B", "MiniCPM3-4B", "Mistral-Small-24B"]


def test_variants_use_their_own_points():
    table = load_models()
    assert len(densing_points(table, "all")["days"]) == 51
    q = densing_points(table, "quarterly")
    assert len(q["days"]) == 10  # 2023Q1 .. 2025Q2
    all_fit = densing_fit(cfg=Config(variant="all", n_boot=0))
    assert all_fit.r2 < densing_fit(cfg=Config(n_boot=0)).r2
    with pytest.raises(ValueError, match="variant 'best'"):
        densing_points(table, "best")


def test_envelope_is_the_running_record_and_ties_keep_the_first():
    days = np.array([0, 0, 0, 10, 20, 20, 30])
    rho = np.array([1.0, 2.0, 2.0, 1.5, 3.0, 2.5, 2.9])
    assert envelope(days, rho).tolist() == [False, True, False, False, True, False, False]
    rng = np.random.default_rng(0)
    d, r = np.sort(rng.integers(0, 500, 60)), rng.lognormal(0, 1, 60)
    kept = r[envelope(d, r)]
    assert np.all(np.diff(kept) > 0) and kept[-1] == r.max()


def test_inversion_recovers_the_parameter_count_exactly():
    c = curve()
    for n in (3e5, 2e7, 5e8):
        s = float(score_form(np.float64(c.reference_loss(n)), **SCORE))
        est = c.density(s, params=n / 2)
        assert est.flag == "ok"
        assert est.effective_params == pytest.approx(n, rel=1e-9)
        assert est.density == pytest.approx(2.0, rel=1e-9)
        assert est.loss == pytest.approx(c.reference_loss(n), rel=1e-12)


def test_guards_flag_instead_of_returning_silent_numbers():
    c = curve()
    for s in (0.2, 0.1, 1.0, 1.2):  # at or below the floor d, at or above the ceiling c + d
        est = c.density(s, params=1e6)
        assert est.flag == "out_of_range" and est.effective_params is None and est.density is None
        assert "outside" in est.note
    floor = LOSS["b"] * c.d0 ** -LOSS["beta"]
    s_sat = float(score_form(np.float64(floor * 0.9), **SCORE))  # a loss below the D0 floor
    est = c.density(s_sat, params=1e6)
    assert est.flag == "saturated" and est.effective_params is None and "floor" in est.note
    narrow = curve(score_range=(0.3, 0.5))
    est = narrow.density(0.6, params=1e6)
    assert est.flag == "extrapolated" and est.effective_params is not None and "fitted scores" in est.note
    big = float(score_form(np.float64(c.reference_loss(1e11)), **SCORE))
    assert c.density(big).flag == "extrapolated"  # N_hat beyond the reference sizes
    with pytest.raises(ValueError, match="params must be > 0"):
        c.density(0.5, params=0)


def test_fit_reference_from_synthetic_runs_and_save_load(tmp_path):
    rng = np.random.default_rng(0)
    n, d = (g.ravel() for g in np.meshgrid(np.geomspace(1e5, 1e8, 5), np.geomspace(1e6, 1e9, 4)))
    loss = loss_form(n, d, **LOSS) * np.exp(rng.normal(0, 0.002, n.size))
    ls = np.linspace(1.0, 3.0, 25)
    score = score_form(ls, **SCORE) + rng.normal(0, 0.003, ls.size)
    c = ReferenceCurve.fit({"params": n, "tokens": d, "loss": loss}, {"loss": ls, "score": score}, d0=1e9,
                           n_boot=0)
    assert c.loss["alpha"] == pytest.approx(0.3, abs=0.03) and c.score["gamma"] == pytest.approx(-4, rel=0.1)
    s = float(score_form(np.float64(c.reference_loss(1e7)), **c.score))
    assert c.density(s, 1e7).density == pytest.approx(1.0, rel=1e-6)
    path = c.save(tmp_path / "curve.json")
    c2 = ReferenceCurve.load(path)
    assert c2.density(s, 1e7).density == pytest.approx(1.0, rel=1e-6)
    (tmp_path / "broken.json").write_text('{"loss": {"a": 1}, "score": {}}')
    with pytest.raises(ValueError, match="lacks loss parameters"):
        ReferenceCurve.load(tmp_path / "broken.json")


def test_densing_table_errors():
    with pytest.raises(ValueError, match="needs columns 'density' and 'date'"):
        densing_points({"model": ["a", "b"], "density": [1.0, 2.0]})
    with pytest.raises(ValueError, match="column 'density' must be > 0 .* got 0.0 at row 2$"):
        densing_points({"date": ["2023-01-01", "2023-02-01"], "density": [1.0, 0.0]})
    with pytest.raises(ValueError, match="column 'days' has a non-finite value nan at row 2$"):
        densing_points({"days": [0.0, float("nan"), 9.0], "density": [1.0, 2.0, 3.0]})
    with pytest.raises(ValueError, match="column 'date' at row 2: expected an ISO date"):
        densing_points({"date": ["2023-01-01", "Jan 2024"], "density": [1.0, 2.0]})
    with pytest.raises(ValueError, match="2 parameters .* the 1 points have 1 distinct 'days' values"):
        densing_fit({"date": ["2023-01-01", "2023-02-01"], "density": [2.0, 1.0]}, Config(n_boot=0))
    assert math.isclose(densing_points({"days": [0, 5], "density": [1.0, 2.0]}, "all")["days"][1], 5.0)
