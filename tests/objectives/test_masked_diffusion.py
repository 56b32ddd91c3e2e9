"""MDM / MGDM objective: forward process, eq. 8 against a per-token reference, gradient through the token
weight, loss only on masked target positions, registry wiring, bad configs, and a tiny model that learns."""

import math

import pytest
import torch
import torch.nn.functional as F

from lmlab.core.transformer import Transformer, TransformerConfig
from lmlab.objectives import REGISTRY
from lmlab.objectives.masked_diffusion import (
    MDM,
    Config,
    MaskedDiffusion,
    MDMConfig,
    corrupt,
    diffusion_loss,
    token_weight,
)


class Logits(torch.nn.Module):
    """A 'model' whose logits are a free parameter (B, L, V): gradients land on every position separately."""

    def __init__(self, B, L, V, seed=0):
        super().__init__()
        self.z = torch.nn.Parameter(torch.randn(B, L, V, generator=torch.Generator().manual_seed(seed)))
        self.vocab_size = V  # the one attribute of the LM protocol the objective reads

    def forward(self, x):
        return self.z


def test_corrupt_masks_only_maskable_positions_at_rate_t_plus_1_over_T():
    B, L, T = 6000, 12, 5
    ids = torch.randint(0, 7, (B, L))
    maskable = torch.zeros(B, L, dtype=torch.bool)
    maskable[:, 4:] = True
    x, masked, t = corrupt(ids, maskable, T, mask_id=9, generator=torch.Generator().manual_seed(1))
    assert torch.equal(x[:, :4], ids[:, :4]) and not masked[:, :4].any()
    assert torch.equal(x[masked], torch.full_like(x[masked], 9)) and torch.equal(x[~masked], ids[~masked])
    assert set(t.tolist()) == set(range(T))
    for level in range(T):
        rows = masked[t == level][:, 4:].float()
        p = (level + 1) / T
        sigma = math.sqrt(p * (1 - p) / rows.numel()) + 1e-9
        assert abs(rows.mean().item() - p) < 5 * sigma + 1e-6


def reference_loss(logits, ids, masked, t, cfg):
    """Eq. 8 written token by token."""
    total, count = 0.0, 0
    for b in range(ids.shape[0]):
        w = {"linear": cfg.timesteps - t[b].item(), "elbo": cfg.timesteps / (t[b].item() + 1),
             "uniform": 1.0}[cfg.seq_weight]
        for n in range(ids.shape[1]):
            if masked[b, n]:
                u = F.cross_entropy(logits[b, n][None], ids[b, n][None]).item()
                v = cfg.alpha * (1 - math.exp(-u)) ** cfg.gamma if cfg.token_reweight else 1.0
                total += w * v * u
                count += 1
    return total / count


@pytest.mark.parametrize("cfg", [Config(), Config(gamma=2.0), MDMConfig(), Config(seq_weight="elbo"),
                                 Config(seq_weight="uniform", token_reweight=False)])
def test_loss_matches_the_per_token_reference(cfg):
    g = torch.Generator().manual_seed(3)
    B, L, V = 5, 9, 11
    logits = torch.randn(B, L, V, generator=g) * 2
    ids = torch.randint(0, V, (B, L), generator=g)
    masked = torch.rand(B, L, generator=g) < 0.5
    t = torch.randint(0, cfg.timesteps, (B,), generator=g)
    loss, u = diffusion_loss(logits, ids, masked, t, cfg)
    assert loss.item() == pytest.approx(reference_loss(logits, ids, masked, t, cfg), rel=1e-5)
    assert u.shape == (int(masked.sum()),)


def test_gradient_flows_through_the_token_weight():
    """d/dz of w v(u) u / M = w (v + u v'(u)) (softmax(z) - onehot) / M: the paper keeps the gradient of v."""
    cfg = Config(gamma=2.0)
    z = torch.randn(1, 1, 7, requires_grad=True)
    ids, masked, t = torch.tensor([[3]]), torch.tensor([[True]]), torch.tensor([4])
    loss, _ = diffusion_loss(z, ids, masked, t, cfg)
    loss.backward()
    u = F.cross_entropy(z.detach()[0], ids[0]).item()
    a, gm, w = cfg.alpha, cfg.gamma, cfg.timesteps - 4
    v = a * (1 - math.exp(-u)) ** gm
    dv = a * gm * (1 - math.exp(-u)) ** (gm - 1) * math.exp(-u)
    expected = w * (v + u * dv) * (torch.softmax(z.detach()[0, 0], -1) - F.one_hot(ids[0, 0], 7))
    assert torch.allclose(z.grad[0, 0], expected, atol=1e-6)
    z.grad = None
    loss_sg, _ = diffusion_loss(z, ids, masked, t, Config(gamma=2.0, detach_token_weight=True))
    loss_sg.backward()
    stopped = w * v * (torch.softmax(z.detach()[0, 0], -1) - F.one_hot(ids[0, 0], 7))
    assert torch.allclose(z.grad[0, 0], stopped, atol=1e-6)


