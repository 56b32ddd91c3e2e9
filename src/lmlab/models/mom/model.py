"""The MoM network: vanilla bottom layers -> MoM chunks (module pools assembled per token by routers over H rounds)
-> vanilla top layers. The core ``Transformer`` with another block stack (``build_layers``): embedding, norms,
head, the LM surface and the forward pass are the core's. Built from core pieces: ``Block`` for vanilla layers,
core ``Attention`` projections and its ``scores_to_output`` (SDPA, or ``naive_attention`` when the model's attn
slot is "naive"), the MLP slot, the norm and position slots, ``KVCache`` with one slot per attention application.

Legend: B batch, T new tokens, S cached + new keys, N = B*T tokens, C model width, H heads, Hkv kv heads, D head
dim, M modules in a pool, K top-k.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lmlab.core import masks
from lmlab.core.blocks import Context, component
from lmlab.core.checkpoint import CheckpointError, load_into, load_tensors
from lmlab.core.config import from_dict
from lmlab.core.kv_cache import KVCache
from lmlab.core.transformer import Block, Transformer, TransformerConfig

from .routing import MoMConfig, Routing, balance_loss, fixed_route, make_router, mix_gathered, mix_per_token, route


class AttnModule(nn.Module):
    """One attention module of a pool: its own norm and Q/K/V/O projections (a core Attention)."""

    def __init__(self, cfg: TransformerConfig, slot: int):
        super().__init__()
        self.attn_norm = component("norm", cfg.norm)(cfg.dim, cfg.norm_eps)
        self.attn = component("attn", cfg.attn)(cfg, slot)

    def qkv(self, x: torch.Tensor) -> torch.Tensor:
        """(n, C) -> (n, (H + 2 Hkv) D): this module's queries, keys and values of the normed rows."""
        h, a = self.attn_norm(x), self.attn
        return torch.cat([a.q_proj(h), a.k_proj(h), a.v_proj(h)], dim=-1)


class FFNModule(nn.Module):
    """One FFN module of a pool: its own norm and MLP (the model's MLP slot)."""

    def __init__(self, cfg: TransformerConfig, slot: int):
        super().__init__()
        self.mlp_norm = component("norm", cfg.norm)(cfg.dim, cfg.norm_eps)
        self.mlp = component("mlp", cfg.mlp)(cfg, slot)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.mlp_norm(x))


