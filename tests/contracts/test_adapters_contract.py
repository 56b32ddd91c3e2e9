"""Adapter contracts for every method tagged "hf", on a random Llama wrapped in HFCausalLM.

Applying the method's default config leaves the logits identical while B = 0; with B non-zero one backward pass
gives gradients to the adapter's parameters and to nothing else; ``adapters.save`` / ``adapters.load`` give
identical logits; ``save_peft`` either round-trips through ``load_peft`` exactly or refuses naming the method.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import names_with, tiny_lm

from lmlab import adapters
from lmlab.adapters import REGISTRY as ADAPTERS
from lmlab.adapters.peft_io import load_peft, save_peft
from lmlab.core.hf import HFCausalLM, llama_from_transformer

pytest.importorskip("transformers")

HF_ADAPTERS = names_with("adapters", "hf")


def wrapped_llama() -> HFCausalLM:
    """The same random float64 Llama on every call (a fresh copy each time)."""
    return HFCausalLM(llama_from_transformer(tiny_lm(0)).eval())


def ids() -> torch.Tensor:
    return torch.randint(0, 48, (2, 13), generator=torch.Generator().manual_seed(1))


def adapted(name: str) -> adapters.AdaptedModel:
    return adapters.apply(wrapped_llama(), ADAPTERS.get(name)())


def randomise_b(model: adapters.AdaptedModel) -> None:
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith(".B"):
                p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.1)


@pytest.mark.parametrize("name", HF_ADAPTERS)
def test_b_zero_leaves_the_logits_identical(name):
    x = ids()
    with torch.no_grad():
        want = wrapped_llama()(x)
        model = adapted(name)
        assert sum(1 for _ in model.adapter_layers()) > 0, f"{name} adapted no layer of the Llama"
        assert torch.equal(model(x), want), f"{name}: applying the adapter changed the logits"


@pytest.mark.parametrize("name", HF_ADAPTERS)
def test_gradients_reach_the_adapter_only(name):
    model = adapted(name).train()
    randomise_b(model)
    x = ids()
    logits = model(x[:, :-1])  # (B, T, V)
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1))
    (loss + sum(model.pop_aux().values())).backward()
    seen = 0
    for n, p in model.named_parameters():
        if ".adapters.default." in n:
            assert p.requires_grad and p.grad is not None and p.grad.abs().sum() > 0, f"{name}: {n} has no gradient"
            seen += 1
        else:
            assert not p.requires_grad and p.grad is None, f"{name}: base parameter {n} got a gradient"
    assert seen > 0


@pytest.mark.parametrize("name", HF_ADAPTERS)
def test_save_load_round_trip_gives_identical_logits(name, tmp_path):
    model = adapted(name)
    randomise_b(model)
    x = ids()
    with torch.no_grad():
        want = model(x)
        adapters.save(model, tmp_path / "ad")
        again = adapters.load(tmp_path / "ad", wrapped_llama())
        assert torch.equal(again(x), want), f"{name}: logits changed after adapters.save / adapters.load"


@pytest.mark.parametrize("name", HF_ADAPTERS)
def test_peft_save_round_trips_or_refuses_naming_the_method(name, tmp_path):
    model = adapted(name)
    randomise_b(model)
    x = ids()
    if model.configs["default"].routed:  # routed experts have no PEFT LoRA form: refused, nothing written
        with pytest.raises(ValueError, match=f"is {name} .*routed experts"):
            save_peft(model, tmp_path / "peft")
        assert not (tmp_path / "peft").exists()
        return
    save_peft(model, tmp_path / "peft")
    with torch.no_grad():
        again = load_peft(tmp_path / "peft", wrapped_llama())
        torch.testing.assert_close(again(x), model(x), rtol=0, atol=1e-12)
