"""MoICE's promises: one-hot on the model's own base == the base model (lmlab and Hugging Face Llama), pre-RoPE
cache with the base model's bytes and cached == recomputed, fast (N bases as heads) == naive per-base loop
(outputs and gradients), router-only training, identity init, the balance loss over all layers, router I/O,
base-set search, clear errors."""

import copy
import itertools
import math

import pytest
import torch
import transformers

from lmlab.core.blocks import Attention
from lmlab.core.data import TokenWindows
from lmlab.core.hf import HFCausalLM
from lmlab.core.kv_cache import kv_bytes
from lmlab.core.train import TrainConfig, Trainer, frozen_checksum
from lmlab.core.transformer import Transformer, TransformerConfig
from lmlab.models.moice import Config, apply_moice, load_routers, save_routers, search_bases
from lmlab.models.moice.apply import router_state
from lmlab.objectives.causal_lm import CausalLM

V, BASE = 64, 500.0
BASES = [BASE, 2000.0, 60.0]


def tiny_lmlab(seed: int = 0, **kw) -> Transformer:
    torch.manual_seed(seed)
    cfg = TransformerConfig(vocab_size=V, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=64,
                            rope_base=BASE, init_std=0.3, **kw)  # peaked attention: bases matter
    return Transformer(cfg).eval()


def tiny_llama(seed: int = 0, impl: str = "sdpa"):
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                   rope_theta=BASE, rms_norm_eps=1e-5, initializer_range=0.3,
                                   attn_implementation=impl)
    return transformers.LlamaForCausalLM(cfg).eval()


def ids_batch(B: int = 2, T: int = 12, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(seed))


def logits(model, ids, **kw) -> torch.Tensor:
    out = model(ids, **kw) if not isinstance(model, transformers.PreTrainedModel) else model(input_ids=ids).logits
    return out


def routers(model):
    return [m for n, m in model.named_modules() if n.endswith(".router")]


def force_one_hot(model, j: int = 0) -> None:
    """Router logits = 1e4 on base j, 0 elsewhere: softmax is exactly one-hot in float32."""
    with torch.no_grad():
        for r in routers(model):
            r.w2.weight.zero_()
            r.w2.bias.zero_()
            r.w2.bias[j] = 1e4


def stepwise(model, ids: torch.Tensor, prefill: int) -> torch.Tensor:
    cache = model.new_cache(batch=ids.shape[0], max_len=ids.shape[1])
    outs = [model(ids[:, :prefill], cache=cache)]
    for t in range(prefill, ids.shape[1], 2):  # chunks of 2: offsets with T > 1 and the causal mask
        outs.append(model(ids[:, t:t + 2], cache=cache))
    return torch.cat(outs, dim=1), cache


# ---------------------------------------------------------------- one-hot on the own base == the base model


@pytest.mark.parametrize("top_k", [1, 3])
@torch.no_grad()
def test_one_hot_on_own_base_equals_lmlab_base_model(top_k):
    base = tiny_lmlab()
    model = apply_moice(copy.deepcopy(base), Config(bases=BASES, top_k=top_k))
    force_one_hot(model)
    ids = ids_batch()
    assert (model(ids) - base(ids)).abs().max() < 1e-5
    force_one_hot(model, 1)  # the check can fail: another base gives other logits
    assert (model(ids) - base(ids)).abs().max() > 1e-3


@pytest.mark.parametrize("wrap, impl", [(False, "sdpa"), (True, "sdpa"), (True, "eager")])
@torch.no_grad()
def test_one_hot_on_own_base_equals_hf_llama(wrap, impl):
    hf = tiny_llama(impl=impl)
    base = HFCausalLM(hf) if wrap else hf
    model = apply_moice(copy.deepcopy(base), Config(bases=BASES, top_k=2))
    assert type(model) is type(base)
    force_one_hot(model)
    ids = ids_batch()
    assert (logits(model, ids) - logits(base, ids)).abs().max() < 1e-5
    force_one_hot(model, 2)
    assert (logits(model, ids) - logits(base, ids)).abs().max() > 1e-3


# ---------------------------------------------------------------- pre-RoPE cache


