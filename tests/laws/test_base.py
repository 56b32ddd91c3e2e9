"""The laws fitting core: parameter recovery on synthetic noisy data, OLS equivalence, robustness, I/O, errors."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from lmlab.laws.base import Law, Param, as_columns, huber, power_law, read_table


def chinchilla_like() -> Law:
    return Law("loss_nd", lambda n, d, a, alpha, b, beta: a * n ** -alpha + b * d ** -beta,
               (Param("a", 1e-2, 1e6, log=True), Param("alpha", 0.05, 1.5), Param("b", 1e-2, 1e6, log=True),
                Param("beta", 0.05, 1.5)), x=("N", "D"), y="loss", positive=("N", "D"))


def test_power_law_recovers_known_parameters_with_ci():
    rng = np.random.default_rng(1)
    x = np.geomspace(1e15, 1e21, 40)
    y = 3.0 * x ** 0.1 * np.exp(rng.normal(0, 0.02, x.size))
    fit = power_law("p", "C", "B").fit({"C": x, "B": y}, n_boot=60)
    assert fit.params["e"] == pytest.approx(0.1, abs=0.005)
    assert fit.params["k"] == pytest.approx(3.0, rel=0.4)
    lo, hi = fit.ci["e"]
    assert lo < 0.1 < hi and hi - lo < 0.02
    assert fit.r2 > 0.9
    assert fit.residuals.shape == (40,)
    np.testing.assert_allclose(fit.predict([1e18]), fit.params["k"] * 1e18 ** fit.params["e"], rtol=1e-12)


def test_two_input_law_recovers_exponents():
    rng = np.random.default_rng(0)
    n, d = np.meshgrid(np.geomspace(1e5, 1e8, 6), np.geomspace(1e6, 1e9, 6))
    n, d = n.ravel(), d.ravel()
    loss = (400 * n ** -0.34 + 2000 * d ** -0.28) * np.exp(rng.normal(0, 0.003, n.size))
    fit = chinchilla_like().fit({"N": n, "D": d, "loss": loss}, n_boot=0)
    every_start = chinchilla_like().fit({"N": n, "D": d, "loss": loss}, n_boot=0, refine=81)  # whole 3^4 grid
    assert fit.loss <= every_start.loss * (1 + 1e-6)
    assert fit.params["alpha"] == pytest.approx(0.34, abs=0.03)
    assert fit.params["beta"] == pytest.approx(0.28, abs=0.03)
    np.testing.assert_allclose(fit.predict(N=[1e6], D=[1e7]), 400 * 1e6 ** -0.34 + 2000 * 1e7 ** -0.28, rtol=0.02)


def test_least_squares_on_a_log_linear_law_is_ordinary_regression():
    rng = np.random.default_rng(3)
    t = np.sort(rng.uniform(0, 700, 25))
    rho = np.exp(0.0065 * t - 2.6 + rng.normal(0, 0.4, t.size))
    law = Law("exp", lambda tt, A, B: np.exp(A * tt + B), (Param("A", -0.1, 0.1), Param("B", -20, 20)),
              x=("t",), y="rho", delta=None)
    fit = law.fit({"t": t, "rho": rho}, n_boot=0)
    slope, icept = np.polyfit(t, np.log(rho), 1)
    assert fit.params["A"] == pytest.approx(slope, rel=1e-5)
    assert fit.params["B"] == pytest.approx(icept, rel=1e-5)
    r2 = 1 - np.sum((np.log(rho) - (slope * t + icept)) ** 2) / np.sum((np.log(rho) - np.log(rho).mean()) ** 2)
    assert fit.r2 == pytest.approx(r2, rel=1e-6)


def test_huber_resists_outliers_that_pull_least_squares():
    rng = np.random.default_rng(4)
    x = np.geomspace(1, 1e4, 30)
    y = 2.0 * x ** 0.5 * np.exp(rng.normal(0, 0.01, x.size))
    y[-3:] *= 8.0  # three gross outliers at the end
    robust = power_law("p", "x", "y").fit({"x": x, "y": y}, n_boot=0)
    plain = power_law("p", "x", "y", delta=None).fit({"x": x, "y": y}, n_boot=0)
    assert abs(robust.params["e"] - 0.5) < 0.01
    assert abs(plain.params["e"] - 0.5) > 3 * abs(robust.params["e"] - 0.5)


def test_huber_is_quadratic_inside_and_linear_outside():
    r = np.array([-2.0, -0.5, 0.0, 0.5, 2.0])
    np.testing.assert_allclose(huber(r, 1.0), [1.5, 0.125, 0.0, 0.125, 1.5])
    np.testing.assert_allclose(huber(r, None), 0.5 * r * r)


def test_non_broadcasting_form_gives_the_same_fit():
    x = np.geomspace(1, 100, 12)
    y = 5 * x ** -0.3
    vec = power_law("p", "x", "y").fit({"x": x, "y": y}, n_boot=0)
    scalar = Law("p2", lambda xv, k, e: np.array([k * math.pow(v, e) for v in xv]),
                 vec.law.params, x=("x",), y="y", positive=("x",))
    fit = scalar.fit({"x": x, "y": y}, n_boot=0)
    assert fit.params["e"] == pytest.approx(vec.params["e"], abs=1e-6)


def test_band_brackets_prediction_and_derived_quantities_get_cis():
    rng = np.random.default_rng(5)
    t = np.linspace(0, 500, 20)
    rho = np.exp(0.007 * t - 2 + rng.normal(0, 0.2, t.size))
    law = Law("exp", lambda tt, A, B: np.exp(A * tt + B), (Param("A", -0.1, 0.1), Param("B", -20, 20)),
              x=("t",), y="rho", delta=None, derived={"doubling": lambda p: math.log(2) / p["A"]})
    fit = law.fit({"t": t, "rho": rho}, n_boot=80)
    lo, hi = fit.band([100.0, 400.0])
    p = fit.predict([100.0, 400.0])
    assert np.all(lo <= p) and np.all(p <= hi)
    assert fit.derived["doubling"] == pytest.approx(math.log(2) / fit.params["A"])
    dlo, dhi = fit.derived_ci["doubling"]
    assert dlo < fit.derived["doubling"] < dhi


def test_csv_json_inputs_json_output_and_plot(tmp_path):
    x = np.geomspace(1, 1e3, 10)
    csv_path = tmp_path / "pts.csv"
    csv_path.write_text("# a comment line\nx,y,label\n" + "".join(f"{a},{2 * a ** 0.5},r{i}\n"
                                                                    for i, a in enumerate(x)))
    cols = read_table(csv_path)
    assert cols["label"].dtype.kind == "U" and cols["x"].dtype == float
    json_path = tmp_path / "pts.json"
    json_path.write_text(json.dumps([{"x": float(a), "y": float(2 * a ** 0.5)} for a in x]))
    law = power_law("p", "x", "y")
    f1, f2 = law.fit(csv_path, n_boot=10), law.fit(json_path, n_boot=10)
    assert f1.params["e"] == pytest.approx(0.5, abs=1e-4) and f2.params["e"] == pytest.approx(0.5, abs=1e-4)
    out = json.loads(f1.save(tmp_path / "fit.json").read_text())
    assert out["law"] == "p" and out["n"] == 10 and set(out["params"]) == {"k", "e"} and "ci" in out
    png = f1.plot(tmp_path / "fit.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_input_errors_name_the_problem(tmp_path):
    law = power_law("p", "x", "y")
    with pytest.raises(ValueError, match=r"missing \['y'\]"):
        law.fit({"x": [1, 2, 3]})
    with pytest.raises(ValueError, match="column 'x' must be > 0"):
        law.fit({"x": [1, 0, 3], "y": [1, 2, 3]})
    with pytest.raises(ValueError, match="column 'y' must be > 0"):
        law.fit({"x": [1, 2, 3], "y": [1, -2, 3]})
    with pytest.raises(ValueError, match="2 parameters .* the 1 points have 1 distinct 'x' values"):
        law.fit({"x": [1.0], "y": [2.0]})
    with pytest.raises(ValueError, match="column 'x' must be numeric, got 'abc' at row 3$"):
        law.fit({"x": [1, 2, "abc"], "y": [1, 2, 3]})
    with pytest.raises(ValueError, match="column 'x' has a non-finite value nan at row 3$"):
        law.fit({"x": [1, 2, float("nan")], "y": [1, 2, 3]})
    with pytest.raises(ValueError, match="column 'x' has an empty value at row 2$"):
        law.fit([{"x": 1, "y": 1}, {"x": None, "y": 2}, {"x": 3, "y": 3}])
    with pytest.raises(ValueError, match="different lengths"):
        as_columns({"x": [1, 2], "y": [1]})
    bad = tmp_path / "bad.csv"
    bad.write_text("x,y\n1,2\n3\n")
    with pytest.raises(ValueError, match=r"bad.csv: line 3 has 1 fields, the header \(line 1\) has 2"):
        read_table(bad)
    missing = tmp_path / "m.csv"
    missing.write_text("x,z\n1,2\n2,3\n")
    with pytest.raises(ValueError, match=r"missing \['y'\].*got \['x', 'z'\]"):
        law.fit(missing)
    with pytest.raises(FileNotFoundError):
        law.fit(tmp_path / "nope.csv")
    with pytest.raises(ValueError, match="lo < hi"):
        Param("a", 1.0, 1.0)
    with pytest.raises(ValueError, match="log=True needs lo > 0"):
        Param("a", 0.0, 1.0, log=True)
    with pytest.raises(ValueError, match="residual"):
        Law("q", lambda x, a: a * x, (Param("a", 0, 1),), x=("x",), y="y", residual="sqrt")


def test_fewer_distinct_inputs_than_parameters_is_refused():
    law = power_law("p", "x", "y")
    with pytest.raises(ValueError, match=r"law 'p' has 2 parameters \(k, e\) but the 3 points have 1 distinct "
                                         r"'x' values: need at least 2"):
        law.fit({"x": [1e18, 1e18, 1e18], "y": [100.0, 100.0, 100.0]})
    n, d = [1e6, 1e6, 1e7, 1e7, 1e8, 1e8], [1e9, 1e9, 1e9, 1e9, 1e10, 1e10]  # 3 distinct (N, D) pairs
    with pytest.raises(ValueError, match=r"4 parameters .* the 6 points have 3 distinct \('N', 'D'\) combinations"):
        chinchilla_like().fit({"N": n, "D": d, "loss": [3.0, 3.1, 2.9, 2.8, 2.5, 2.6]})
    # distinct values of one input are not enough: the (N, D) tuples count
    fit = chinchilla_like().fit({"N": n[:4] + [1e8, 1e9], "D": d, "loss": [3.0, 3.1, 2.9, 2.8, 2.5, 2.4]},
                                n_boot=0)
    assert len(fit.residuals) == 6


def test_bootstrap_skips_resamples_with_fewer_distinct_inputs_than_parameters():
    x = np.array([1.0, 1.0, 1.0, 1.0, 10.0, 30.0])  # many resamples draw only x = 1 rows
    y = 2.0 * x ** 0.5 * np.array([1.0, 1.1, 0.9, 1.05, 1.0, 1.0])
    fit = power_law("p", "x", "y").fit({"x": x, "y": y}, n_boot=200, seed=3)
    rng, usable = np.random.default_rng(3), 0
    for _ in range(200):
        usable += len(np.unique(x[rng.integers(0, 6, 6)])) >= 2
    assert usable < 190  # the data do produce unusable resamples
    assert len(fit.boot) == usable
