"""Position-bias attentions (ALiBi, Kerple, FIRE) and DAPE v1/v2: closed forms, the identity kernel, causality (with
a control that breaks it), fast == naive, cache == recomputation, document packing, config errors, train / save /
load."""

from __future__ import annotations

import math

import pytest
import torch

import lmlab
from lmlab.core.blocks import Context, NaiveAttention, NoPE
from lmlab.core.checkpoint import save_model
from lmlab.core.config import to_dict
from lmlab.core.data import TokenWindows
from lmlab.core.train import TrainConfig, Trainer
from lmlab.core.transformer import Transformer, TransformerConfig
from lmlab.models import dape as M
from lmlab.objectives import REGISTRY as OBJECTIVES

DAPE_ARGS = [dict(bias="none"), dict(bias="alibi"), dict(bias="kerple"), dict(bias="fire"),
             dict(bias="kerple", kernel=1), dict(bias="fire", kernel=5, width=8)]
BIAS_SLOTS = ["alibi", "kerple", "fire"]


def cfg(attn: str = "dape", n_heads: int = 4, **attn_args) -> TransformerConfig:
    return TransformerConfig(vocab_size=64, dim=32, n_layers=2, n_heads=n_heads, ffn_dim=64, max_seq_len=48,
                             pos="nope", attn=attn, slot_args={"attn": attn_args})


def ctx(T: int, mask: torch.Tensor | None = None) -> Context:
    return Context(torch.arange(T), NoPE(8, 64), mask)


def scramble(m: torch.nn.Module, seed: int) -> None:
    """Random non-trivial weights everywhere (Kerple p, a in range; FIRE c, L small enough to matter)."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.endswith(("bias.p", "bias.a")):
                p.uniform_(0.2, 1.5)
            elif name.endswith("L_multiplier"):
                p.fill_(0.01)  # L = 5.12: queries past index 5 use their own index as the normaliser
            else:
                p.normal_(0, 0.3)


# ---------------------------------------------------------------- closed forms


def at(T: int, S: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions of T queries that are the last T of S consecutive keys."""
    return torch.arange(S - T, S), torch.arange(S)


def test_alibi_slopes_and_bias_closed_form():
    assert M.alibi_slopes(4) == [2 ** -2, 2 ** -4, 2 ** -6, 2 ** -8]
    assert M.alibi_slopes(8) == [2 ** -h for h in range(1, 9)]
    assert M.alibi_slopes(6) == [2 ** -2, 2 ** -4, 2 ** -6, 2 ** -8, 2 ** -1, 2 ** -3]  # the paper's rule for 6
    b = M.ALiBiBias(4, M.Config())(*at(2, 4))[0]  # queries at positions 2, 3 of 4 keys
    m = torch.tensor(M.alibi_slopes(4))[:, None]
    assert torch.equal(b[:, 0], -m * torch.tensor([2.0, 1, 0, 0]))
    assert torch.equal(b[:, 1], -m * torch.tensor([3.0, 2, 1, 0]))


def test_kerple_bias_closed_form_and_clamp():
    k = M.KerpleBias(2, M.Config())
    with torch.no_grad():
        k.p.copy_(torch.tensor([1.5, 0.5]))
        k.a.copy_(torch.tensor([0.25, -3.0]))  # a < 1e-2 is used as 1e-2
    b = k(*at(3, 3))[0]
    assert b.shape == (2, 3, 3)
    assert b[0, 2, 0].item() == pytest.approx(-1.5 * math.log(1 + 0.25 * 2), abs=1e-7)
    assert b[1, 2, 1].item() == pytest.approx(-0.5 * math.log(1 + 0.01 * 1), abs=1e-7)
    assert torch.equal(b.diagonal(dim1=1, dim2=2), torch.zeros(2, 3)) and b[0, 0, 2] == 0  # distance 0 / future
    torch.manual_seed(0)
    init = M.KerpleBias(64, M.Config())
    assert 0 <= init.p.min() and init.p.max() <= 2 and 0 <= init.a.min() and init.a.max() <= 1  # official init


