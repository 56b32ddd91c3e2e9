"""Applying MoICE to a model by module replacement: lmlab ``Transformer`` and Hugging Face Llama-style models.

``apply_moice(model, cfg)`` replaces every attention module by a MoICE attention that takes over the frozen
q/k/v/o projections (same parameter names, so base weights load as before) and adds one ``router`` per layer;
everything but the routers is frozen. The KV cache stays the model's own (``new_cache`` / ``HFCache`` /
``DynamicCache``) and holds un-rotated keys, so its bytes equal the base model's.

Balance loss. In an lmlab Transformer the layers add to the block context (``ctx.add_aux("moice_balance", ...)``,
each layer the increase of the running loss, so the sum over layers is the loss over all layers' router logits);
``Transformer.pop_aux`` hands it to the Trainer. A Hugging Face model has no context: its layers report to one
``BalanceCollector`` and ``apply_moice`` sets ``model.pop_aux`` to the collector's ``pop``, the method the Trainer
reads. Both record only when gradients are enabled (no growth during generation).

Limit: the cache keeps no positions, so cached keys are taken at positions 0..S-T-1 (the new ones where the
queries are), which holds for lmlab's caches and for ``HFCache`` (after ``gather`` too), not for a Hugging Face
batch whose ``position_ids`` skip left padding. Sliding-window layers and cross-layer KV sharing are refused.

``save_routers`` / ``load_routers`` write and read only the routers: ``moice.safetensors`` + ``moice_config.json``.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lmlab.core.blocks import Attention, Context, QKVHook, RoPE, layer_kinds
from lmlab.core.runtime import atomic_write

from .attention import BalanceStats, BaseTables, Config, Router, moice_attend

CONFIG_FILE = "moice_config.json"
WEIGHTS_FILE = "moice.safetensors"
KIND = "lmlab-moice-routers"
AUX_NAME = "moice_balance"

# ---------------------------------------------------------------- lmlab Transformer


class MoICEAttention(nn.Module):
    """An lmlab attention block with MoICE: the frozen projections of ``attn`` plus a router (pre-RoPE cache)."""

    def __init__(self, attn: Attention, tables: BaseTables, cfg: Config):
        super().__init__()
        self.layer_idx, self.slot, self.H, self.Hkv, self.D = attn.layer_idx, attn.slot, attn.H, attn.Hkv, attn.D
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj
        self.router = Router(self.D, cfg, attn.layer_idx).to(attn.q_proj.weight)
        self.tables, self.top_k, self.aux_coef = tables, cfg.top_k, cfg.aux_coef
        self.naive = attn.naive  # a NaiveAttention model gets the per-base reference loop

    def forward(self, x: torch.Tensor, ctx: Context) -> torch.Tensor:
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.H, self.D).transpose(1, 2)  # (B, H, T, D), not rotated
        k = self.k_proj(x).view(B, T, self.Hkv, self.D).transpose(1, 2)  # (B, Hkv, T, D), not rotated
        v = self.v_proj(x).view(B, T, self.Hkv, self.D).transpose(1, 2)
        if ctx.cache is not None:
            k, v = ctx.cache.write(self.slot, k, v)  # (B, Hkv, S, D): the cache keeps un-rotated keys
        mask = ctx.mask
        if mask is not None and mask.shape[-1] > k.shape[2]:
            raise ValueError(f"mask covers {mask.shape[-1]} keys but the layer sees {k.shape[2]}")
        y, p, keep = moice_attend(q, k, v, ctx.positions, self.tables, self.router, self.top_k, mask, ctx.causal,
                                  self.naive)
        if self.aux_coef > 0 and torch.is_grad_enabled():
            stats = ctx.router.setdefault(AUX_NAME, BalanceStats(self.aux_coef))
            before = stats.loss()
            stats.add(p, keep)
            after = stats.loss()
            ctx.add_aux(AUX_NAME, after if before is None else after - before)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, self.H * self.D))


def _check_lmlab(model: nn.Module) -> None:
    """MoICE needs RoPE, full attention without cross-layer KV sharing, and plain (sdpa / naive) attention."""
    cfg = model.cfg
    if type(model.pos) is not RoPE:
        raise ValueError(f"MoICE needs a RoPE model; this Transformer's position slot is {cfg.pos!r} "
                         f"({type(model.pos).__name__})")
    if "S" in layer_kinds(cfg) or cfg.kv_share != 1:
        raise ValueError(f"MoICE supports full-attention layers without KV sharing; got layer_pattern "
                         f"{cfg.layer_pattern!r}, kv_share {cfg.kv_share}")
    for i, block in enumerate(model.layers):
        attn = block.attn
        if not isinstance(attn, Attention) or type(attn).scores_to_output is not Attention.scores_to_output:
            raise ValueError(f"MoICE replaces plain attention (sdpa | naive); layer {i} has {type(attn).__name__}")
        if type(attn.qkv_hook) is not QKVHook:
            raise ValueError(f"layer {i} has a qkv hook ({type(attn.qkv_hook).__name__}); apply MoICE before "
                             "compressors")


def _apply_lmlab(model: nn.Module, cfg: Config) -> None:
    _check_lmlab(model)
    tables = BaseTables(model.cfg.head_dim, model.cfg.max_seq_len, cfg.bases).to(model.device)
    for block in model.layers:
        block.attn = MoICEAttention(block.attn, tables, cfg)


# ---------------------------------------------------------------- Hugging Face Llama-style models


class BalanceCollector:
    """Collects the routers' balance statistics of a Hugging Face model; ``pop`` returns the loss and clears."""

    def __init__(self, aux_coef: float):
        self.aux_coef = aux_coef
        self.stats = BalanceStats(aux_coef)

    def add(self, p: torch.Tensor, keep: torch.Tensor) -> None:
        if self.aux_coef > 0 and torch.is_grad_enabled():
            self.stats.add(p, keep)

    def pop(self) -> dict[str, torch.Tensor]:
        loss, self.stats = self.stats.loss(), BalanceStats(self.aux_coef)
        return {} if loss is None else {AUX_NAME: loss}


