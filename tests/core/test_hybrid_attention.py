"""Hybrid attention (sliding-window + full layers), cross-layer KV sharing, the ring-buffer cache and kv_bytes."""

import pytest
import torch

from lmlab.core.blocks import Attention, Context, RoPE, kv_layout, register
from lmlab.core.config import apply_overrides
from lmlab.core.kv_cache import kv_bytes
from lmlab.core.transformer import Transformer, TransformerConfig
from lmlab.decoding.reference import Greedy

V = 61


def cfg(**kw) -> TransformerConfig:
    base = dict(vocab_size=V, dim=32, n_layers=8, n_heads=4, n_kv_heads=2, max_seq_len=96)
    return TransformerConfig(**{**base, **kw})


HYBRID = dict(layer_pattern="SSSF", window=5, kv_share=2)


def model(**kw) -> Transformer:
    torch.manual_seed(0)
    return Transformer(cfg(**kw)).eval()


def test_layout_of_sssf_with_pairwise_sharing():
    lay = kv_layout(cfg(**HYBRID))
    assert lay.slots == [0, 1, 2, 3, 4, 5, 6, 3]  # full layers 3 and 7 share slot 3
    assert lay.windows == [5, 5, 5, None, 5, 5, 5]
    assert [lay.reuses(i) for i in range(8)] == [False] * 7 + [True]
    runs_of_three = kv_layout(cfg(n_layers=6, layer_pattern="FFS", window=5, kv_share=3))
    assert runs_of_three.slots == [0, 0, 1, 0, 2, 3] and runs_of_three.producers == [0, 2, 4, 5]
    m = model(**HYBRID)
    assert not hasattr(m.layers[7].attn, "k_proj") and hasattr(m.layers[3].attn, "k_proj")


def test_window_covering_the_sequence_equals_full_attention():
    ids = torch.randint(0, V, (2, 24))
    full = model()
    wide = Transformer(cfg(layer_pattern="SSSF", window=24)).eval()
    wide.load_state_dict(full.state_dict())
    assert torch.allclose(wide(ids), full(ids), atol=1e-6)
    narrow = Transformer(cfg(layer_pattern="SSSF", window=23)).eval()
    narrow.load_state_dict(full.state_dict())
    assert not torch.allclose(narrow(ids), full(ids), atol=1e-4)  # the window is applied


def test_sliding_window_layer_equals_a_per_query_loop():
    torch.manual_seed(1)
    c, W, T = cfg(n_layers=1, layer_pattern="S", window=4), 4, 11
    attn, x = Attention(c, 0), torch.randn(1, T, 32)
    ctx = Context(torch.arange(T), RoPE(c.head_dim, 96))
    y = attn(x, ctx)
    q = attn.q_proj(x).view(1, T, 4, 8).transpose(1, 2)
    k = attn.k_proj(x).view(1, T, 2, 8).transpose(1, 2).repeat_interleave(2, 1)
    v = attn.v_proj(x).view(1, T, 2, 8).transpose(1, 2).repeat_interleave(2, 1)
    q, k = ctx.pos(q, k, ctx.positions)
    rows = []
    for t in range(T):  # query t sees keys max(0, t-W+1) .. t
        ks, vs = k[:, :, max(0, t - W + 1):t + 1], v[:, :, max(0, t - W + 1):t + 1]
        w = torch.softmax(q[:, :, t:t + 1] @ ks.transpose(-1, -2) / 8 ** 0.5, -1)
        rows.append(w @ vs)
    ref = attn.o_proj(torch.cat(rows, 2).transpose(1, 2).reshape(1, T, 32))
    assert torch.allclose(y, ref, atol=1e-6)


@pytest.mark.parametrize("chunks", [[1] * 20, [7, 1, 5, 7], [20], [3, 9, 1, 1, 6]])
def test_cached_generation_equals_recomputation(chunks):
    m = model(**HYBRID)
    ids = torch.randint(0, V, (2, sum(chunks)))
    full = m(ids)
    cache, outs, at = m.new_cache(2, sum(chunks)), [], 0
    for n in chunks:  # chunks longer than the window wrap the ring within one call
        outs.append(m(ids[:, at:at + n], cache=cache))
        at += n
    assert torch.allclose(torch.cat(outs, 1), full, atol=1e-5)
    assert cache.caps == [5, 5, 5, 20, 5, 5, 5]


