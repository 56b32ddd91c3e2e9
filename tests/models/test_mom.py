"""Mixture-of-Modules: the vanilla special case, fast path == reference, cache == recomputation, aux loss in the
Trainer, both routers train, SKIP, pruning, save/load, config errors, analytic FLOPs."""

from __future__ import annotations

import pytest
import torch

import lmlab
from lmlab.core.blocks import Context
from lmlab.core.checkpoint import save_model
from lmlab.core.config import to_dict
from lmlab.core.data import TokenWindows
from lmlab.core.lm import is_lm
from lmlab.core.train import TrainConfig, Trainer
from lmlab.core.transformer import Transformer, TransformerConfig
from lmlab.models.mom import (
    MoM,
    MoMConfig,
    build,
    flops_per_token,
    init_from_vanilla,
    layer_map,
    prune,
    route,
    routing_mass,
)
from lmlab.objectives.causal_lm import CausalLM

TOKENS = torch.arange(4000) % 23  # a learnable periodic stream
SHAPE = TransformerConfig(vocab_size=48, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=64)


def tiny(seed: int = 0, shape: TransformerConfig = SHAPE, **mom) -> MoM:
    """A random MoM with spread router logits (tau 1) so tokens take different modules."""
    torch.manual_seed(seed)
    model = MoM(shape, MoMConfig(**{"router_dim": 16, "rounds": 3, "n_attn": 3, "n_ffn": 3, "tau": 1.0, **mom}))
    with torch.no_grad():
        for chunk in model.chunks:
            for router in (chunk.attn_router, chunk.ffn_router):
                for p in router.parameters():
                    p.normal_(0.0, 1.0)
    return model.eval()


def ids(batch: int = 2, t: int = 12, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, SHAPE.vocab_size, (batch, t), generator=torch.Generator().manual_seed(seed))


def chosen(model: MoM, x: torch.Tensor) -> set[int]:
    """Attention modules the first chunk's router picks on x (measured with the routing-mass hook)."""
    mass = routing_mass(model, [x])[0]["attn"]
    return {m for m in range(len(mass)) if mass[m] > 0}


def test_identity_routing_with_vanilla_weights_is_the_vanilla_transformer():
    torch.manual_seed(0)
    vanilla = Transformer(TransformerConfig(**{**vars(SHAPE), "n_layers": 5})).eval()
    mom = MoM(SHAPE, MoMConfig(bottom_layers=1, chunks=1, n_attn=3, n_ffn=3, rounds=3, top_layers=1,
                               router="fixed", skip=False)).eval()
    x = ids()
    assert (mom(x) - vanilla(x)).abs().max() > 1e-2  # different random weights before the copy
    init_from_vanilla(mom, vanilla)
    assert (mom(x) - vanilla(x)).abs().max() < 1e-5
    assert layer_map(mom.mom)[2] == ("chunk", 0, 1)


def test_init_from_vanilla_refuses_a_wrong_depth():
    vanilla = Transformer(TransformerConfig(**{**vars(SHAPE), "n_layers": 3}))
    with pytest.raises(ValueError, match="has 3 layers; this MoM needs 5"):
        init_from_vanilla(tiny(), vanilla)


@pytest.mark.parametrize("router,top_k", [("gru", 1), ("mlp", 2)])
def test_gathered_path_equals_per_token_reference(router, top_k):
    model = tiny(router=router, top_k=top_k)
    x = ids()
    fast = model(x)
    model.set_reference(True)
    ref = model(x)
    assert len(chosen(model, x)) > 1  # tokens really take different modules
    assert (fast - ref).abs().max() < 1e-5


def test_cached_generation_equals_recomputation():
    model = tiny(chunks=2)
    x = ids(t=14)
    full = model(x)
    cache = model.new_cache(batch=2, max_len=14)
    assert len(cache.k) == 1 + 2 * 3 + 1  # one slot per (chunk, round) plus the vanilla layers
    parts = [model(x[:, :6], cache=cache)] + [model(x[:, t:t + 1], cache=cache) for t in range(6, 10)]
    parts.append(model(x[:, 10:], cache=cache))
    assert cache.length == 14
    assert (torch.cat(parts, dim=1) - full).abs().max() < 1e-5


def test_route_weights_and_skip_mask():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0], [0.0, 0.0, 5.0, 0.0]])
    alive = torch.tensor([True, False, True, True])
    r1 = route(logits, alive, tau=1.0, top_k=1)
    assert r1.sel[:, 0].tolist() == [0, 2] and float(r1.probs[:, 1].abs().max()) == 0.0
    assert torch.allclose(r1.weight[:, 0], r1.probs.max(-1).values)  # raw top-1 probability
    r2 = route(logits, alive, tau=1.0, top_k=2)
    assert torch.allclose(r2.weight.sum(-1), torch.ones(2))


def test_skip_gives_a_zero_update():
    model = tiny(bottom_layers=0, top_layers=0, chunks=1)
    chunk = model.chunks[0]
    with torch.no_grad():  # every router prefers SKIP by a wide margin
        for router in (chunk.attn_router, chunk.ffn_router):
            router.out.bias.zero_()
            router.out.bias[-1] = 1e4
    x = torch.randn(2, 7, SHAPE.dim)
    ctx = Context(torch.arange(7), model.pos)
    assert torch.equal(chunk(x, ctx), x)
    chunk.attn_router.out.bias.data[-1] = -1e4  # no SKIP: the block changes its input
    assert not torch.equal(chunk(x, ctx), x)


def test_aux_loss_reaches_the_trainer():
    model = tiny(router="gru")
    cfg = TrainConfig(steps=2, lr=1e-3, warmup_steps=1, progress=False, log_every=1)
    hist = Trainer(model, CausalLM(), TokenWindows(TOKENS, 4, 16), cfg).fit()
    assert hist[-1]["aux_mom_balance"] > 0 and model.pop_aux() == {}