@torch.no_grad()
def test_lmlab_cache_bytes_and_cached_equals_recomputed():
    base = tiny_lmlab()
    model = apply_moice(copy.deepcopy(base), Config(bases=BASES, top_k=2))
    ids = ids_batch(T=11)
    full = model(ids)
    got, cache = stepwise(model, ids, 5)
    assert (got - full).abs().max() < 1e-5
    assert cache.nbytes == base.new_cache(batch=2, max_len=11).nbytes == kv_bytes(base.cfg, 11, batch=2)
    # the cache keeps un-rotated keys: layer 0's keys are k_proj of the first normed embeddings
    x = base.layers[0].attn_norm(base.tok_emb(ids))
    k0 = base.layers[0].attn.k_proj(x).view(2, 11, 2, 8).transpose(1, 2)
    assert (cache.k[0][:, :, :11] - k0).abs().max() < 1e-6


def hf_cache_bytes(cache) -> int:
    return sum(t.numel() * t.element_size() for layer in cache.hf.layers for t in (layer.keys, layer.values))


@torch.no_grad()
def test_hf_cache_bytes_and_cached_equals_recomputed():
    base = HFCausalLM(tiny_llama())
    model = apply_moice(copy.deepcopy(base), Config(bases=BASES, top_k=2))
    ids = ids_batch(T=11)
    full = model(ids)
    got, cache = stepwise(model, ids, 5)
    assert (got - full).abs().max() < 1e-5
    _, base_cache = stepwise(base, ids, 5)
    assert hf_cache_bytes(cache) == hf_cache_bytes(base_cache) > 0


@pytest.mark.parametrize("kind", ["lmlab", "hf"])
@torch.no_grad()
def test_tree_positions_and_mask_match_recomputation(kind):
    base = tiny_lmlab() if kind == "lmlab" else HFCausalLM(tiny_llama())
    model = apply_moice(base, Config(bases=BASES, top_k=2))
    ids = ids_batch(B=1, T=8)
    cache = model.new_cache()
    model(ids[:, :5], cache=cache)
    branch = torch.tensor([[7, 9]])  # two siblings at position 5: each sees the prefix and itself
    mask = torch.cat([torch.ones(2, 5, dtype=torch.bool), torch.eye(2, dtype=torch.bool)], 1)  # (T, S)
    out = model(branch, cache=cache, positions=torch.tensor([5, 5]), mask=mask)
    for i in range(2):
        ref = model(torch.cat([ids[:, :5], branch[:, i:i + 1]], 1))[:, -1]
        assert (out[:, i] - ref).abs().max() < 1e-5


# ---------------------------------------------------------------- fast == naive


def set_naive(model, naive: bool) -> None:
    for m in model.modules():
        if hasattr(m, "router") and hasattr(m, "naive"):
            m.naive = naive


def out_and_grads(model, ids, naive: bool, **kw):
    set_naive(model, naive)
    model.zero_grad()
    y = logits(model, ids, **kw)
    (y.square().mean() + sum(model.pop_aux().values())).backward()
    return y.detach(), {n: p.grad.clone() for n, p in router_state(model).items()}


@pytest.mark.parametrize("kind", ["lmlab", "hf"])
@pytest.mark.parametrize("top_k", [2, 3])
def test_fast_path_equals_naive_loop(kind, top_k):
    base = tiny_lmlab() if kind == "lmlab" else HFCausalLM(tiny_llama())
    model = apply_moice(base, Config(bases=BASES, top_k=top_k))
    ids = ids_batch()
    y_fast, g_fast = out_and_grads(model, ids, False)
    y_naive, g_naive = out_and_grads(model, ids, True)
    assert (y_fast - y_naive).abs().max() < 1e-5
    assert g_fast.keys() == g_naive.keys() and len(g_fast) == 8
    for n in g_fast:
        assert g_fast[n].abs().max() > 0
        torch.testing.assert_close(g_fast[n], g_naive[n], rtol=1e-4, atol=1e-7)


@torch.no_grad()
def test_fast_equals_naive_with_cache_and_batched_positions():
    model = apply_moice(tiny_lmlab(), Config(bases=BASES, top_k=2))
    ids = ids_batch(T=9)
    outs = []
    for naive in (False, True):
        set_naive(model, naive)
        cache = model.new_cache(batch=2, max_len=9)
        model(ids[:, :6], cache=cache)
        outs.append(model(ids[:, 6:], cache=cache, positions=torch.tensor([[6, 7, 8], [6, 7, 8]])))
    assert (outs[0] - outs[1]).abs().max() < 1e-5


# ---------------------------------------------------------------- balance loss


