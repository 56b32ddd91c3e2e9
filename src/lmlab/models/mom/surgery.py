"""Operations on a built MoM: initialisation from a vanilla Transformer, module pruning, analytic FLOPs."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from lmlab.core.transformer import Transformer, TransformerConfig

from .model import MoM
from .routing import MoMConfig


def layer_map(mom: MoMConfig) -> dict[int, tuple[str, int, int]]:
    """Vanilla layer index -> where it goes: ("bottom", i, 0), ("chunk", c, module m) or ("top", j, 0).

    Consecutive vanilla layers fill the model bottom-up; chunk c takes max(N_A, N_F) consecutive layers, module m
    of both pools from the m-th of them (a pool with fewer modules takes the first ones), as the official
    ``get_layer_map`` does (without anchor layers)."""
    out: dict[int, tuple[str, int, int]] = {}
    i = 0
    for b in range(mom.bottom_layers):
        out[i], i = ("bottom", b, 0), i + 1
    per_chunk = max(mom.n_attn, mom.n_ffn)
    for c in range(mom.chunks):
        for m in range(per_chunk):
            out[i], i = ("chunk", c, m), i + 1
    for j in range(mom.top_layers):
        out[i], i = ("top", j, 0), i + 1
    return out


def vanilla_layers(mom: MoMConfig) -> int:
    """How many layers the vanilla Transformer that ``init_from_vanilla`` reads must have."""
    return mom.bottom_layers + mom.chunks * max(mom.n_attn, mom.n_ffn) + mom.top_layers


@torch.no_grad()
def init_from_vanilla(model: MoM, vanilla: Transformer) -> MoM:
    """Copy a vanilla Transformer's weights into ``model`` (embeddings, final norm, head, layers by ``layer_map``);
    routers keep their own initialisation. The shapes of both configs must agree."""
    if vanilla.cfg.n_layers != vanilla_layers(model.mom):
        raise ValueError(f"init_from_vanilla: the vanilla model has {vanilla.cfg.n_layers} layers; this MoM needs "
                         f"{vanilla_layers(model.mom)} (bottom + chunks x max(n_attn, n_ffn) + top)")
    for name in ("dim", "n_heads", "n_kv_heads", "ffn_dim", "vocab_size", "norm", "mlp", "bias"):
        if getattr(vanilla.cfg, name) != getattr(model.cfg, name):
            raise ValueError(f"init_from_vanilla: {name} differs (vanilla {getattr(vanilla.cfg, name)!r}, MoM "
                             f"{getattr(model.cfg, name)!r})")
    model.tok_emb.load_state_dict(vanilla.tok_emb.state_dict())
    model.norm.load_state_dict(vanilla.norm.state_dict())
    model.lm_head.load_state_dict(vanilla.lm_head.state_dict())
    for i, (where, a, m) in layer_map(model.mom).items():
        block = vanilla.layers[i]
        if where != "chunk":
            (model.bottom if where == "bottom" else model.top)[a].load_state_dict(block.state_dict())
            continue
        chunk = model.chunks[a]
        if m < len(chunk.attns):
            chunk.attns[m].attn_norm.load_state_dict(block.attn_norm.state_dict())
            chunk.attns[m].attn.load_state_dict(block.attn.state_dict())
        if m < len(chunk.ffns):
            chunk.ffns[m].mlp_norm.load_state_dict(block.mlp_norm.state_dict())
            chunk.ffns[m].mlp.load_state_dict(block.mlp.state_dict())
    return model


@torch.no_grad()
def routing_mass(model: MoM, batches: Iterable[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    """Per chunk: {"attn": (N_A,), "ffn": (N_F,)} router probability summed over tokens, rounds and ``batches``
    (token ids (B, T) each)."""
    for chunk in model.chunks:
        chunk.stats = {}
    try:
        seen = 0
        for ids in batches:
            model(ids.to(model.device))
            seen += 1
        if not seen:
            raise ValueError("routing_mass needs at least one batch of token ids")
        return [dict(chunk.stats) for chunk in model.chunks]
    finally:
        for chunk in model.chunks:
            chunk.stats = None


@torch.no_grad()
def prune(model: MoM, kind: str, fraction: float, batches: Iterable[torch.Tensor],
          by: str = "routing_mass") -> list[list[int]]:
    """Remove round(fraction x live modules) ``kind`` ("attn" | "ffn") modules from routing in every chunk, those
    with the least routing mass on ``batches``; at least one module stays. Returns the removed indices per chunk.
    The modules keep their weights; their router choices are masked out (saved with the model)."""
    if kind not in ("attn", "ffn"):
        raise ValueError(f"prune: kind {kind!r}; expected 'attn' or 'ffn'")
    if by != "routing_mass":
        raise ValueError(f"prune: by {by!r}; only 'routing_mass' is implemented")
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"prune: fraction {fraction} must be in [0, 1)")
    if model.mom.router == "fixed":
        raise ValueError("prune: the fixed router cannot route around removed modules")
    masses = routing_mass(model, batches)
    removed = []
    for chunk, mass in zip(model.chunks, masses):
        alive = chunk.attn_alive if kind == "attn" else chunk.ffn_alive
        n_modules = model.mom.n_attn if kind == "attn" else model.mom.n_ffn
        live = [m for m in range(n_modules) if alive[m]]
        n_drop = min(round(fraction * len(live)), len(live) - 1)
        order = sorted(live, key=lambda m: float(mass[kind][m]))
        drop = sorted(order[:n_drop])
        alive[drop] = False
        removed.append(drop)
    return removed


def flops_per_token(cfg: TransformerConfig, mom: MoMConfig, context: int | None = None) -> dict[str, float]:
    """Analytic forward FLOPs per token (2 per multiply-add), every round taking top_k modules (no SKIP: an upper
    bound; SKIP saves nothing without dropping tokens). ``context``: keys attended (default max_seq_len)."""
    C, D, V, F = cfg.dim, cfg.head_dim, cfg.vocab_size, cfg.ffn_dim
    H, Hkv = cfg.n_heads, cfg.n_kv_heads
    S = context or cfg.max_seq_len
    attn = 2 * (C * H * D + 2 * C * Hkv * D + H * D * C) + 2 * 2 * S * H * D  # projections + scores and mix
    gated = cfg.mlp in ("swiglu", "reglu")
    ffn = 2 * (3 if gated else 2) * C * F
    R = mom.router_dim
    router = 0.0
    if mom.router != "fixed":
        per = 2 * (3 * C * R + 3 * R * R) if mom.router == "gru" else 2 * C * R
        router = sum(per + 2 * R * (n + int(mom.skip)) for n in (mom.n_attn, mom.n_ffn))
    vanilla = (mom.bottom_layers + mom.top_layers) * (attn + ffn)
    rounds = mom.chunks * mom.rounds * (mom.top_k * (attn + ffn) + router)
    head = 2 * C * V
    return {"vanilla_layers": float(vanilla), "mom_rounds": float(rounds), "head": float(head),
            "total": float(vanilla + rounds + head)}
