"""Batch-size laws: McCandlish trade-off recovery, steps-to-target, B_opt vertex, noise scale from the Trainer."""

from __future__ import annotations

import numpy as np
import pytest

from lmlab.laws.batch_size import (
    LAWS,
    REFERENCE,
    Config,
    critical_batch,
    optimal_batch,
    scale_batch,
    smooth,
    steps_to_target,
    tradeoff_points,
    train_run,
)


def synthetic_runs(batches=(4, 8, 16, 32, 64, 128), noise=0.0, seed=0):
    """Loss curves built from the McCandlish relation with B_crit(L) = 20 * L^-3 and S_min(L) = 50 e^(4-L):
    a run at batch B reaches loss L after S_min(L) (1 + B_crit(L) / B) steps."""
    rng = np.random.default_rng(seed)
    levels = np.linspace(4.0, 1.5, 400)
    runs = []
    for b in batches:
        steps = 50 * np.exp(4 - levels) * (1 + 20 * levels ** -3.0 / b)
        grid = np.arange(1, int(steps[-1]) + 1)
        loss = np.interp(grid, steps, levels)
        runs.append({"batch": b, "loss": loss + rng.normal(0, noise, loss.size)})
    return runs


def test_tradeoff_law_recovers_critical_batch():
    rng = np.random.default_rng(0)
    b = np.array([2, 4, 8, 16, 32, 64, 128, 256], dtype=float)
    s = 300 * (1 + 24 / b) * np.exp(rng.normal(0, 0.02, b.size))
    fit = LAWS["steps_batch"].fit({"batch": b, "steps": s}, n_boot=40)
    assert fit.params["B_crit"] == pytest.approx(24, rel=0.1)
    assert fit.derived["E_min"] == pytest.approx(300 * 24, rel=0.15)
    assert fit.ci["B_crit"][0] < 24 < fit.ci["B_crit"][1]


def test_critical_batch_grows_as_the_loss_falls_on_mccandlish_curves():
    runs = synthetic_runs()
    targets = [3.5, 3.0, 2.5, 2.0, 1.7]
    res = critical_batch(runs, Config(targets=targets, smooth_sequences=1, n_boot=10))
    for t, bc, r2 in zip(res.table["target"], res.table["B_crit"], res.table["r2"]):
        assert bc == pytest.approx(20 * t ** -3.0, rel=0.05)
        assert r2 > 0.99
    assert res.trend.params["alpha_B"] == pytest.approx(1 / 3, rel=0.05)
    assert np.all(np.diff(res.table["B_crit"]) > 0)


def test_default_targets_are_reached_by_every_batch_size():
    runs = synthetic_runs(noise=0.01)
    res = critical_batch(runs, Config(n_targets=4, smooth_sequences=256, n_boot=0))
    assert len(res.table["target"]) == 4 and np.all(res.table["n"] == len(runs))
    assert np.all(np.diff(res.table["B_crit"]) > 0)  # targets run from high to low loss


def test_steps_to_target_and_smoothing_have_no_lag():
    line = np.linspace(10, 0, 101)
    np.testing.assert_allclose(smooth(line, 21), line)  # a centred window leaves a straight line alone
    assert steps_to_target(line, 5.0) == pytest.approx(51.0)
    assert steps_to_target(line, 4.95) == pytest.approx(51.5)
    assert steps_to_target(line, -1.0) is None
    pts = tradeoff_points([{"batch": 8, "loss": line}, {"batch": 16, "loss": line / 2}], [4.0])
    assert pts["batch"].tolist() == [8.0, 16.0] and pts["examples"][0] == pytest.approx(8 * pts["steps"][0])