class MoMChunk(nn.Module):
    """Pools of N_A attention and N_F FFN modules, two routers, H assembly rounds (cache slots first_slot + r)."""

    def __init__(self, cfg: TransformerConfig, mom: MoMConfig, first_slot: int):
        super().__init__()
        self.cfg, self.mom, self.first_slot = cfg, mom, first_slot
        self.attns = nn.ModuleList(AttnModule(cfg, first_slot) for _ in range(mom.n_attn))
        self.ffns = nn.ModuleList(FFNModule(cfg, first_slot) for _ in range(mom.n_ffn))
        self.attn_router = make_router(mom, cfg.dim, mom.n_attn)
        self.ffn_router = make_router(mom, cfg.dim, mom.n_ffn)
        # live choices (modules + SKIP); pruning clears entries; saved with the weights
        self.register_buffer("attn_alive", torch.ones(mom.n_attn + int(mom.skip), dtype=torch.bool))
        self.register_buffer("ffn_alive", torch.ones(mom.n_ffn + int(mom.skip), dtype=torch.bool))
        self.reference = False  # True: per-token loop instead of gathered per-module calls (the reference)
        self.stats: dict[str, torch.Tensor] | None = None  # routing mass per module while measuring (pruning)

    def decide(self, kind: str, x: torch.Tensor, state: torch.Tensor | None, r: int,
               ctx: Context) -> tuple[Routing, torch.Tensor | None]:
        """Route the tokens x (N, C) in round r; adds the balance loss and, when measuring, the routing mass."""
        router, alive = (self.attn_router, self.attn_alive) if kind == "attn" else (self.ffn_router, self.ffn_alive)
        n_modules = self.mom.n_attn if kind == "attn" else self.mom.n_ffn
        if router is None:
            return fixed_route(x.shape[0], r, n_modules, x.device), None
        logits, state = router(x, state)  # (N, M+1)
        routing = route(logits, alive, self.mom.tau, self.mom.top_k)
        if self.mom.aux_coef and torch.is_grad_enabled():
            ctx.add_aux("mom_balance", self.mom.aux_coef / self.mom.rounds * balance_loss(routing.probs, routing.sel))
        if self.stats is not None:
            mass = routing.probs.detach().sum(0)[:n_modules]  # (M,)
            self.stats[kind] = self.stats.get(kind, 0) + mass
        return routing, state

    def mix(self, fn, x: torch.Tensor, routing: Routing, n_modules: int, out_dim: int) -> torch.Tensor:
        mixer = mix_per_token if self.reference else mix_gathered
        return mixer(fn, x, routing.sel, routing.weight, n_modules, out_dim)

    def attention(self, x: torch.Tensor, routing: Routing, slot: int, ctx: Context) -> torch.Tensor:
        """The attention update (B, T, C): per-token Q/K/V from the chosen modules, causal attention over the
        sequence (and the cache), the output projected by each chosen module and scaled by its router weight."""
        B, T, C = x.shape
        cfg, first = self.cfg, self.attns[0].attn
        H, Hkv, D = first.H, first.Hkv, first.D
        flat = x.reshape(B * T, C)
        ones = torch.ones_like(routing.weight)  # Q/K/V are summed unweighted over the chosen modules
        qkv = self.mix(lambda m, h: self.attns[m].qkv(h), flat, Routing(routing.probs, routing.sel, ones),
                       self.mom.n_attn, (H + 2 * Hkv) * D)  # (N, (H + 2 Hkv) D)
        q, k, v = qkv.view(B, T, H + 2 * Hkv, D).transpose(1, 2).split([H, Hkv, Hkv], dim=1)  # (B, *, T, D)
        q, k = ctx.pos(q, k, ctx.positions)
        mask, causal = ctx.mask, ctx.causal
        if ctx.cache is not None:
            k, v = ctx.cache.write(slot, k, v)  # (B, Hkv, S, D)
        if Hkv != H:
            k, v = k.repeat_interleave(H // Hkv, dim=1), v.repeat_interleave(H // Hkv, dim=1)  # (B, H, S, D)
        if causal and mask is None and ctx.cache is not None and T > 1 and k.shape[2] > T:
            mask = masks.causal(T, k.shape[2], device=x.device)
        y = first.scores_to_output(q, k, v, mask, causal, ctx)  # (B, H, T, D)
        y = y.transpose(1, 2).reshape(B * T, H * D)
        out = self.mix(lambda m, h: self.attns[m].attn.o_proj(h), y, routing, self.mom.n_attn, cfg.dim)
        return out.view(B, T, C)

    def forward(self, x: torch.Tensor, ctx: Context) -> torch.Tensor:
        B, T, C = x.shape
        state_a = state_f = None  # GRU router states (N, R), carried across the rounds
        for r in range(self.mom.rounds):
            routing, state_a = self.decide("attn", x.reshape(B * T, C), state_a, r, ctx)
            x = x + self.attention(x, routing, self.first_slot + r, ctx)
            flat = x.reshape(B * T, C)
            routing, state_f = self.decide("ffn", flat, state_f, r, ctx)
            x = x + self.mix(lambda m, h: self.ffns[m](h), flat, routing, self.mom.n_ffn, C).view(B, T, C)
        return x


class MoM(Transformer):
    """Mixture-of-Modules causal LM: the core Transformer (embedding, norm, head, LM surface, ``hidden``) whose block
    stack is bottom vanilla blocks, the MoM chunks and top vanilla blocks (``build_layers``)."""

    checkpoint_kind = "lmlab-mom"  # meta.json kind (lmlab.load)

    def __init__(self, cfg: TransformerConfig, mom: MoMConfig | None = None):
        if cfg.layer_pattern.strip("F") or cfg.kv_share != 1:
            raise ValueError(f"MoM assembles its own layers: TransformerConfig(layer_pattern={cfg.layer_pattern!r}, "
                             f"kv_share={cfg.kv_share}) is not supported; expected full attention and kv_share 1")
        self.mom = mom or MoMConfig()  # read by build_layers during Transformer.__init__
        super().__init__(cfg)

    def build_layers(self, cfg: TransformerConfig) -> nn.ModuleList:
        mom = self.mom
        cfg = dataclasses.replace(cfg, n_layers=mom.depth)  # one attention layer (cache slot) per application
        top0 = mom.bottom_layers + mom.chunks * mom.rounds
        return nn.ModuleList([*(Block(cfg, i) for i in range(mom.bottom_layers)),
                              *(MoMChunk(cfg, mom, mom.bottom_layers + c * mom.rounds) for c in range(mom.chunks)),
                              *(Block(cfg, top0 + i) for i in range(mom.top_layers))])

    @property
    def bottom(self) -> nn.ModuleList:
        return self.layers[:self.mom.bottom_layers]

    @property
    def chunks(self) -> nn.ModuleList:
        return self.layers[self.mom.bottom_layers:self.mom.bottom_layers + self.mom.chunks]

    @property
    def top(self) -> nn.ModuleList:
        return self.layers[self.mom.bottom_layers + self.mom.chunks:]

    @property
    def n_layers(self) -> int:
        """Attention applications per token (bottom + chunks x rounds + top): the depth of the computation graph."""
        return self.mom.depth

    def new_cache(self, batch: int = 1, max_len: int | None = None) -> KVCache:
        """One cache slot per attention application: vanilla layers and every (chunk, round)."""
        p = self.tok_emb.weight
        return KVCache(self.mom.depth, batch, self.cfg.n_kv_heads, self.cfg.head_dim,
                       max_len or self.cfg.max_seq_len, dtype=p.dtype, device=p.device)

    def set_reference(self, on: bool = True) -> None:
        """Mix modules with the per-token loop (the reference of the gathered fast path)."""
        for chunk in self.chunks:
            chunk.reference = on


def build(mom: MoMConfig | None = None, model: TransformerConfig | None = None) -> MoM:
    """The registry's ``build(cfg)``: a MoM of ``mom`` on the shapes of ``model`` (default TransformerConfig())."""
    return MoM(model or TransformerConfig(), mom or MoMConfig())


def from_checkpoint(folder: str | Path, meta: dict[str, Any]) -> MoM:
    """The MoM saved in ``folder`` (kind lmlab-mom; ``lmlab.load`` calls this): meta "config" and "mom"."""
    if not isinstance(meta.get("config"), dict) or not isinstance(meta.get("mom"), dict):
        raise CheckpointError(f"{folder}/meta.json lacks the model config ('config') or the MoM config ('mom')")
    model = MoM(from_dict(TransformerConfig, meta["config"]), from_dict(MoMConfig, meta["mom"], prefix="mom."))
    load_into(model, load_tensors(folder), str(folder))
    return model