@pytest.mark.parametrize("router", ["gru", "mlp"])
def test_both_routers_train(router):
    torch.manual_seed(0)
    model = MoM(SHAPE, MoMConfig(router=router, router_dim=16, rounds=2, n_attn=2, n_ffn=2))
    cfg = TrainConfig(steps=25, lr=1e-2, warmup_steps=2, progress=False, log_every=1)
    hist = Trainer(model, CausalLM(), TokenWindows(TOKENS, 4, 16), cfg).fit()
    assert hist[-1]["loss"] < hist[0]["loss"] - 0.5
    router_grad = [p for p in model.chunks[0].attn_router.parameters()]
    assert all(p.grad is not None for p in router_grad)  # the weight scaling carries gradient to the router


def test_prune_removes_modules_from_routing():
    model = tiny(n_attn=4, n_ffn=4)
    x = [ids(seed=s) for s in range(3)]
    before = routing_mass(model, x)[0]["attn"]
    removed = prune(model, "attn", 0.5, x)
    assert len(removed[0]) == 2 and set(removed[0]) == set(before.argsort()[:2].tolist())
    after = routing_mass(model, x)[0]["attn"]
    assert all(float(after[m]) == 0.0 for m in removed[0]) and float(after.sum()) > 0
    assert not chosen(model, torch.cat(x)) & set(removed[0])
    with pytest.raises(ValueError, match="fraction 1.0"):
        prune(model, "ffn", 1.0, x)
    with pytest.raises(ValueError, match="kind 'mlp'"):
        prune(model, "mlp", 0.5, x)


def test_save_load_round_trip_keeps_pruning(tmp_path):
    model = tiny()
    prune(model, "ffn", 0.34, [ids()])
    save_model(tmp_path / "m", model, to_dict(model.cfg), mom=to_dict(model.mom))
    loaded, _, meta = lmlab.load(tmp_path / "m")
    assert isinstance(loaded, MoM) and meta["kind"] == "lmlab-mom"
    assert torch.equal(loaded.chunks[0].ffn_alive, model.chunks[0].ffn_alive)
    assert not bool(loaded.chunks[0].ffn_alive.all())
    assert torch.equal(loaded(ids()), model(ids()))


@pytest.mark.parametrize("kw,match", [
    ({"n_attn": 0}, "n_attn must be >= 1, got 0"),
    ({"router": "lstm"}, "router 'lstm'"),
    ({"tau": 0.0}, "tau must be > 0"),
    ({"top_k": 6, "n_attn": 4, "n_ffn": 4}, "top_k 6 exceeds"),
    ({"router": "fixed", "rounds": 5, "skip": False}, "rounds 5 <= n_attn"),
    ({"bottom_layers": -1}, "bottom_layers must be >= 0"),
])
def test_bad_config_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        MoMConfig(**kw)


def test_registry_build_and_lm_surface():
    model = build(MoMConfig(router_dim=8, rounds=2, n_attn=2, n_ffn=2), SHAPE)
    assert is_lm(model) and model.n_layers == 4 and model(ids()).shape == (2, 12, 48)


def test_flops_fixed_router_equals_a_vanilla_stack():
    mom = MoMConfig(bottom_layers=1, rounds=3, n_attn=3, n_ffn=3, top_layers=1, router="fixed", skip=False)
    one = flops_per_token(SHAPE, MoMConfig(bottom_layers=1, chunks=1, rounds=1, n_attn=1, n_ffn=1, top_layers=0,
                                           router="fixed", skip=False))
    assert flops_per_token(SHAPE, mom)["total"] == pytest.approx(one["head"] + 5 * one["vanilla_layers"])
    gru = flops_per_token(SHAPE, MoMConfig(bottom_layers=1, rounds=3, n_attn=3, n_ffn=3, top_layers=1))
    assert gru["total"] > flops_per_token(SHAPE, mom)["total"]  # the routers cost FLOPs


def test_train_lm_trains_saves_and_reruns_a_mom(tmp_path):
    from pathlib import Path

    from lmlab.recipes.text import DataConfig, TextJob, train_lm

    text = Path(__file__).resolve().parents[1] / "fixtures" / "text" / "genesis_1.txt"
    job = TextJob(arch="mom", model=TransformerConfig(dim=16, n_layers=1, n_heads=2, max_seq_len=32),
                  mom=MoMConfig(n_attn=2, n_ffn=2, rounds=2, router_dim=8),
                  train=TrainConfig(steps=4, lr=3e-3, warmup_steps=1, eval_batches=2, ckpt_every=2, progress=False,
                                    run_dir=str(tmp_path)),
                  data=DataConfig(source=str(text), tokenizer="byte", seq_len=16, batch_size=4, val_fraction=0.2))
    out = train_lm(job)
    model, tok, meta = lmlab.load(tmp_path)
    assert isinstance(model, MoM) and meta["mom"]["rounds"] == 2 and tok is not None
    assert model.num_params() == out["params"]
    again = train_lm(job)  # a finished run: evaluated and its lmlab-mom model folder saved again
    assert again["steps"] == 4 and isinstance(lmlab.load(tmp_path)[0], MoM)


def test_hybrid_attention_configs_are_refused():
    from lmlab.core.transformer import TransformerConfig

    hybrid = TransformerConfig(**{**SHAPE.__dict__, "n_layers": 4, "layer_pattern": "SF", "window": 4})
    with pytest.raises(ValueError, match="layer_pattern='SF'"):
        MoM(hybrid, MoMConfig(router_dim=8, rounds=2, n_attn=2, n_ffn=2))