def test_fire_bias_closed_form_and_threshold():
    f = M.FIREBias(3, M.Config(width=4, fire_c=0.5, fire_L=2.0))
    scramble(f, 1)
    with torch.no_grad():
        f.c.fill_(0.5)
        f.L_multiplier.fill_(1.0)  # L = 2: queries at indices >= 2 normalise by their own index
    T, S = 3, 5
    b = f(*at(T, S))[0]
    assert b.shape == (3, T, S)

    def entry(i: int, j: int) -> torch.Tensor:
        x = math.log(0.5 * max(i - j, 0) + 1) / (math.log(0.5 * max(2.0, i) + 1) + 1e-6)
        w1, b1, w2, b2 = f.mlp[0].weight[:, 0], f.mlp[0].bias, f.mlp[2].weight, f.mlp[2].bias
        return w2 @ torch.relu(w1 * x + b1) + b2  # (H,)

    for t in range(T):
        for j in range(S):
            assert torch.allclose(b[:, t, j], entry(S - T + t, j), atol=1e-6)
    assert torch.allclose(b[:, 2, 0], f.mlp(torch.ones(1)), atol=1e-6)  # distance i - 0 = i past L: psi ratio 1


def test_every_bias_equals_its_entry_by_entry_reference():
    for kind, cls in M.BIASES.items():
        m = cls(4, M.Config(width=8))
        scramble(m, 2)
        assert torch.allclose(m(*at(3, 7)), m.reference(*at(3, 7)), atol=1e-6), kind
        q, k = torch.tensor([[4, 5], [0, 1]]), torch.tensor([[0, 1, 2, 3, 4, 5], [3, 4, 5, 6, 0, 1]])  # batched
        assert torch.allclose(m(q, k), m.reference(q, k), atol=1e-6), kind


# ---------------------------------------------------------------- DAPE's promises


PLAIN = {"none": NaiveAttention, "alibi": M.NaiveALiBiAttention, "kerple": M.NaiveKerpleAttention,
         "fire": M.NaiveFIREAttention}


@pytest.mark.parametrize("bias", list(PLAIN))
def test_zeroed_output_kernel_equals_the_plain_biased_attention(bias):
    c = cfg(bias=bias)
    d = M.DAPEAttention(c, 0)
    scramble(d, 3)
    with torch.no_grad():
        d.conv2.weight.zero_()
        d.conv2.bias.zero_()
    plain = PLAIN[bias](c, 0)  # the explicit (non-SDPA) form, as DAPE computes its scores explicitly too
    plain.load_state_dict({k: v for k, v in d.state_dict().items() if not k.startswith("conv")})
    x = torch.randn(2, 9, 32)
    with torch.no_grad():
        assert (d(x, ctx(9)) - plain(x, ctx(9))).abs().max() < 1e-6


def test_kernel_1_and_3_agree_with_zero_side_taps_and_differ_once_perturbed():
    one, three = M.DAPEAttention(cfg(kernel=1), 0), M.DAPEAttention(cfg(kernel=3), 0)
    scramble(one, 4)
    state = one.state_dict()
    with torch.no_grad():
        for name in ("conv1", "conv2"):
            w = torch.zeros_like(getattr(three, name).weight)
            w[..., 1] = state[f"{name}.weight"][..., 0]  # the centre tap
            state[f"{name}.weight"] = w
    three.load_state_dict(state)
    x = torch.randn(2, 8, 32)
    with torch.no_grad():
        assert (one(x, ctx(8)) - three(x, ctx(8))).abs().max() < 1e-5  # outputs ~5: float rounding
        three.conv1.weight[..., 0].normal_(0, 0.3)  # a side tap
        assert (one(x, ctx(8)) - three(x, ctx(8))).abs().max() > 1e-3