class MoICELlamaAttention(nn.Module):
    """Drop-in for ``LlamaAttention`` / ``MistralAttention``: same projections, MoICE mixing, pre-RoPE cache."""

    def __init__(self, attn: nn.Module, tables: BaseTables, cfg: Config, collector: BalanceCollector):
        super().__init__()
        config = attn.config
        self.config, self.layer_idx, self.is_causal = config, attn.layer_idx, True
        self.head_dim = attn.head_dim
        self.H, self.Hkv = config.num_attention_heads, config.num_key_value_heads
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj
        self.router = Router(self.head_dim, cfg, attn.layer_idx).to(attn.q_proj.weight)
        self.tables, self.top_k, self.naive = tables, cfg.top_k, False
        self.collector = [collector]  # a list: not a submodule

    def forward(self, hidden_states: torch.Tensor, position_embeddings: Any = None,
                attention_mask: torch.Tensor | None = None, cache: Any = None, past_key_values: Any = None,
                position_ids: torch.Tensor | None = None, **kwargs: Any) -> tuple[torch.Tensor, None]:
        B, T, _ = hidden_states.shape
        cache = cache if cache is not None else past_key_values
        q = self.q_proj(hidden_states).view(B, T, self.H, self.head_dim).transpose(1, 2)  # (B, H, T, D)
        k = self.k_proj(hidden_states).view(B, T, self.Hkv, self.head_dim).transpose(1, 2)  # (B, Hkv, T, D)
        v = self.v_proj(hidden_states).view(B, T, self.Hkv, self.head_dim).transpose(1, 2)
        start = cache.get_seq_length(self.layer_idx) if cache is not None else 0
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)  # (B, Hkv, S, D): un-rotated keys
        if position_ids is None:
            position_ids = torch.arange(start, start + T, device=q.device)  # (T,)
        mask = attention_mask
        if mask is not None:
            mask = mask[:, :, :, : k.shape[2]]  # (B, 1, T, S)
        y, p, keep = moice_attend(q, k, v, position_ids, self.tables, self.router, self.top_k, mask, True,
                                  self.naive)
        self.collector[0].add(p, keep)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, self.H * self.head_dim)), None


def _hf_rope_base(config: Any) -> float:
    from lmlab.core.hf import _rope_theta

    try:
        return _rope_theta(config)
    except ValueError as e:
        raise ValueError(f"MoICE needs a model with default RoPE: {e}") from None


