"""Models tagged "kv_cache": a cached computation equals recomputation without the cache.

Language models (``core.lm.LM``): token-by-token and chunked decoding with the cache give the logits of one full
forward pass. Diffusion models over images: the module's cached ``sample`` equals its cache-free reference
``sample_uncached``. A model tagged kv_cache that is neither fails, naming the fixture to add.
"""

from __future__ import annotations

import dataclasses
import importlib

import pytest
import torch
from conftest import names_with

import lmlab
from lmlab.core.lm import is_lm

MODELS = lmlab.registries()["models"]
TINY = {"vocab_size": 48, "dim": 32, "n_layers": 2, "n_heads": 2, "n_kv_heads": 1, "max_seq_len": 64,
        "block_size": 4}  # fields a config may have; only those it has are set


def tiny_model(name: str) -> torch.nn.Module:
    cfg_cls = MODELS.config(name)
    fields = {f.name for f in dataclasses.fields(cfg_cls)}
    torch.manual_seed(0)
    model = MODELS.get(name)(cfg_cls(**{k: v for k, v in TINY.items() if k in fields})).eval()
    with torch.no_grad():  # zero-initialised gates (adaLN-Zero) would hide every path
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


@pytest.mark.parametrize("name", names_with("models", "kv_cache"))
def test_cache_equals_recomputation(name):
    model, caps = tiny_model(name), MODELS.entry(name).caps
    if is_lm(model):
        ids = torch.randint(0, model.vocab_size, (2, 12), generator=torch.Generator().manual_seed(1))
        full = model(ids)  # (B, T, V)
        cache = model.new_cache(batch=2, max_len=12)
        parts = [model(ids[:, :5], cache=cache)] + [model(ids[:, t:t + 1], cache=cache) for t in range(5, 9)]
        parts.append(model(ids[:, 9:], cache=cache))  # a chunk of 3 after single tokens
        assert cache.length == 12
        assert torch.allclose(torch.cat(parts, dim=1), full, atol=1e-5)
        return
    if {"image", "diffusion"} <= set(caps):
        module = importlib.import_module(MODELS.entry(name).module)
        labels = torch.tensor([0, 3])
        noise = torch.randn(2, model.cfg.grid ** 2, model.cfg.channels * model.cfg.patch_size ** 2)
        kw = dict(steps=3, guidance=1.5, noise=noise, clip=False)
        cached, ref = module.sample(model, labels, **kw), module.sample_uncached(model, labels, **kw)
        assert ref.abs().max() > 0.1 and (cached - ref).abs().max() < 1e-4
        return
    pytest.fail(f"models:{name} is tagged kv_cache but is neither an LM nor an image diffusion model: add its "
                "cache == recomputation fixture to tests/contracts/test_models_contract.py")