@pytest.mark.parametrize("args", [dict(bias="kerple"), dict(bias="none"), dict(bias="fire", kernel=5)])
def test_future_tokens_do_not_change_earlier_logits_and_the_control_without_tril_leaks(args):
    m = Transformer(cfg(**args)).eval()
    scramble(m, 5)
    ids = torch.randint(0, 64, (2, 12))
    later = ids.clone()
    later[:, 7:] = torch.randint(0, 64, (2, 5))  # only tokens 7.. change
    with torch.no_grad():
        assert torch.equal(m(ids)[:, :7], m(later)[:, :7])  # exactly 0 difference
        for layer in m.layers:
            layer.attn.zero_future = False  # the control: no tril before the convolution
        leak = (m(ids)[:, :7] - m(later)[:, :7]).abs().max()
    assert leak > 1e-4  # the same test fails without the tril


def test_perturbing_only_the_last_key_leaves_earlier_rows_unchanged():
    a = M.DAPEAttention(cfg(kernel=3), 0)
    scramble(a, 6)
    T, D = 6, 8
    q, k, v = torch.randn(3, 1, 4, T, D).unbind(0)
    k2 = k.clone()
    k2[:, :, -1] += 5.0
    with torch.no_grad():
        diff = a.scores_to_output(q, k, v, None, True) - a.scores_to_output(q, k2, v, None, True)
        assert torch.equal(diff[:, :, :-1], torch.zeros_like(diff[:, :, :-1])) and diff[:, :, -1].abs().max() > 0
        a.zero_future = False
        leak = a.scores_to_output(q, k, v, None, True) - a.scores_to_output(q, k2, v, None, True)
    assert leak[:, :, :-1].abs().max() > 1e-4


# ---------------------------------------------------------------- fast == naive, cache, packing


FAST_NAIVE = [(M.ALiBiAttention, M.NaiveALiBiAttention, {}), (M.KerpleAttention, M.NaiveKerpleAttention, {}),
              (M.FIREAttention, M.NaiveFIREAttention, {})] + [(M.DAPEAttention, M.NaiveDAPEAttention, a)
                                                             for a in DAPE_ARGS]


@pytest.mark.parametrize("fast_cls,naive_cls,args", FAST_NAIVE)
@pytest.mark.parametrize("masking", ["causal", "packed", "cached"])
def test_fast_path_equals_the_naive_reference_in_outputs_and_gradients(fast_cls, naive_cls, args, masking):
    c = cfg(n_heads=4, **args)
    fast, naive = fast_cls(c, 0), naive_cls(c, 0)
    scramble(fast, 7)
    naive.load_state_dict(fast.state_dict())
    T, S = (3, 7) if masking == "cached" else (7, 7)
    q, k, v = (torch.randn(2, 4, n, 8, requires_grad=True) for n in (T, S, S))
    mask = None
    if masking == "packed":  # documents [0, 3) and [3, 7)
        doc = torch.tensor([0, 0, 0, 1, 1, 1, 1])
        mask = ((doc[:, None] == doc[None, :]) & torch.ones(7, 7, dtype=torch.bool).tril())[None, None]
    outs, grads = [], []
    for m in (fast, naive):
        for t in (q, k, v):
            t.grad = None
        m.zero_grad()
        y = m.scores_to_output(q, k, v, mask, True)
        y.square().sum().backward()
        outs.append(y.detach())
        grads.append([q.grad, k.grad, v.grad] + [p.grad for p in m.parameters() if p.grad is not None])
    assert (outs[0] - outs[1]).abs().max() < 1e-5
    learned = sum(1 for n, _ in fast.named_parameters() if n.startswith(("bias.", "conv")))  # scores-side params
    assert len(grads[0]) == len(grads[1]) == 3 + learned
    for a, b in zip(*grads):
        assert (a - b).abs().max() < 1e-4