def _apply_hf(model: nn.Module, cfg: Config) -> None:
    impl = getattr(model.config, "_attn_implementation", "sdpa")
    if impl not in ("sdpa", "eager", None):
        raise ValueError(f"MoICE runs on the sdpa or eager attention masks; the model uses {impl!r}")
    _hf_rope_base(model.config)
    config = model.config
    layers = [m for m in model.modules() if hasattr(m, "self_attn")]
    if not layers:
        raise ValueError(f"{type(model).__name__} has no decoder layers with a self_attn module")
    first = layers[0].self_attn
    tables = BaseTables(first.head_dim, int(config.max_position_embeddings), cfg.bases).to(first.q_proj.weight.device)
    collector = BalanceCollector(cfg.aux_coef)
    plain = {"q_proj", "k_proj", "v_proj", "o_proj", "rotary_emb"}
    for i, layer in enumerate(layers):
        extra = sorted(n for n, _ in layer.self_attn.named_children() if n not in plain)
        if extra:  # e.g. Qwen3 / OLMo-2 q_norm, k_norm: the MoICE attention would silently drop them
            raise ValueError(f"layer {i}'s attention ({type(layer.self_attn).__name__}) has modules {extra} besides "
                             f"the q/k/v/o projections; MoICE supports Llama-style attention only")
    for layer in layers:
        layer.self_attn = MoICELlamaAttention(layer.self_attn, tables, cfg, collector)
    model.pop_aux = collector.pop


# ---------------------------------------------------------------- the public entry points


def _target(model: nn.Module) -> tuple[str, nn.Module]:
    """("lmlab", Transformer) or ("hf", the transformers model), also through an ``HFCausalLM`` wrapper."""
    if hasattr(model, "layers") and hasattr(model, "cfg") and hasattr(model, "pos"):
        return "lmlab", model
    inner = getattr(model, "model", None)
    if inner is not None and hasattr(model, "cache_kw"):
        return "hf", inner
    if hasattr(model, "config") and getattr(model.config, "model_type", None) is not None:
        return "hf", model
    raise TypeError(f"apply_moice takes an lmlab Transformer, an HFCausalLM or a transformers model, got "
                    f"{type(model).__name__}")


def is_applied(model: nn.Module) -> bool:
    return any(isinstance(m, (MoICEAttention, MoICELlamaAttention)) for m in model.modules())


def apply_moice(model: nn.Module, cfg: Config | None = None) -> nn.Module:
    """Replace the attention modules of ``model`` by MoICE attentions (in place); freeze all but the routers."""
    cfg = cfg or Config()
    if is_applied(model):
        raise ValueError("MoICE is already applied to this model")
    kind, target = _target(model)
    if kind == "lmlab":
        _apply_lmlab(target, cfg)
    else:
        _apply_hf(target, cfg)
        if target is not model:
            model.pop_aux = target.pop_aux
    mine = {id(p) for p in router_state(model).values()}
    for p in model.parameters():
        p.requires_grad_(id(p) in mine)
    model._moice_config = cfg
    return model


def router_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The MoICE routers' parameters by their names in ``model`` (not other modules named router, e.g. MoE's)."""
    attns = [(n, m) for n, m in model.named_modules() if isinstance(m, (MoICEAttention, MoICELlamaAttention))]
    return {f"{n}.router.{k}": p for n, m in attns for k, p in m.router.named_parameters()}


def save_routers(model: nn.Module, folder: str | Path) -> Path:
    """Write only the routers (``moice.safetensors``) and the MoICE config (``moice_config.json``, written last)."""
    from safetensors.torch import save as to_bytes

    cfg = getattr(model, "_moice_config", None)
    if cfg is None:
        raise ValueError("save_routers: MoICE is not applied to this model (call apply_moice first)")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {n: p.detach().cpu().contiguous() for n, p in router_state(model).items()}
    atomic_write(folder / WEIGHTS_FILE, to_bytes(state, metadata={"format": "pt"}))
    atomic_write(folder / CONFIG_FILE, json.dumps({"kind": KIND, "config": dataclasses.asdict(cfg)}, indent=2))
    return folder


def load_routers(model: nn.Module, folder: str | Path) -> nn.Module:
    """Apply MoICE with the saved config to a base ``model`` and load the saved routers into it."""
    from safetensors.torch import load_file

    from lmlab.core.config import from_dict

    folder = Path(folder)
    if not (folder / CONFIG_FILE).is_file():
        raise FileNotFoundError(f"{folder} has no {CONFIG_FILE} (not a MoICE router folder, or incomplete)")
    meta = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
    if meta.get("kind") != KIND:
        raise ValueError(f"{folder / CONFIG_FILE} has kind {meta.get('kind')!r}, expected {KIND!r}")
    apply_moice(model, from_dict(Config, meta["config"]))
    saved, own = load_file(str(folder / WEIGHTS_FILE)), router_state(model)
    if set(saved) != set(own):
        raise ValueError(f"saved routers {sorted(set(saved) ^ set(own))[:4]} do not match this model's routers")
    with torch.no_grad():
        for n, p in own.items():
            if saved[n].shape != p.shape:
                raise ValueError(f"router {n}: saved shape {tuple(saved[n].shape)}, model {tuple(p.shape)}")
            p.copy_(saved[n])
    return model
