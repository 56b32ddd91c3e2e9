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
    with pytest.raises(ValueError, match="holds only positions >= 9; make the cache with a larger rollback"):
        tight.truncate(12)
    with pytest.raises(ValueError, match="cannot gather to length 10"):
        tight.gather(torch.arange(10))


def test_gather_on_a_wrapped_ring_equals_recomputation_and_refuses_positions_it_lost():
    from lmlab.core import masks

    m = model(layer_pattern="S", window=4, n_layers=2)
    ids, nodes, nxt = (torch.randint(0, V, (1, n)) for n in (9, 3, 2))
    cache = m.new_cache(1, 14, rollback=3)  # capacity 7: the ring has wrapped after 12 positions
    m(ids, cache=cache)
    siblings = masks.tree([-1, -1, -1], prefix_len=9)  # three draft nodes, all children of the prefix
    m(nodes, cache=cache, positions=torch.full((3,), 9), mask=siblings)  # cache indices 9..11, all at position 9
    cache.gather(torch.tensor([*range(9), 10]))  # keep the prefix and the second node
    kept = torch.cat([ids, nodes[:, 1:2]], 1)
    assert torch.allclose(m(nxt, cache=cache), m(torch.cat([kept, nxt], 1))[:, -2:], atol=1e-5)
    lost = m.new_cache(1, 14, rollback=2)  # capacity 6
    m(ids[:, :7], cache=lost)
    lost.truncate(5)  # holds positions 1..6 (position 6 sits where position 0 was)
    with pytest.raises(ValueError, match="cannot gather to length 3: sliding-window slot 0 .* positions >= 1"):
        lost.gather(torch.tensor([0, 3, 4]))


def test_a_draft_tree_scored_with_its_positions_equals_each_path_decoded_alone():
    from lmlab.core import masks

    m = model(**{**HYBRID, "window": 4})
    ids = torch.randint(0, V, (1, 10))
    parents, toks, depth = [-1, 0, 0, 0, 3], torch.tensor([[7, 11, 12, 13, 14]]), torch.tensor([0, 1, 1, 1, 2])
    cache = m.new_cache(1, 40, rollback=8)
    m(ids, cache=cache)
    tree = m(toks, cache=cache, positions=depth + 10, mask=masks.tree(parents, prefix_len=10))[0]  # (5, V)
    path = m(torch.cat([ids, torch.tensor([[7, 13, 14]])], 1))[0]  # root -> third child -> its child
    assert torch.allclose(tree[[0, 3, 4]], path[-3:], atol=1e-5)  # siblings take no window room


def test_a_user_mask_with_a_cache_after_the_ring_wrapped():
    from lmlab.core import masks

    m = model(**{**HYBRID, "window": 4})
    ids = torch.randint(0, V, (1, 13))
    cache = m.new_cache(1, 13)
    m(ids[:, :10], cache=cache)
    one = m(ids[:, 10:11], cache=cache, mask=torch.ones(1, 11, dtype=torch.bool))  # (T, S) over all 11 positions
    two = m(ids[:, 11:13], cache=cache, mask=masks.causal(2, 13))
    assert torch.allclose(torch.cat([one, two], 1), m(ids)[:, 10:], atol=1e-5)


@pytest.mark.parametrize("decoder", ["chain", "tree"])
def test_speculative_decoding_of_a_hybrid_target_equals_greedy(decoder):
    from lmlab.decoding.chain import ChainSpeculative
    from lmlab.decoding.chain import Config as ChainConfig
    from lmlab.decoding.tree import TreeSpeculative

    def mk(seed):
        torch.manual_seed(seed)
        return Transformer(TransformerConfig(vocab_size=20, dim=32, n_layers=4, n_heads=4, ffn_dim=64,
                                             max_seq_len=128, layer_pattern="SF", window=6, init_std=0.3)).eval()

    target, draft = mk(0), mk(1)
    prompt = [1, 2, 3, 4]
    dec = ChainSpeculative(ChainConfig(depth=3), draft=draft) if decoder == "chain" else TreeSpeculative(draft=draft)
    assert dec.generate(target, prompt, 20).tokens == Greedy().generate(target, prompt, 20).tokens


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