@pytest.mark.parametrize("attn,args", [(s, {}) for s in BIAS_SLOTS] + [("dape", a) for a in DAPE_ARGS]
                         + [("dape", dict(bias="kerple", window=True))])
def test_cached_generation_equals_recomputation(attn, args):
    window = args.pop("window", False)
    c = cfg(attn, **args)
    if window:  # a sliding-window layer (4 keys) under a full one, grouped KV heads
        c = TransformerConfig(**{**to_dict(c), "layer_pattern": "SF", "window": 4, "n_kv_heads": 2})
    torch.manual_seed(8)
    m = Transformer(c).eval()
    ids = torch.randint(0, 64, (2, 14))
    with torch.no_grad():
        full = m(ids)
        cache = m.new_cache(batch=2, max_len=48)
        steps = [m(ids[:, :5], cache=cache)] + [m(ids[:, t:t + 1], cache=cache) for t in range(5, 11)]
        steps.append(m(ids[:, 11:], cache=cache))  # a chunk of 3 after the cache
    assert (torch.cat(steps, 1) - full).abs().max() < 1e-5


@pytest.mark.parametrize("attn,args", [("kerple", {}), ("alibi", {}), ("dape", dict(bias="kerple")),
                                       ("dape", dict(bias="fire"))])
def test_packed_documents_equal_separate_runs(attn, args):
    torch.manual_seed(9)
    m = Transformer(cfg(attn, **args)).eval()
    a, b = torch.randint(0, 64, (1, 5)), torch.randint(0, 64, (1, 6))
    doc = torch.tensor([0] * 5 + [1] * 6)
    mask = (doc[:, None] == doc[None, :]) & torch.ones(11, 11, dtype=torch.bool).tril()
    with torch.no_grad():
        packed = m(torch.cat([a, b], 1), mask=mask)
        assert (packed[:, :5] - m(a)).abs().max() < 1e-5
        assert (packed[:, 5:] - m(b)).abs().max() < 1e-5


# ---------------------------------------------------------------- config errors, training, save / load


@pytest.mark.parametrize("bad,match", [(dict(kernel=2), "kernel 2"), (dict(kernel=0), "kernel 0"),
                                       (dict(kernel=-3), "kernel -3"), (dict(bias="rope"), "'rope'"),
                                       (dict(width=0), "width 0")])
def test_bad_options_are_clear_errors(bad, match):
    with pytest.raises(ValueError, match=match):
        M.Config(**bad)
    with pytest.raises(ValueError, match=match):
        Transformer(cfg(**bad))


def test_tiny_dape_model_trains_and_saves_and_loads(tmp_path):
    c = cfg(bias="kerple", kernel=3, width=8)
    torch.manual_seed(10)
    model = Transformer(c)
    before = model.layers[0].attn.conv1.weight.detach().clone()
    data = TokenWindows(torch.randint(0, 64, (2000,)), 4, 16)
    tcfg = TrainConfig(steps=3, lr=1e-3, warmup_steps=1, log_every=1, progress=False, ckpt_minutes=0)
    history = Trainer(model, OBJECTIVES.get("causal_lm")(), data, tcfg).fit()
    assert len(history) == 3 and all(math.isfinite(r["loss"]) for r in history)
    assert not torch.equal(before, model.layers[0].attn.conv1.weight)  # the conv is trained
    save_model(tmp_path / "m", model, to_dict(c))
    loaded, _, _ = lmlab.load(tmp_path / "m")
    ids = torch.randint(0, 64, (2, 10))
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(ids), loaded(ids))
    assert isinstance(loaded.layers[1].attn, M.DAPEAttention) and loaded.layers[1].attn.opts.width == 8


# ---------------------------------------------------------------- positions, not indices


@pytest.mark.parametrize("attn,args", [("fire", {}), ("dape", dict(bias="fire")), ("alibi", {}),
                                       ("dape", dict(bias="kerple"))])
