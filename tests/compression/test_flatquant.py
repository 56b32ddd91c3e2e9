"""FlatQuant: never-singular parameterisation, computational invariance, export == training, calibration."""

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from lmlab.compression.base import resolve_arch
from lmlab.compression.flatquant import Config, FlatQuant
from lmlab.compression.flatquant.block import FlatBlock, export, install, train
from lmlab.compression.flatquant.transform import KronAffine, SVDMatrix, cayley
from lmlab.compression.layerwise import BlockData, capture, outputs
from lmlab.compression.quantizers import ActQuantizer, Bits
from lmlab.compression.rtn import RTN
from lmlab.compression.rtn import Config as RTNConfig


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 12), st.integers(0, 10_000), st.floats(0.0, 30.0), st.floats(0.0, 6.0))
def test_svd_parameterisation_is_never_singular(n, seed, x_scale, s_scale):
    g = torch.Generator().manual_seed(seed)
    m = SVDMatrix(n, g).double()
    with torch.no_grad():  # arbitrary, even extreme, parameter values
        for p in (m.u.x, m.v.x):
            p.copy_(torch.randn(n, n, generator=g, dtype=torch.float64) * x_scale)
        m.log_s.copy_(torch.randn(n, generator=g, dtype=torch.float64) * s_scale)
    p, p_inv_t = m.pair(torch.float64)
    assert torch.isfinite(p).all() and torch.isfinite(p_inv_t).all()
    cond = float(m.log_s.detach().exp().max() / m.log_s.detach().exp().min())
    assert torch.allclose(p @ p_inv_t.T, torch.eye(n, dtype=torch.float64), atol=1e-6 * cond)
    sv = torch.linalg.svdvals(p)
    singular = m.log_s.detach().exp()
    assert torch.allclose(sv.sort().values, singular.sort().values, rtol=1e-6)  # all exp(l) > 0


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 10), st.integers(0, 1000), st.floats(0.0, 100.0))
def test_cayley_is_orthogonal_for_any_input(n, seed, scale):
    x = torch.randn(n, n, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)) * scale
    q = cayley(x)
    assert torch.allclose(q @ q.T, torch.eye(n, dtype=torch.float64), atol=1e-8)


@pytest.mark.parametrize("n", [12, 13])  # 13 is prime: one dense factor
def test_kron_affine_pair_is_computationally_invariant(n):
    g = torch.Generator().manual_seed(0)
    t = KronAffine(n, g).double()
    with torch.no_grad():
        for p in t.parameters():
            p.normal_(0.0, 0.3, generator=g)
    fw, inv = t.factors(torch.float64)
    c = t.scale(torch.float64)
    x, w = torch.randn(5, n, dtype=torch.float64), torch.randn(7, n, dtype=torch.float64)
    y = KronAffine.act(x, fw, c) @ KronAffine.weight(w, inv, c).T
    assert torch.allclose(y, x @ w.T, atol=1e-10)


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).detach().abs().max() / b.detach().abs().max())


def test_transformed_model_is_invariant_in_full_precision(tiny, ids):
    """All transforms (P_a, P_ug, P_d, P_v, P_o and the K-cache P_h) with quantizers off: output unchanged."""
    arch = resolve_arch(tiny)
    ref = tiny(ids)
    xs, calls = capture(tiny, arch, ids, 4)
    g = torch.Generator().manual_seed(0)
    for block in tiny.layers:
        data = BlockData(xs, calls, outputs(block, xs, calls))
        fb = FlatBlock(block, arch, Bits(16, 16, 8), g)
        fb.kv = nn.ModuleList([ActQuantizer(16), ActQuantizer(16)])  # keep P_h, drop the KV quantizers
        with torch.no_grad():
            for p in fb.transform_parameters():  # a random, non-orthogonal transform
                p.normal_(0.0, 0.2, generator=g)
        wiring = install(fb, block, arch)
        fb.refresh()
        assert _relative(outputs(block, xs, calls)[0], data.ys[0]) < 1e-5  # training-mode forward
        export(fb, block, arch, wiring)
        xs = data.ys
    assert _relative(tiny(ids), ref) < 1e-5  # exported: folded weights, online factors, q/k hook


def test_export_matches_the_training_forward(tiny, ids):
    arch = resolve_arch(tiny)
    xs, calls = capture(tiny, arch, ids, 4)
    block = tiny.layers[0]
    data = BlockData(xs, calls, outputs(block, xs, calls))
    fb = FlatBlock(block, arch, Bits.parse("w4a4kv4"), torch.Generator().manual_seed(0))
    wiring = install(fb, block, arch)
    train(fb, block, data, 2, 5e-3, 10.0, 0.01)
    with torch.no_grad():
        fb.refresh()
        y_train = torch.cat(outputs(block, xs, calls))
    export(fb, block, arch, wiring)
    y_export = torch.cat(outputs(block, xs, calls))
    y_fp = torch.cat(data.ys)
    quant_err = (y_train - y_fp).pow(2).mean()
    assert (y_export - y_train).pow(2).mean() < 1e-3 * quant_err  # same model up to float64 folding


def test_calibration_beats_rtn_block_error(tiny, ids):
    model, report = FlatQuant(Config(nsamples=8, seq_len=24, epochs=4)).fit(tiny, ids)
    for layer in report.layers:
        assert layer.mse_after < 0.7 * layer.mse_before
    assert report.method == "flatquant" and report.settings["bits"] == "w4a4kv4" and report.seconds > 0


def test_flatquant_beats_rtn_on_logits(ids, make_model):
    base = make_model()
    ref = base(ids)
    rtn, _ = RTN(RTNConfig()).fit(copy.deepcopy(base))
    flat, _ = FlatQuant(Config(nsamples=8, seq_len=24, epochs=4)).fit(copy.deepcopy(base), ids)
    err = {name: float((m(ids) - ref).detach().pow(2).mean()) for name, m in (("rtn", rtn), ("flat", flat))}
    assert err["flat"] < 0.5 * err["rtn"], err


def test_prime_ffn_size_uses_a_dense_transform_and_says_so(ids, make_model):
    model = make_model(ffn_dim=67)
    ref = model(ids)
    model, report = FlatQuant(Config(bits="w16a16", nsamples=8, seq_len=24, epochs=1)).fit(model, ids)
    assert any("67 is prime" in n for n in report.notes)
    assert _relative(model(ids), ref) < 1e-5


def test_short_calibration_data_is_an_error(tiny, ids):
    with pytest.raises(ValueError, match="shorter than requested"):
        FlatQuant(Config(nsamples=16, seq_len=24)).fit(tiny, ids)  # 8 sequences given
    with pytest.raises(ValueError, match="shorter than requested"):
        FlatQuant(Config(nsamples=8, seq_len=64)).fit(tiny, ids)  # 24 tokens given
    with pytest.raises(ValueError, match="token ids of shape"):
        FlatQuant(Config(nsamples=8, seq_len=24)).fit(tiny, None)


def test_non_float32_model_is_refused(tiny, ids):
    with pytest.raises(ValueError, match="float32 models"):
        FlatQuant(Config(nsamples=8, seq_len=24)).fit(tiny.to(torch.bfloat16), ids)


def test_calibration_reports_per_block_progress_with_an_eta(tiny, ids, caplog):
    import logging

    with caplog.at_level(logging.INFO, logger="lmlab.compression.flatquant"):
        FlatQuant(Config(nsamples=8, seq_len=24, epochs=0)).fit(tiny, ids)
    lines = [r.getMessage() for r in caplog.records]
    assert [m.split("]")[0] for m in lines] == ["[1/2", "[2/2"] and all("ETA" in m for m in lines)