def test_optimal_batch_is_the_parabola_vertex_and_flags_edges():
    rows = [{"tokens": d, "batch": b, "lr": lr, "loss": (np.log(b) - np.log(c)) ** 2 + 1 + lr}
            for d, c in ((1e6, 20.0), (4e6, 45.0), (9e6, 1000.0)) for b in (4, 8, 16, 32, 64, 128)
            for lr in (0.0, 0.5)]
    out = optimal_batch(rows, "tokens")
    assert out["batch"][0] == pytest.approx(20.0, rel=1e-6) and out["batch"][1] == pytest.approx(45.0, rel=1e-6)
    assert out["interior"].tolist() == [1.0, 1.0, 0.0] and out["batch"][2] == 128.0
    assert out["loss"][0] == pytest.approx(1.0)  # the better learning rate
    with pytest.raises(ValueError, match=r"missing \['loss'\]"):
        optimal_batch([{"tokens": 1, "batch": 2}])


def test_optimal_batch_refuses_a_missing_loss_naming_the_line(tmp_path):
    sweep = tmp_path / "sweep.csv"
    sweep.write_text("tokens,batch,loss\n1e6,8,3.1\n1e6,16,\n1e6,32,3.0\n")  # a run that never finished
    with pytest.raises(ValueError, match=r"sweep table: column 'loss' has an empty value at line 3 of .*sweep.csv"):
        optimal_batch(sweep)
    sweep.write_text("tokens,batch,loss\n1e6,8,3.1\n1e6,16,nan\n1e6,32,3.0\n")  # argmin would pick the NaN
    with pytest.raises(ValueError, match=r"column 'loss' has a non-finite value nan at line 3"):
        optimal_batch(sweep)
    with pytest.raises(ValueError, match=r"batch sizes must be > 0 .* got 0.0 at row 2"):
        optimal_batch({"tokens": [1e6, 1e6], "batch": [8, 0], "loss": [3.0, 3.1]})


def test_reference_exponents_are_consistent_and_scale_batch():
    ref = REFERENCE["shuai2024"]
    assert ref["S_opt~C"] + ref["B_opt~C"] == pytest.approx(ref["D_opt~C"])  # D = B * S
    assert ref["N_opt~C"] + ref["D_opt~C"] == pytest.approx(1.0)  # C ~ 6 N D
    assert scale_batch(32, 1e18, 1e19) == pytest.approx(32 * 10 ** 0.102)
    with pytest.raises(ValueError, match="must be > 0"):
        scale_batch(0, 1e18, 1e19)


def test_bad_runs_are_rejected():
    with pytest.raises(ValueError, match="missing \\['loss'\\]"):
        critical_batch([{"batch": 4}])
    with pytest.raises(ValueError, match="batch size must be > 0"):
        critical_batch([{"batch": 0, "loss": [1.0, 0.5]}])
    with pytest.raises(ValueError, match="do not improve"):
        critical_batch([{"batch": 4, "loss": np.ones(50)}, {"batch": 8, "loss": np.ones(50)}],
                       Config(n_boot=0))


def test_train_run_measures_the_noise_scale_with_the_trainer():
    from lmlab.core.transformer import TransformerConfig

    rng = np.random.default_rng(0)
    ids = np.tile(rng.integers(0, 40, 300), 20)  # a repeated random sequence: learnable
    cfg = TransformerConfig(vocab_size=40, dim=16, n_layers=1, n_heads=2, max_seq_len=16)
    r = train_run(ids, ids[:800], cfg, batch=8, lr=1e-2, tokens=8 * 16 * 40, seq_len=16,
                  eval_every_tokens=8 * 16 * 20, warmup_steps=2, noise_every=2, eval_batches=2)
    assert len(r["loss"]) == 40 and r["eval_tokens"].tolist() == [2560.0, 5120.0]
    assert r["loss"][-5:].mean() < r["loss"][:5].mean()
    assert len(r["noise"]["b_simple"]) > 0 and np.all(np.isfinite(r["noise"]["b_simple"]))
    with pytest.raises(ValueError, match="multiple of batch"):
        train_run(ids, ids, cfg, batch=8, lr=1e-2, tokens=1000, seq_len=16, eval_every_tokens=100)