def test_balance_loss_is_switch_loss_over_all_layers():
    model = apply_moice(tiny_lmlab(), Config(bases=BASES, top_k=2))
    seen = []
    hooks = [r.register_forward_hook(lambda m, i, o: seen.append(o.detach())) for r in routers(model)]
    model(ids_batch())
    for h in hooks:
        h.remove()
    loss = model.pop_aux()["moice_balance"]
    g = torch.cat([o.reshape(-1, 3) for o in seen])  # (layers * B * H * T, N), as the official concatenation
    p = g.softmax(-1)
    top = torch.nn.functional.one_hot(p.topk(2, -1).indices, 3).float()  # (tokens, K, N)
    expected = 0.3 * 3 * (top.mean(0) * p.mean(0)).sum()  # transformers' load_balancing_loss_func
    assert abs(float(loss.detach()) - float(expected)) < 1e-6
    dense = apply_moice(tiny_lmlab(), Config(bases=BASES))  # K = N (the release): the constant aux_coef * N
    dense(ids_batch())
    assert abs(float(dense.pop_aux()["moice_balance"].detach()) - 0.3 * 3) < 1e-6
    with torch.no_grad():
        dense(ids_batch())
    assert dense.pop_aux() == {}


# ---------------------------------------------------------------- router-only training and identity init


@pytest.mark.parametrize("kind", ["lmlab", "hf"])
def test_router_only_training_changes_only_routers(kind):
    model = tiny_lmlab() if kind == "lmlab" else HFCausalLM(tiny_llama())
    total_before = sum(p.numel() for p in model.parameters())
    apply_moice(model, Config(bases=BASES, top_k=2))
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    n_router = sum(p.numel() for p in trainable.values())
    assert trainable.keys() == router_state(model).keys() and len(trainable) == 8
    assert n_router == 2 * (2 * 8 * 3 + 3 * 3 + 3)  # per layer: W1, W3 (N x D), W2 (N x N) + bias (N)
    share = n_router / sum(p.numel() for p in model.parameters())
    assert share < 0.01, share  # 0.45% (lmlab) / 0.53% (HF) here; 59 k of 6.7 B = 0.0009% for Llama-2-7B, N = 7
    frozen = frozen_checksum(model)
    before = {n: p.detach().clone() for n, p in trainable.items()}
    cfg = TrainConfig(steps=3, lr=1e-2, warmup_steps=1, progress=False, log_every=1)
    hist = Trainer(model, CausalLM(), TokenWindows(torch.arange(2000) % 23, 2, 12), cfg).fit()
    assert "aux_moice_balance" in hist[-1]
    assert frozen_checksum(model) == frozen
    assert all(not torch.equal(before[n], p) for n, p in trainable.items())
    assert sum(p.numel() for p in model.parameters()) == total_before + n_router


@pytest.mark.parametrize("kind", ["lmlab", "hf"])
def test_identity_init_starts_from_base_model_and_learns(kind):
    base = tiny_lmlab() if kind == "lmlab" else HFCausalLM(tiny_llama())
    model = apply_moice(copy.deepcopy(base), Config(bases=BASES, identity_init=True))
    ids = ids_batch()
    with torch.no_grad():
        assert (model(ids) - base(ids)).abs().max() < 1e-5
    random = apply_moice(copy.deepcopy(base), Config(bases=BASES))
    with torch.no_grad():
        assert (random(ids) - base(ids)).abs().max() > 1e-4  # a random router does not start there
    model(ids).square().mean().backward()
    assert all(r.w2.weight.grad.abs().max() > 0 for r in routers(model))


# ---------------------------------------------------------------- router I/O and search


@pytest.mark.parametrize("kind", ["lmlab", "hf"])
@torch.no_grad()
def test_save_load_routers_roundtrip(tmp_path, kind):
    from safetensors.torch import load_file

    make = (lambda: tiny_lmlab()) if kind == "lmlab" else (lambda: HFCausalLM(tiny_llama()))
    model = apply_moice(make(), Config(bases=BASES, top_k=2, seed=3))
    for p in router_state(model).values():
        p.add_(torch.randn_like(p))
    save_routers(model, tmp_path)
    saved = load_file(str(tmp_path / "moice.safetensors"))
    assert saved.keys() == router_state(model).keys()
    loaded = load_routers(make(), tmp_path)
    ids = ids_batch()
    assert torch.equal(loaded(ids), model(ids))
    assert loaded._moice_config == model._moice_config
    with pytest.raises(ValueError, match="already applied"):
        load_routers(loaded, tmp_path)
    with pytest.raises(ValueError, match="not applied"):
        save_routers(make(), tmp_path / "x")


def probe_score(model, bases) -> float:
    with torch.no_grad():
        ids = ids_batch()
        return -float(torch.nn.functional.cross_entropy(model(ids)[:, :-1].reshape(-1, V), ids[:, 1:].reshape(-1)))