def test_sliding_window_cache_and_restarting_positions_use_absolute_positions(attn, args):
    """FIRE normalises by the query's absolute position: a window slot's cache (which returns only its last keys)
    and a packed document (positions restart) must give it the positions the sequence stands for."""
    from lmlab.core.config import to_dict

    c = TransformerConfig(**{**to_dict(cfg(attn, **args)), "layer_pattern": "SF", "window": 4, "n_kv_heads": 2})
    torch.manual_seed(8)
    m = Transformer(c).eval()
    scramble(m, 3)  # FIRE's threshold L = 5.12: positions past 5 normalise by themselves
    ids = torch.randint(0, 64, (2, 14))
    with torch.no_grad():
        cache = m.new_cache(batch=2, max_len=48)
        steps = [m(ids[:, :5], cache=cache)] + [m(ids[:, t:t + 1], cache=cache) for t in range(5, 11)]
        steps.append(m(ids[:, 11:], cache=cache))
        assert torch.allclose(torch.cat(steps, 1), m(ids), atol=1e-5)
        a, b = ids[:1, :8], ids[1:, :9]
        doc = torch.tensor([0] * 8 + [1] * 9)
        mask = (doc[:, None] == doc[None, :]) & torch.ones(17, 17, dtype=torch.bool).tril()
        positions = torch.cat([torch.arange(8), torch.arange(9)])
        packed = m(torch.cat([a, b], 1), mask=mask, positions=positions)
        assert torch.allclose(packed[:, 8:], m(b), atol=1e-5) and torch.allclose(packed[:, :8], m(a), atol=1e-5)


@pytest.mark.parametrize("attn,args", [("alibi", {}), ("kerple", {}), ("fire", {}), ("dape", dict(kernel=1))])
def test_a_draft_tree_scored_through_bias_slots_equals_its_path(attn, args):
    from lmlab.core import masks

    torch.manual_seed(0)
    m = Transformer(cfg(attn, **args)).eval()
    scramble(m, 5)
    ids = torch.randint(0, 64, (1, 10))
    with torch.no_grad():
        cache = m.new_cache(1, 40)
        m(ids, cache=cache)
        toks, depth = torch.tensor([[7, 11, 12, 13, 14]]), torch.tensor([0, 1, 1, 1, 2])
        tree = m(toks, cache=cache, positions=depth + 10, mask=masks.tree([-1, 0, 0, 0, 3], prefix_len=10))[0]
        path = m(torch.cat([ids, torch.tensor([[7, 13, 14]])], 1))[0]
    assert torch.allclose(tree[[0, 3, 4]], path[-3:], atol=1e-5)


def test_dape_v2_refuses_a_draft_tree():
    from lmlab.core import masks

    m = Transformer(cfg("dape", kernel=3)).eval()
    cache = m.new_cache(1, 40)
    m(torch.randint(0, 64, (1, 10)), cache=cache)
    with pytest.raises(ValueError, match="one contiguous run of keys"):
        m(torch.tensor([[1, 2, 3]]), cache=cache, positions=torch.tensor([10, 11, 11]),
          mask=masks.tree([-1, 0, 0], prefix_len=10))


@pytest.mark.parametrize("attn,args", [("alibi", {}), ("fire", {}), ("dape", dict(bias="kerple")),
                                       ("dape", dict(bias="fire"))])
def test_a_query_that_may_see_no_key_gives_a_finite_output_and_bf16_weights_run(attn, args):
    torch.manual_seed(0)
    m = Transformer(cfg(attn, **args)).eval()
    mask = torch.ones(6, 6, dtype=torch.bool).tril()
    mask[0, 0] = False  # query 0 may see nothing
    with torch.no_grad():
        out = m(torch.randint(0, 64, (1, 6)), mask=mask)
        assert torch.isfinite(out).all()
        half = m.to(torch.bfloat16)(torch.randint(0, 64, (1, 6)))
    assert half.dtype == torch.bfloat16 and torch.isfinite(half).all()
