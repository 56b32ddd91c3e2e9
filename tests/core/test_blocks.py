"""Slots by path (lazy import) and the block context: aux losses, cache slots."""

from __future__ import annotations

import pytest
import torch

from lmlab.core.blocks import GatedMLP, component, register
from lmlab.core.transformer import Transformer, TransformerConfig


class BalancedMLP(GatedMLP):
    """A component that adds an auxiliary loss through the context (as an MoE MLP adds its balance loss)."""

    def forward(self, x, ctx=None):
        if ctx is not None:
            ctx.add_aux("balance", x.pow(2).mean())
        return super().forward(x, ctx)


def test_slot_by_module_path_is_imported_on_use(tiny_cfg):
    assert component("mlp", "lmlab.core.blocks:ReGLU").__name__ == "ReGLU"
    torch.manual_seed(0)
    a = Transformer(TransformerConfig(**{**vars(tiny_cfg), "mlp": "reglu"}))
    torch.manual_seed(0)
    b = Transformer(TransformerConfig(**{**vars(tiny_cfg), "mlp": "lmlab.core.blocks:ReGLU"}))
    ids = torch.randint(0, tiny_cfg.vocab_size, (2, 7))
    assert torch.equal(a(ids), b(ids))


def test_unknown_slot_names_say_what_is_known():
    with pytest.raises(ValueError, match="swiglu"):
        component("mlp", "nonesuch")
    with pytest.raises(ValueError, match="cannot import"):
        component("mlp", "lmlab.core.nonesuch:X")
    with pytest.raises(ValueError, match="module:attr"):
        register("mlp", "bad", "no_colon")


def test_aux_losses_are_summed_over_layers_and_popped_once(tiny_cfg):
    cfg = TransformerConfig(**{**vars(tiny_cfg), "mlp": f"{__name__}:BalancedMLP"})
    model = Transformer(cfg)
    ids = torch.randint(0, cfg.vocab_size, (2, 5))
    model(ids)
    aux = model.pop_aux()
    assert set(aux) == {"balance"} and aux["balance"].requires_grad
    # the same sum by hand: one term per layer, each the mean square of that layer's MLP input
    seen = []
    hooks = [blk.mlp.register_forward_pre_hook(lambda m, a: seen.append(a[0].pow(2).mean()))
             for blk in model.layers]
    model(ids)
    for h in hooks:
        h.remove()
    assert torch.allclose(model.pop_aux()["balance"], sum(seen))
    assert model.pop_aux() == {}
    with torch.no_grad():  # no graph, no accumulation (decoding never leaks memory)
        model(ids)
    assert model.pop_aux() == {}