def test_token_weight_is_increasing_and_bounded_by_alpha():
    u = torch.linspace(0, 20, 50)
    v = token_weight(u, 0.25, 1.0)
    assert v[0] == 0 and (v.diff() >= 0).all() and v.max() <= 0.25


def test_only_masked_target_positions_receive_gradient():
    B, L, V = 8, 10, 13
    model = Logits(B, L, V)
    ids = torch.randint(0, V - 1, (B, L))
    src = torch.zeros(B, L, dtype=torch.bool)
    src[:, :6] = True
    obj = MaskedDiffusion(Config(), generator=torch.Generator().manual_seed(0))
    obj(model, {"ids": ids, "src_mask": src}).loss.backward()
    g = obj.generator.manual_seed(0)
    _, masked, _ = corrupt(ids, ~src, 20, V - 1, g)  # the same draw as inside the objective
    has_grad = model.z.grad.abs().sum(-1) > 0  # (B, L)
    assert torch.equal(has_grad, masked) and not has_grad[:, :6].any()


def test_mask_id_defaults_to_the_last_vocabulary_id():
    V = 13
    seen = {}

    class Spy(Logits):
        def forward(self, x):
            seen["x"] = x
            return self.z

    ids = torch.zeros(4, 6, dtype=torch.long)
    MaskedDiffusion()(Spy(4, 6, V), {"ids": ids})
    assert set(seen["x"].unique().tolist()) <= {0, V - 1} and (seen["x"] == V - 1).any()


def test_registry_lines_build_mdm_and_mgdm_with_a_bidirectional_capability():
    mgdm, mdm = REGISTRY.get("mgdm")(), REGISTRY.get("mdm")()
    assert mgdm.cfg.token_reweight and not mdm.cfg.token_reweight
    assert REGISTRY.config("mdm") is MDMConfig and REGISTRY.config("mgdm") is Config
    assert "bidirectional" in REGISTRY.entry("mgdm").caps and "bidirectional" in REGISTRY.entry("mdm").caps
    assert isinstance(MDM(), MaskedDiffusion)


@pytest.mark.parametrize("bad, needle", [(dict(timesteps=0), "timesteps"),
                                         (dict(seq_weight="cubic"), "cubic"),
                                         (dict(alpha=0.0), "alpha"), (dict(gamma=-1.0), "gamma")])
def test_bad_configs_raise_naming_the_value(bad, needle):
    with pytest.raises(ValueError, match=needle):
        MaskedDiffusion(Config(**bad))


def test_a_tiny_bidirectional_model_learns_to_fill_targets():
    """Copy task: target = prompt. 60 steps of MGDM must cut the masked-token CE far below chance (ln 6)."""
    torch.manual_seed(0)
    V, P = 8, 5  # ids 0..5 symbols, 6 = <sep>, 7 = <mask>
    model = Transformer(TransformerConfig(vocab_size=V, dim=32, n_layers=2, n_heads=4, max_seq_len=16,
                                          mask="bidirectional"))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    obj = MaskedDiffusion(Config(), generator=torch.Generator().manual_seed(0))
    src = torch.zeros(64, 2 * P + 1, dtype=torch.bool)
    src[:, : P + 1] = True
    ces = []
    for step in range(60):
        p = torch.randint(0, 6, (64, P), generator=torch.Generator().manual_seed(step))
        ids = torch.cat([p, torch.full((64, 1), 6), p], dim=1)
        out = obj(model, {"ids": ids, "src_mask": src})
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        ces.append(out.metrics["ce"])
    assert sum(ces[-10:]) / 10 < 0.2 * math.log(6) and 0 < out.metrics["masked_frac"] <= 1