def test_greedy_generation_equals_uncached_argmax_and_planner_equals_allocated_bytes():
    m = model(**HYBRID)
    made = []
    new_cache = m.new_cache
    m.new_cache = lambda *a, **k: made.append(new_cache(*a, **k)) or made[-1]  # record the real cache it makes
    prompt = torch.randint(0, V, (6,)).tolist()
    gen = Greedy().generate(m, prompt, max_new_tokens=14)
    seq = list(prompt)
    for _ in range(14):  # recompute the whole sequence for every token: no cache at all
        seq.append(int(m.forward(torch.tensor([seq]))[0, -1].argmax()))
    assert gen.tokens == seq[6:]
    assert len(made) == 1 and made[0].nbytes == kv_bytes(m.cfg, 20, batch=1)
    full = model()
    assert full.new_cache(3, 50).nbytes == kv_bytes(full.cfg, 50, batch=3)
    assert m.new_cache(3, 50, rollback=2).nbytes == kv_bytes(m.cfg, 50, batch=3, rollback=2)
    assert m.new_cache(1, 50).nbytes < full.new_cache(1, 50).nbytes


def test_the_reports_82_8125_percent():
    shape = dict(vocab_size=V, dim=64, n_layers=8, n_heads=4, max_seq_len=65536)
    hybrid = TransformerConfig(**shape, layer_pattern="SSSF", window=4096, kv_share=2)
    saving = 1 - kv_bytes(hybrid, 65536) / kv_bytes(TransformerConfig(**shape), 65536)
    assert saving == 0.828125 == 1 - (1 / 8 + 3 / 4 * 4096 / 65536)


def test_rollback_within_the_margin_equals_recomputation_and_beyond_it_errors():
    m = model(**HYBRID)
    ids = torch.randint(0, V, (1, 16))
    cache = m.new_cache(1, 16, rollback=3)
    m(ids[:, :12], cache=cache)
    m(torch.randint(0, V, (1, 3)), cache=cache)  # three rejected draft tokens
    cache.truncate(12)
    assert torch.allclose(m(ids[:, 12:], cache=cache), m(ids)[:, 12:], atol=1e-5)
    tight = m.new_cache(1, 16)
    m(ids[:, :12], cache=tight)
    m(ids[:, 12:14], cache=tight)
    with pytest.raises(ValueError, match="rollback >= 2"):
        tight.truncate(12)
    with pytest.raises(ValueError, match="wrapped"):
        tight.gather(torch.arange(10))


def test_the_reusing_layer_sends_gradient_to_the_producers_kv():
    m = model(**HYBRID).train()
    ids = torch.randint(0, V, (1, 9))

    def k_grad() -> torch.Tensor:
        m.zero_grad()
        m(ids).logsumexp(-1).sum().backward()
        return m.layers[3].attn.k_proj.weight.grad.clone()

    with_reuse = k_grad()
    m.layers[7].attn.o_proj.weight.data.zero_()  # layer 7 now adds nothing: only layer 3 uses the shared K
    assert not torch.allclose(with_reuse, k_grad())
    assert m.num_params() < model().num_params()  # layer 7 has no k/v projections


@pytest.mark.parametrize("kw, needle", [
    (dict(layer_pattern="SXF", window=4), "'X'"),
    (dict(layer_pattern="SSF", window=4), "does not divide n_layers 8"),
    (dict(layer_pattern="SSSF", window=0), "window must be >= 1"),
    (dict(layer_pattern="SSSF"), "window >= 1"),
    (dict(layer_pattern="SSSF", window=4, mask="bidirectional"), "causal mask"),
    (dict(kv_share=0), "kv_share must be >= 1"),
])
def test_bad_hybrid_configs_name_the_value(kw, needle):
    with pytest.raises(ValueError, match=needle):
        cfg(**kw)


class NarrowOddLayers(Attention):
    """An attention slot with fewer KV heads on odd layers (e.g. a per-layer GQA schedule)."""

    def __init__(self, c, layer_idx):
        super().__init__(TransformerConfig(**{**c.__dict__, "n_kv_heads": 1 if layer_idx % 2 else 2}), layer_idx)


def test_sharing_between_different_head_shapes_is_refused():
    register("attn", "narrow_odd", NarrowOddLayers)
    m = model(n_layers=2, kv_share=2, attn="narrow_odd")
    with pytest.raises(ValueError, match="head shapes differ"):
        m(torch.randint(0, V, (1, 4)))


def test_hybrid_from_overrides_saves_and_loads(tmp_path):
    import lmlab
    from lmlab.core.checkpoint import save_model
    from lmlab.core.config import to_dict

    c = apply_overrides(cfg(), ["layer_pattern=SSSF", "window=5", "kv_share=2"])
    torch.manual_seed(0)
    m = Transformer(c).eval()
    save_model(tmp_path / "m", m, to_dict(c))
    loaded, _, _ = lmlab.load(str(tmp_path / "m"))
    ids = torch.randint(0, V, (1, 12))
    assert torch.equal(loaded(ids), m(ids))
    from lmlab.core.hf import llama_config

    with pytest.raises(ValueError, match="no Llama equivalent"):
        llama_config(c)
