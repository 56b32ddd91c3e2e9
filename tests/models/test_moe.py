"""The fine-grained MoE MLP slot: dense equivalence, fast dispatch vs the naive reference, shared experts, the three
balance losses, their path into the Trainer, save / load, accounting and config errors."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import lmlab
from lmlab.core.blocks import Context, GatedMLP
from lmlab.core.checkpoint import save_model
from lmlab.core.config import ConfigError, to_dict
from lmlab.core.data import TokenWindows
from lmlab.core.train import TrainConfig, Trainer
from lmlab.core.transformer import Transformer, TransformerConfig
from lmlab.models import moe as M
from lmlab.objectives import REGISTRY as OBJECTIVES


def cfg(dim: int = 32, ffn: int = 64, **mlp) -> TransformerConfig:
    return TransformerConfig(vocab_size=64, dim=dim, n_layers=2, n_heads=4, ffn_dim=ffn, max_seq_len=32,
                             mlp="moe", slot_args={"mlp": mlp})


def ctx() -> Context:
    return Context(torch.arange(1), torch.nn.Identity())


def test_one_expert_top1_equals_the_dense_gated_mlp():
    c = cfg(experts=1, top_k=1, granularity=1, shared=0)
    torch.manual_seed(0)
    dense, moe = GatedMLP(c), M.MoEMLP(c)
    with torch.no_grad():
        moe.w_gate[0].copy_(dense.gate_proj.weight.T)
        moe.w_up[0].copy_(dense.up_proj.weight.T)
        moe.w_down[0].copy_(dense.down_proj.weight.T)
    x = torch.randn(3, 5, 32)
    assert (moe(x) - dense(x)).abs().max() < 1e-6
    assert (moe(x, ctx()) - dense(x)).abs().max() < 1e-6


@pytest.mark.parametrize("mlp", [dict(experts=4, top_k=1), dict(experts=4, top_k=2),
                                 dict(experts=4, top_k=2, granularity=2),
                                 dict(experts=4, top_k=1, granularity=2, shared=2),
                                 dict(experts=8, top_k=3, shared=1, normalize_topk=True)])
def test_sorted_dispatch_equals_the_naive_reference_in_outputs_and_gradients(mlp):
    c = cfg(**mlp)
    torch.manual_seed(1)
    fast = M.MoEMLP(c)
    with torch.no_grad():
        fast.router.weight.normal_(0, 1.0)  # a confident router: uneven loads, some experts empty
    naive = M.NaiveMoEMLP(c)
    naive.load_state_dict(fast.state_dict())
    x = torch.randn(2, 7, 32, requires_grad=True)
    outs, grads = [], []
    for m in (fast, naive):
        x.grad = None
        m.zero_grad()
        cx = ctx()
        y = m(x, cx)
        (y.square().sum() + sum(cx.aux.values())).backward()
        outs.append(y.detach())
        grads.append([x.grad.clone()] + [p.grad.clone() for p in m.parameters()])
        assert torch.equal(m.last_load, torch.bincount(m.route(x.detach().reshape(-1, 32))[2].flatten(),
                                                       minlength=c.slot_args["mlp"]["experts"] * m.moe.granularity))
    assert (outs[0] - outs[1]).abs().max() < 1e-5
    assert fast.last_load.sum() == 14 * fast.moe.k
    for a, b in zip(*grads):
        assert (a - b).abs().max() < 1e-5


def test_shared_experts_are_active_for_every_token_whatever_the_router_says():
    c = cfg(experts=4, top_k=1, granularity=2, shared=2)
    torch.manual_seed(2)
    m = M.MoEMLP(c)
    x = torch.randn(1, 6, 32)
    routed_only = M.MoEMLP(cfg(experts=4, top_k=1, granularity=2))
    routed_only.load_state_dict({k: v for k, v in m.state_dict().items() if not k.startswith("shared_")})
    # the output is exactly routed + a SwiGLU of width shared * F/m with the shared weights
    dense = GatedMLP(TransformerConfig(dim=32, n_heads=4, ffn_dim=2 * 32))
    dense.load_state_dict({"gate_proj.weight": m.shared_gate.weight, "up_proj.weight": m.shared_up.weight,
                           "down_proj.weight": m.shared_down.weight})
    assert (m(x) - routed_only(x) - dense(x)).abs().max() < 1e-6
    # routed experts switched off (zero down projections) and the router zeroed: the shared part remains
    with torch.no_grad():
        m.w_down.zero_()
        m.router.weight.zero_()
    y = m(x)
    assert (y - dense(x)).abs().max() < 1e-6 and y.abs().min(dim=-1).values.gt(0).all()


def test_balance_losses_are_alpha_under_uniform_routing_and_larger_when_collapsed():
    moe = M.Config(experts=8, top_k=2, devices=2, partitions=2, alpha_expert=1e-6, alpha_device=1e-4,
                   alpha_partition=1e-3)
    T = 64
    uniform = M.balance_losses(torch.full((T, 8), 1 / 8), torch.full((8,), T * 2 // 8), moe)
    for level, alpha in (("expert", 1e-6), ("device", 1e-4), ("partition", 1e-3)):
        assert uniform[f"moe_{level}"].item() == pytest.approx(alpha, rel=1e-6)
    probs = torch.zeros(T, 8)
    probs[:, :2] = 0.5  # every token on experts 0 and 1: device 0, partition 0
    collapsed = M.balance_losses(probs, torch.tensor([T, T, 0, 0, 0, 0, 0, 0]), moe)
    assert collapsed["moe_expert"].item() == pytest.approx(1e-6 * 8 / 2)  # N * 2 * (1/2 * 1/2)
    assert collapsed["moe_device"].item() == pytest.approx(1e-4 * 2)
    assert collapsed["moe_partition"].item() == pytest.approx(1e-3 * 4)


def test_device_and_partition_losses_depend_only_on_range_sums():
    moe = M.Config(experts=8, top_k=2, devices=2, partitions=2, alpha_expert=1.0, alpha_device=1.0,
                   alpha_partition=1.0)
    torch.manual_seed(3)
    probs = torch.softmax(torch.randn(40, 8) * 2, -1)
    counts = torch.bincount(probs.topk(2).indices.flatten(), minlength=8)
    perm = torch.tensor([1, 0, 3, 2, 5, 4, 7, 6])  # swaps experts inside each partition of 2
    a = M.balance_losses(probs, counts, moe)
    b = M.balance_losses(probs[:, perm], counts[perm], moe)
    assert b["moe_partition"].item() == pytest.approx(a["moe_partition"].item(), rel=1e-6)
    assert b["moe_device"].item() == pytest.approx(a["moe_device"].item(), rel=1e-6)
    # a permutation across partitions changes the partition loss; the expert loss is permutation invariant
    across = torch.tensor([0, 2, 1, 3, 4, 6, 5, 7])
    c = M.balance_losses(probs[:, across], counts[across], moe)
    assert c["moe_partition"].item() != pytest.approx(a["moe_partition"].item(), rel=1e-4)
    assert c["moe_expert"].item() == pytest.approx(a["moe_expert"].item(), rel=1e-6)


def test_zero_alpha_adds_no_loss_and_no_context_adds_nothing():
    m = M.MoEMLP(cfg(experts=4, top_k=2, devices=2, alpha_expert=0.0, alpha_partition=0.0))
    cx = ctx()
    m(torch.randn(1, 4, 32), cx)
    assert set(cx.aux) == {"moe_device"}
    m(torch.randn(1, 4, 32))  # ctx=None works


def test_partition_load_reads_the_last_forward_of_every_moe_layer():
    model = Transformer(cfg(experts=4, top_k=1, devices=2, partitions=2))
    with pytest.raises(ValueError, match="no MoE layer with a recorded load"):
        M.partition_load(model)
    model(torch.randint(0, 64, (2, 8)))
    loads = [b.mlp for b in model.layers]
    loads[0].last_load, loads[1].last_load = torch.tensor([4, 4, 4, 4]), torch.tensor([8, 0, 4, 4])
    out = M.partition_load(model)
    assert out["layers"] == 2
    assert out["partition_max_over_mean"] == pytest.approx((1.0 + 2.0) / 2)
    assert out["device_max_over_mean"] == pytest.approx(1.0)


def test_aux_losses_reach_the_trainer_and_the_model_saves_and_loads(tmp_path):
    c = cfg(experts=4, top_k=2, granularity=2, shared=1, devices=2, partitions=2)
    torch.manual_seed(4)
    model = Transformer(c)
    data = TokenWindows(torch.randint(0, 64, (2000,)), 4, 16)
    tcfg = TrainConfig(steps=3, lr=1e-3, warmup_steps=1, log_every=1, progress=False, ckpt_minutes=0)
    history = Trainer(model, OBJECTIVES.get("causal_lm")(), data, tcfg).fit()
    for level, alpha in (("expert", 1e-6), ("device", 1e-4), ("partition", 1e-3)):
        values = [rec[f"aux_moe_{level}"] for rec in history]
        assert all(0.9 * 2 * alpha <= v <= 2 * 2 * alpha for v in values), values  # 2 layers, each ~alpha
    save_model(tmp_path / "m", model, to_dict(c))
    loaded, _, meta = lmlab.load(tmp_path / "m")
    ids = torch.randint(0, 64, (2, 10))
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(ids), loaded(ids))
    assert isinstance(loaded.layers[0].mlp, M.MoEMLP) and loaded.layers[0].mlp.moe.granularity == 2


@pytest.mark.parametrize("extra", [dict(), dict(bias=True, tie_embeddings=False, norm="layernorm", n_kv_heads=2),
                                   dict(kv_share=2, bias=True)])  # layer 1 reuses layer 0's KV: no k, v of its own
@pytest.mark.parametrize("mlp", [dict(experts=4, top_k=2), dict(experts=4, top_k=1, granularity=4, shared=2)])
def test_accounting_equals_counted_parameters_and_flops(mlp, extra):
    c = TransformerConfig(vocab_size=64, dim=32, n_layers=2, n_heads=4, ffn_dim=64, mlp="moe",
                          slot_args={"mlp": mlp}, **extra)
    model = Transformer(c)
    layer = model.layers[0].mlp
    n_layer = sum(p.numel() for p in layer.parameters())
    per_expert = layer.w_gate[0].numel() + layer.w_up[0].numel() + layer.w_down[0].numel()
    assert M.layer_params(c) == {"total": n_layer, "active": n_layer - (layer.moe.n_experts - layer.moe.k) * per_expert}
    total = sum(p.numel() for p in model.parameters())
    assert M.moe_params(c) == {"total": total,
                               "active": total - c.n_layers * (layer.moe.n_experts - layer.moe.k) * per_expert}
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        layer(torch.randn(1, 1, 32))  # one token: router, k experts, shared experts
    assert fc.get_total_flops() == M.layer_flops(c)["active"]
    assert M.layer_flops(c)["total"] == 2 * M.layer_params(c)["total"]
    counted_dense = M.moe_flops(c)["active"] - c.n_layers * M.layer_flops(c)["active"]
    kv_layers = 1 if c.kv_share == 2 else c.n_layers
    assert counted_dense == 2 * (c.n_layers * 2 * 32 * 32 + kv_layers * 2 * 32 * 8 * c.n_kv_heads + 64 * 32)


def test_fine_and_coarse_experts_have_equal_active_parameters():
    coarse, fine = cfg(experts=4, top_k=1), cfg(experts=4, top_k=1, granularity=4)
    ac, af = M.layer_params(coarse)["active"], M.layer_params(fine)["active"]
    router_diff = 32 * (16 - 4)
    assert af - ac == router_diff and M.layer_params(coarse)["total"] + router_diff == M.layer_params(fine)["total"]


@pytest.mark.parametrize("mlp,match", [
    (dict(experts=4, top_k=5), "top_k 5 .* exceeds experts 4"),
    (dict(experts=4, top_k=2, granularity=2, devices=3), "devices 3 does not divide the 8 experts"),
    (dict(experts=4, devices=2, partitions=4), "partitions 4 does not divide the 2 experts of each device"),
    (dict(alpha_partition=-1e-3), "alpha_partition must be >= 0, got -0.001"),
    (dict(granularity=3), "granularity 3 does not divide ffn_dim 64"),
    (dict(shared=-1), "shared must be >= 0, got -1"),
    (dict(experts=0), "experts must be >= 1, got 0"),
])
def test_bad_config_errors_name_the_value(mlp, match):
    with pytest.raises(ValueError, match=match):
        Transformer(cfg(**mlp))


def test_unknown_option_names_its_slot_key():
    with pytest.raises(ConfigError, match="model.slot_args.mlp.expert"):
        Transformer(cfg(expert=4))


@pytest.mark.slow
def test_smoke_experiments_run_and_report_their_metrics():
    from lmlab.recipes.moe_balance import balance_experiment, granularity_experiment

    bal = balance_experiment("smoke")
    assert set(bal["arms"]) == {"st_only", "st_ep_pep"} and bal["partition_max_over_mean_st"] >= 1.0
    assert bal["passed"] == (bal["partition_load_reduction"] >= 0.2 and abs(bal["val_loss_rel_change"]) <= 0.01)
    grain = granularity_experiment("smoke")
    arms = grain["arms"]
    assert arms["coarse_m1"]["moe_active_params_per_layer"] + 32 * (32 - 8) == \
        arms["fine_m4"]["moe_active_params_per_layer"]
    custom = balance_experiment("smoke", balanced_alphas={"alpha_partition": 1e-2})
    assert custom["arms"]["st_ep_pep"]["mlp"]["alpha_partition"] == 1e-2
    assert custom["arms"]["st_ep_pep"]["mlp"]["alpha_device"] == 1e-4  # the other defaults stay
    with pytest.raises(ValueError, match="unknown size 'huge'"):
        balance_experiment("huge")


def test_bf16_autocast_forward_runs_and_stays_close_to_fp32():
    """The Trainer's bf16 precision: experts run in bf16 under autocast, the scatter target stays fp32."""
    c = cfg(experts=4, top_k=2, granularity=2, shared=1)
    torch.manual_seed(5)
    m, naive = M.MoEMLP(c), M.NaiveMoEMLP(c)
    naive.load_state_dict(m.state_dict())
    x = torch.randn(2, 6, 32)
    ref = m(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        outs = [m(x), naive(x)]
    for y in outs:
        assert (y.float() - ref).abs().max() < 0.05 * ref.abs().max()
