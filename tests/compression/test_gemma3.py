"""Compression of a random tiny Gemma3ForCausalLM: its mapping table, per-block calls (sliding-window and global
layers get different masks and RoPE), (1 + w) norms under FlatQuant's folding, and Hadamard's refusal."""

import copy

import pytest
import torch

from lmlab.compression.base import ARCHS, LINEAR_ROLES, get_module, resolve_arch
from lmlab.compression.flatquant import Config as FlatConfig
from lmlab.compression.flatquant import FlatQuant
from lmlab.compression.hadamard import Hadamard
from lmlab.compression.layerwise import layerwise
from lmlab.compression.qlayers import QKVQuant, QLinear, QNorm
from lmlab.compression.rtn import RTN
from lmlab.compression.rtn import Config as RTNConfig
from lmlab.compression.saving import load_quantized, save_quantized
from lmlab.core.hf import HFCausalLM

transformers = pytest.importorskip("transformers")


def tiny_gemma3(seed: int = 0):
    """2 layers (one sliding-window of 4 tokens, one global), width 32, (1 + w) norms perturbed from 1."""
    torch.manual_seed(seed)
    cfg = transformers.Gemma3TextConfig(
        vocab_size=61, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, max_position_embeddings=64, sliding_window=4, query_pre_attn_scalar=8,
        layer_types=["sliding_attention", "full_attention"], bos_token_id=None, eos_token_id=None,
        pad_token_id=None)
    model = transformers.Gemma3ForCausalLM(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:  # initialised at 0 (scale 1): give the norms real scales
                p.normal_(0.0, 0.3)
    return HFCausalLM(model)


@pytest.mark.parametrize("wrap", [False, True])
def test_gemma3_resolves_to_its_table(wrap):
    model = tiny_gemma3()
    assert resolve_arch(model if wrap else model.model) is ARCHS["hf-gemma3"]


def test_each_block_runs_with_its_own_mask_and_rope(ids):
    """The global layer's full-precision outputs equal those of the real forward (not the sliding layer's call)."""
    model = tiny_gemma3()
    seen = []
    handles = [b.register_forward_hook(lambda m, a, o: seen.append(o[0] if isinstance(o, tuple) else o))
               for b in model.model.model.layers]
    with torch.no_grad():
        model(ids[:4])
    for h in handles:
        h.remove()
    got = []
    layerwise(model, ARCHS["hf-gemma3"], ids[:4], 4, lambda i, path, block, data: got.append(data.ys[0]))
    assert len(got) == 2 and all(torch.allclose(g, s, atol=1e-5) for g, s in zip(got, seen))


def test_rtn_w16_is_exact_and_w4a4kv4_replaces_every_layer(ids):
    model = tiny_gemma3()
    with torch.no_grad():
        ref = model(ids)
    exact, _ = RTN(RTNConfig(bits="w16a16")).fit(copy.deepcopy(model), ids)
    with torch.no_grad():
        assert torch.allclose(exact(ids), ref, atol=1e-5)
    q, report = RTN(RTNConfig(bits="w4a4kv4")).fit(model, ids)
    arch = ARCHS["hf-gemma3"]
    for layer in q.model.model.layers:
        assert all(isinstance(get_module(layer, arch.block[r]), QLinear) for r in LINEAR_ROLES)
        assert isinstance(layer.input_layernorm, QNorm) and isinstance(layer.pre_feedforward_layernorm, QNorm)
        assert isinstance(layer.self_attn.qkv_hook, QKVQuant)
    with torch.no_grad():
        out = q(ids)
    assert torch.isfinite(out).all() and 0 < float((out - ref).pow(2).mean()) < float(ref.pow(2).mean())
    assert [e.name for e in report.layers] == ["model.layers.0", "model.layers.1"]


def test_flatquant_folds_scales_into_one_plus_w_norms(ids):
    """16 bits: transforms and scales folded into weights and (1 + w) norms leave the function unchanged."""
    model = tiny_gemma3()
    with torch.no_grad():
        ref = model(ids)
    cfg = FlatConfig(bits="w16a16", nsamples=8, seq_len=24, epochs=1)
    folded, _ = FlatQuant(cfg).fit(model, ids)
    with torch.no_grad():
        out = folded(ids)
    assert float((out - ref).abs().max() / ref.abs().max()) < 1e-4


def test_flatquant_w4a4kv4_beats_rtn_and_reloads_identically(ids, tmp_path):
    base = tiny_gemma3()
    with torch.no_grad():
        ref = base(ids)
    rtn, _ = RTN(RTNConfig(bits="w4a4kv4")).fit(copy.deepcopy(base), ids)
    flat, report = FlatQuant(FlatConfig(nsamples=8, seq_len=24, epochs=3)).fit(base, ids)
    with torch.no_grad():
        err = {name: float((m(ids) - ref).pow(2).mean()) for name, m in (("rtn", rtn), ("flat", flat))}
    assert err["flat"] < err["rtn"], err
    assert all(e.mse_after < e.mse_before for e in report.layers)
    save_quantized(tmp_path / "q", flat, report)
    reloaded, meta = load_quantized(tmp_path / "q")
    assert meta["arch"] == "hf-gemma3" and isinstance(reloaded, HFCausalLM)
    with torch.no_grad():
        assert torch.equal(reloaded(ids), flat(ids))


def test_hadamard_refuses_gemma3_naming_why_and_the_supported_families():
    with pytest.raises(ValueError, match=r"post-norm.*Supported families: lmlab, hf-llama \(llama, mistral\)"):
        Hadamard().fit(tiny_gemma3())


def test_unknown_model_type_lists_supported_families():
    model = tiny_gemma3().model
    model.config.model_type = "somebody_else"
    with pytest.raises(ValueError, match=r"supported families: lmlab, hf-llama \(llama, mistral\), hf-gemma3"):
        RTN().fit(model)
