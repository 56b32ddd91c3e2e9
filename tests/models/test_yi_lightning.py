"""The Yi-Lightning preset: the core Transformer with SSSF hybrid attention, pairwise KV sharing and MoE MLPs."""

import torch

from lmlab.core.kv_cache import kv_bytes
from lmlab.core.transformer import TransformerConfig
from lmlab.models.moe import MoEMLP
from lmlab.models.yi_lightning import Config, build, transformer_config


def tiny(**kw) -> Config:
    return Config(**{**dict(vocab_size=64, dim=32, blocks=2, n_heads=4, max_seq_len=48, window=6), **kw})


def test_preset_is_the_reports_layout():
    cfg = transformer_config(tiny())
    assert (cfg.n_layers, cfg.layer_pattern, cfg.kv_share, cfg.mlp) == (8, "SSSF", 2, "moe")
    model = build(tiny())
    assert all(isinstance(b.mlp, MoEMLP) for b in model.layers)
    assert not hasattr(model.layers[7].attn, "k_proj")  # the second full layer reuses the first one's KV
    d = Config()  # the defaults: 64K context, W = 4096 -> the report's 82.8 %
    full = TransformerConfig(**{**transformer_config(d).__dict__, "layer_pattern": "", "kv_share": 1})
    assert 1 - kv_bytes(transformer_config(d), 65536) / kv_bytes(full, 65536) == 0.828125


def test_cache_equals_recomputation_and_balance_losses_reach_the_trainer():
    torch.manual_seed(0)
    model = build(tiny()).eval()
    ids = torch.randint(0, 64, (2, 20))
    full = model(ids)
    cache = model.new_cache(2, 20)
    parts = [model(ids[:, :9], cache=cache)] + [model(ids[:, t:t + 1], cache=cache) for t in range(9, 20)]
    assert torch.allclose(torch.cat(parts, 1), full, atol=1e-5)
    assert cache.nbytes == kv_bytes(model.cfg, 20, batch=2)
    model.train()
    model(ids)
    assert set(model.pop_aux()) == {"moe_expert", "moe_device", "moe_partition"}