@pytest.mark.parametrize("strategy", ["greedy", "grid"])
def test_search_bases_returns_best_trial_and_leaves_model_alone(strategy):
    base = tiny_lmlab()
    cands = [60.0, 2000.0, 8000.0, BASE]
    res = search_bases(base, cands, probe_score, n_bases=3, first=BASE, strategy=strategy,
                       cfg=Config(bases=BASES, top_k=2))
    assert res.bases[0] == BASE and len(res.bases) == 3 and len(set(res.bases)) == 3
    assert res.score == max(s for _, s in res.trials) and (res.bases, res.score) in res.trials
    n_trials = 3 + 2 if strategy == "greedy" else math.comb(3, 2)
    assert len(res.trials) == n_trials
    if strategy == "grid":
        assert sorted(tuple(b[1:]) for b, _ in res.trials) == sorted(itertools.combinations([60.0, 2000.0, 8000.0],
                                                                                              2))
    assert not any("router" in n for n, _ in base.named_parameters())
    assert all(p.requires_grad for p in base.parameters())


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize("kw, match", [
    ({"bases": []}, "empty"),
    ({"bases": [10000.0, 0.0]}, "positive"),
    ({"bases": [10000.0, -5.0]}, "positive"),
    ({"bases": [float("nan")]}, "positive"),
    ({"bases": [1e4, 2e4], "top_k": 3}, "top_k=3"),
    ({"bases": [1e4, 2e4], "top_k": 0}, "top_k=0"),
    ({"aux_coef": -1.0}, "aux_coef"),
])
def test_bad_config_is_a_clear_error(kw, match):
    with pytest.raises(ValueError, match=match):
        Config(**kw)


class ScoreTransform(Attention):
    """An attention that changes the scores (as ALiBi-style plug-ins do): MoICE would drop that change."""

    def scores_to_output(self, q, k, v, mask, causal, ctx=None):
        return super().scores_to_output(q * 2, k, v, mask, causal, ctx)


def test_models_moice_cannot_serve_are_clear_errors():
    with pytest.raises(ValueError, match="RoPE model.*'nope'"):
        apply_moice(tiny_lmlab(pos="nope"), Config(bases=BASES))
    with pytest.raises(ValueError, match="full-attention"):
        apply_moice(tiny_lmlab(layer_pattern="SF", window=4), Config(bases=BASES))
    scored = tiny_lmlab()
    scored.layers[1].attn.__class__ = ScoreTransform
    with pytest.raises(ValueError, match="plain attention.*layer 1 has ScoreTransform"):
        apply_moice(scored, Config(bases=BASES))
    with pytest.raises(TypeError, match="Linear"):
        apply_moice(torch.nn.Linear(2, 2), Config(bases=BASES))
    model = apply_moice(tiny_lmlab(), Config(bases=BASES))
    with pytest.raises(ValueError, match="already applied"):
        apply_moice(model, Config(bases=BASES))
    with pytest.raises(ValueError, match="strategy"):
        search_bases(tiny_lmlab(), [1e3, 2e3], probe_score, n_bases=2, first=BASE, strategy="random")
    with pytest.raises(ValueError, match="n_bases=4"):
        search_bases(tiny_lmlab(), [1e3, 2e3], probe_score, n_bases=4, first=BASE)
    hf = tiny_llama()
    hf.config.rope_parameters = {"rope_type": "linear", "factor": 2.0, "rope_theta": BASE}
    with pytest.raises(ValueError, match="default RoPE"):
        apply_moice(hf, Config(bases=BASES))


def test_router_only_means_only_moices_routers_even_beside_moe_routers():
    model = tiny_lmlab(mlp="moe", slot_args={"mlp": {"experts": 4, "top_k": 2}})
    apply_moice(model, Config(bases=BASES, top_k=2))
    trainable = sorted(n for n, p in model.named_parameters() if p.requires_grad)
    assert trainable and all(".attn.router." in n for n in trainable), trainable
    assert not model.layers[0].mlp.router.weight.requires_grad  # the MoE's router stays frozen


def test_attention_with_extra_modules_is_refused():
    from transformers import Qwen3Config, Qwen3ForCausalLM

    cfg = Qwen3Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, head_dim=8, max_position_embeddings=64, rope_theta=BASE)
    model = Qwen3ForCausalLM(cfg)
    with pytest.raises(ValueError, match=r"has modules \['k_norm', 'q_norm'\] besides"):
        apply_moice(model, Config(bases=BASES))
