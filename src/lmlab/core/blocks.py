"""Slot implementations for the core Transformer: norms, positions, attention, MLPs, and the block context.

Slots. A ``TransformerConfig`` names one component per slot (``attn``, ``mlp``, ``pos``, ``norm``). A name is a
built-in short name from ``SLOTS`` ("swiglu", "sdpa", ...) or a ``"module:attr"`` path
("lmlab.models.moe:MoEMLP"), imported when the model is built, so a checkpoint whose config names a component
of any module loads without that module having been imported first. ``register(slot, name, cls_or_path)``
adds a short name (a path string stays lazy until used). Attention and MLP classes take
``(cfg: TransformerConfig, layer_idx)``; norms ``(dim, eps)``; positions ``(head_dim, max_seq_len, base)``.

Context. One ``Context`` per forward pass carries what every block shares: positions, the mask, the position
module, the cache, the K/V a layer shares with later layers (cross-layer KV sharing), router inputs (MoICE, MoM) and an
``aux`` dict where components add auxiliary losses (MoE balance). Blocks and components take ``(x, ctx)``, so a
new method adds a context field instead of a positional argument.

Hybrid attention. ``TransformerConfig.layer_pattern`` gives each layer a kind, F (full) or S (sliding window of
``window`` keys), and ``kv_share`` lets runs of consecutive full layers share one KV: the first layer of a run
computes K/V (and owns the cache slot), the others only project queries (cross-layer attention, CLA).
``kv_layout(cfg)`` is the one description of that plan; the attention, the cache and ``kv_bytes`` all read it.

Legend: B batch, T new tokens, S keys (cached + new), H query heads, Hkv key/value heads, D head dim, C model dim.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from . import masks

# ---------------------------------------------------------------- the context of one forward pass


@dataclass
class Context:
    """What the blocks of one forward pass share (built by the model, read by blocks and components)."""

    positions: torch.Tensor  # (T,) or (B, T) absolute positions of the new tokens
    pos: nn.Module  # the position slot (RoPE, NoPE): pos(q, k, positions) -> (q, k)
    mask: torch.Tensor | None = None  # bool (B or 1, 1, T, S), True = attend; None = the model's default
    causal: bool = True  # the model's default mask when ``mask`` is None
    cache: Any = None  # a core.lm.Cache or None
    router: dict[str, Any] = field(default_factory=dict)  # extra inputs for routed components (MoICE, MoM)
    aux: dict[str, torch.Tensor] = field(default_factory=dict)  # auxiliary losses added by components
    shared_kv: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)  # slot -> (k, v) to reuse

    def add_aux(self, name: str, value: torch.Tensor) -> None:
        """Add ``value`` to the auxiliary loss ``name`` (summed over layers); the Trainer adds it to the loss."""
        self.aux[name] = self.aux[name] + value if name in self.aux else value


# ---------------------------------------------------------------- the KV plan of a layer stack


@dataclass
class KVLayout:
    """Layer i attends with cache slot ``slots[i]``; slot s keeps ``windows[s]`` keys (None = all) and is written by
    layer ``producers[s]`` (later layers of the slot reuse its K/V)."""

    slots: list[int]
    windows: list[int | None]
    producers: list[int]

    def reuses(self, layer: int) -> bool:
        return self.producers[self.slots[layer]] != layer


def layer_kinds(cfg: Any) -> str:
    """'F' or 'S' per layer: ``cfg.layer_pattern`` repeated over ``cfg.n_layers`` (empty pattern = all full)."""
    pattern = getattr(cfg, "layer_pattern", "") or "F"
    bad = sorted(set(pattern) - {"F", "S"})
    if bad:
        raise ValueError(f"layer_pattern {pattern!r} has unknown letter(s) {bad}; expected F (full) or S (window)")
    if cfg.n_layers % len(pattern):
        raise ValueError(f"layer_pattern {pattern!r} (length {len(pattern)}) does not divide n_layers {cfg.n_layers}")
    return pattern * (cfg.n_layers // len(pattern))


def kv_layout(cfg: Any) -> KVLayout:
    """The cache plan: window layers own a slot each; full layers share one slot per run of ``cfg.kv_share``."""
    share = getattr(cfg, "kv_share", 1)
    if share < 1:
        raise ValueError(f"kv_share must be >= 1 (layers per shared KV), got {share}")
    slots, windows, producers, full_seen, run_slot = [], [], [], 0, 0
    for i, kind in enumerate(layer_kinds(cfg)):
        if kind == "F" and full_seen % share:  # a later full layer of a run reuses the run's slot
            slots.append(run_slot)
        else:
            run_slot = len(windows) if kind == "F" else run_slot
            slots.append(len(windows))
            windows.append(cfg.window if kind == "S" else None)
            producers.append(i)
        full_seen += kind == "F"
    return KVLayout(slots, windows, producers)


def query_key_positions(ctx: Context, T: int, S: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Absolute positions of the T queries (``ctx.positions``) and of the S keys they attend over: the S - T cached
    keys hold the positions just before the cache's length, the T new keys the queries' own. (T,), (S,) or batched."""
    q = ctx.positions  # (T,) or (B, T)
    end = ctx.cache.length if ctx.cache is not None else 0
    old = torch.arange(end - (S - T), end, device=q.device).expand(*q.shape[:-1], S - T)  # (S-T,) or (B, S-T)
    return q, torch.cat([old, q], -1)


# ---------------------------------------------------------------- norms


class RMSNorm(nn.Module):
    """x / rms(x) * w, computed in float32 (Llama's convention)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32:  # the same arithmetic without the dtype round trip (fewer ops per call)
            return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


class LayerNorm(nn.LayerNorm):
    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__(dim, eps=eps)


# ---------------------------------------------------------------- positions


class RoPE(nn.Module):
    """Rotary position embedding, half-split ("rotate_half") layout as in Llama / Hugging Face.

    ``base`` is configurable (MoICE and long-context methods vary it). cos/sin are tabulated up to max_seq_len.
    """

    def __init__(self, head_dim: int, max_seq_len: int, base: float = 10000.0):
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"RoPE needs an even head dim, got {head_dim}")
        inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))  # (D/2,)
        t = torch.arange(max_seq_len, dtype=torch.float32)
        freqs = torch.outer(t, inv_freq)  # (max_seq_len, D/2)
        emb = torch.cat([freqs, freqs], dim=-1)  # (max_seq_len, D)
        self.register_buffer("cos", emb.cos(), persistent=False)
        self.register_buffer("sin", emb.sin(), persistent=False)
        h = head_dim // 2  # rotate_half's sign folded into sin: x.roll(D/2) * sin_rot == rotate_half(x) * sin
        sin_rot = torch.cat([-emb[:, :h].sin(), emb[:, h:].sin()], dim=-1)  # (max_seq_len, D)
        self.register_buffer("sin_rot", sin_rot, persistent=False)
        self.max_seq_len = max_seq_len

    def forward(self, q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # q (B, H, T, D), k (B, Hkv, T, D), positions (B, T) or (T,)
        cos, sin = self.cos[positions], self.sin_rot[positions]  # (B, T, D) or (T, D)
        if cos.dtype != q.dtype:
            cos, sin = cos.to(q.dtype), sin.to(q.dtype)
        if cos.ndim == 3:
            cos, sin = cos[:, None], sin[:, None]  # (B, 1, T, D)
        # == q * cos + rotate_half(q) * self.sin bit for bit (negation is exact), in fewer ops
        h = q.shape[-1] // 2
        return q * cos + q.roll(h, -1) * sin, k * cos + k.roll(h, -1) * sin


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(x1, x2) -> (-x2, x1) on the last dim: the reference form of the rotation RoPE.forward computes."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


class NoPE(nn.Module):
    """No positional encoding (identity)."""

    def __init__(self, head_dim: int, max_seq_len: int, base: float = 10000.0):
        super().__init__()

    def forward(self, q, k, positions):
        return q, k


# ---------------------------------------------------------------- attention


def naive_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Reference attention: softmax(q k^T / sqrt(D) masked) v. q (B,H,T,D), k/v (B,H,S,D), mask bool (..,T,S)."""
    att = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])  # (B, H, T, S)
    if mask is not None:
        att = att.masked_fill(~mask, float("-inf"))
    att = torch.softmax(att.float(), dim=-1).to(q.dtype)
    return att @ v  # (B, H, T, D)


class QKVHook(nn.Module):
    """Identity on (q, k, v) after RoPE, before the KV cache: a named point compressors replace."""

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        return q, k, v


class Attention(nn.Module):
    """Multi-head attention with grouped-query heads (GQA), RoPE and an optional KV cache.

    ``mask`` is a boolean (B or 1, 1, T, S) tensor, True = attend. ``causal=True`` with mask None lets SDPA use
    its fused causal path when there is no cache offset. A sliding-window layer (``self.window``) adds the window
    to the mask; the window counts key positions, the query's own included. A layer that reuses another layer's
    KV (``kv_layout``) has no k/v projections and attends its queries over that layer's keys.
    """

    naive = False

    def __init__(self, cfg: Any, layer_idx: int):
        super().__init__()
        C, H, Hkv = cfg.dim, cfg.n_heads, cfg.n_kv_heads
        if C % H or H % Hkv:
            raise ValueError(f"dim {C} must divide into n_heads {H}, and n_heads into n_kv_heads {Hkv}")
        self.layer_idx, self.H, self.Hkv, self.D = layer_idx, H, Hkv, cfg.head_dim
        layout = kv_layout(cfg)
        self.slot, self.reuses_kv = layout.slots[layer_idx], layout.reuses(layer_idx)
        self.window = layout.windows[self.slot]
        self.shares_kv = layout.slots.count(self.slot) > 1 and not self.reuses_kv  # later layers read its K/V
        self.q_proj = nn.Linear(C, H * self.D, bias=cfg.bias)
        if not self.reuses_kv:
            self.k_proj = nn.Linear(C, Hkv * self.D, bias=cfg.bias)
            self.v_proj = nn.Linear(C, Hkv * self.D, bias=cfg.bias)
        self.o_proj = nn.Linear(H * self.D, C, bias=cfg.bias)
        self.qkv_hook = QKVHook()  # identity; compressors replace it (KV-cache quantization, head transforms)

    def scores_to_output(self, q, k, v, mask, causal: bool, ctx: Context | None = None) -> torch.Tensor:
        """(B,H,T,D) x (B,H,S,D) -> (B,H,T,D). Subclasses (score transforms) override this; ``ctx`` gives them the
        pass's positions (``query_key_positions``)."""
        if self.naive:
            if mask is None and causal:
                T, S = q.shape[2], k.shape[2]
                mask = masks.causal(T, S, device=q.device)
            return naive_attention(q, k, v, mask)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                              is_causal=causal and mask is None and q.shape[2] == k.shape[2])

    def shared_keys(self, q: torch.Tensor, ctx: Context) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Rotated queries and the (k, v) that this slot's first layer computed in this forward pass."""
        if self.slot not in ctx.shared_kv:
            raise ValueError(f"layer {self.layer_idx} reuses the KV of cache slot {self.slot}, whose first layer did "
                             "not run in this forward pass")
        k, v = ctx.shared_kv[self.slot]
        if (k.shape[1], k.shape[3]) != (self.Hkv, self.D):
            raise ValueError(f"layer {self.layer_idx} ({self.Hkv} kv heads x {self.D}) cannot share the KV of slot "
                             f"{self.slot} ({k.shape[1]} kv heads x {k.shape[3]}): head shapes differ")
        q, _ = ctx.pos(q, q[:, :0], ctx.positions)
        q, _, _ = self.qkv_hook(q, k, v)  # a hook that transforms q with k (rotations) must see these q too
        return q, k, v

    def window_mask(self, ctx: Context, T: int, S: int, mask: torch.Tensor | None) -> torch.Tensor:
        """``mask`` (or the causal mask) restricted to keys less than ``window`` positions before the query.

        Positions, not indices: a tree of draft nodes puts siblings at one position. The S - T cached keys hold the
        consecutive positions before the cache's length; the T new keys are at ``ctx.positions``.
        """
        q, k = query_key_positions(ctx, T, S)
        near = q[..., :, None] - k[..., None, :] < self.window  # (T, S) or (B, T, S)
        if q.ndim == 2:
            near = near[:, None]  # (B, 1, T, S)
        if mask is None:
            mask = masks.causal(T, S, device=q.device)
        return mask & near

    def forward(self, x: torch.Tensor, ctx: Context) -> torch.Tensor:
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.H, self.D).transpose(1, 2)  # (B, H, T, D)
        mask, causal, cache = ctx.mask, ctx.causal, ctx.cache
        if self.reuses_kv:
            q, k, v = self.shared_keys(q, ctx)  # (B, Hkv, S, D), already cached by the slot's first layer
        else:
            k = self.k_proj(x).view(B, T, self.Hkv, self.D).transpose(1, 2)  # (B, Hkv, T, D)
            v = self.v_proj(x).view(B, T, self.Hkv, self.D).transpose(1, 2)
            q, k = ctx.pos(q, k, ctx.positions)
            q, k, v = self.qkv_hook(q, k, v)  # after RoPE, before the cache
            if cache is not None:
                k, v = cache.write(self.slot, k, v)  # (B, Hkv, S, D)
            if self.shares_kv:
                ctx.shared_kv[self.slot] = (k, v)
        S = k.shape[2]
        if mask is not None and mask.shape[-1] > S:  # a window slot returned only the keys its window can reach
            mask = mask[..., -S:]
        if self.window is not None and S > self.window:
            mask = self.window_mask(ctx, T, S, mask)
        if self.Hkv != self.H:
            rep = self.H // self.Hkv
            k = k.repeat_interleave(rep, dim=1)  # (B, H, S, D)
            v = v.repeat_interleave(rep, dim=1)
        if causal and mask is None and cache is not None and T > 1 and k.shape[2] > T:
            mask = masks.causal(T, k.shape[2], device=x.device)
        y = self.scores_to_output(q, k, v, mask, causal, ctx)  # (B, H, T, D)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, self.H * self.D))


class NaiveAttention(Attention):
    """The same module computing attention explicitly (the reference for the SDPA path)."""

    naive = True


# ---------------------------------------------------------------- MLPs


class GatedMLP(nn.Module):
    """down(act(gate(x)) * up(x)); SwiGLU when act = SiLU (Llama)."""

    act = staticmethod(F.silu)

    def __init__(self, cfg: Any, layer_idx: int = 0):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.dim, cfg.ffn_dim, bias=cfg.bias)
        self.up_proj = nn.Linear(cfg.dim, cfg.ffn_dim, bias=cfg.bias)
        self.down_proj = nn.Linear(cfg.ffn_dim, cfg.dim, bias=cfg.bias)

    def forward(self, x: torch.Tensor, ctx: Context | None = None) -> torch.Tensor:
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))


class ReGLU(GatedMLP):
    act = staticmethod(F.relu)


class PlainMLP(nn.Module):
    """down(act(up(x))), non-gated."""

    act = staticmethod(F.relu)

    def __init__(self, cfg: Any, layer_idx: int = 0):
        super().__init__()
        self.up_proj = nn.Linear(cfg.dim, cfg.ffn_dim, bias=cfg.bias)
        self.down_proj = nn.Linear(cfg.ffn_dim, cfg.dim, bias=cfg.bias)

    def forward(self, x: torch.Tensor, ctx: Context | None = None) -> torch.Tensor:
        return self.down_proj(self.act(self.up_proj(x)))


class SiLUMLP(PlainMLP):
    act = staticmethod(F.silu)


class GELUMLP(PlainMLP):
    act = staticmethod(F.gelu)


class ReLU2MLP(PlainMLP):
    act = staticmethod(lambda x: F.relu(x).square())


# ---------------------------------------------------------------- slot tables

SLOTS: dict[str, dict[str, type | str]] = {
    "norm": {"rmsnorm": RMSNorm, "layernorm": LayerNorm},
    "pos": {"rope": RoPE, "nope": NoPE},
    "attn": {"sdpa": Attention, "naive": NaiveAttention, "alibi": "lmlab.models.dape:ALiBiAttention",
             "kerple": "lmlab.models.dape:KerpleAttention", "fire": "lmlab.models.dape:FIREAttention",
             "dape": "lmlab.models.dape:DAPEAttention"},
    "mlp": {"swiglu": GatedMLP, "reglu": ReGLU, "relu": PlainMLP, "silu": SiLUMLP, "gelu": GELUMLP,
            "relu2": ReLU2MLP, "moe": "lmlab.models.moe:MoEMLP"},
}


def register(slot: str, name: str, cls: type | str) -> None:
    """Add a short name to a slot table; ``cls`` may be a ``"module:attr"`` string, imported on first use."""
    if slot not in SLOTS:
        raise KeyError(f"unknown slot {slot!r}; slots: {', '.join(SLOTS)}")
    if isinstance(cls, str) and ":" not in cls:
        raise ValueError(f"slot component {cls!r} must be a class or a 'module:attr' path")
    SLOTS[slot][name] = cls


def slot_options(cfg: Any, slot: str, cls: type) -> Any:
    """The ``cls`` config a slot component reads from ``cfg.slot_args[slot]`` (bad keys name ``model.slot_args``)."""
    from .config import from_dict

    return from_dict(cls, dict(getattr(cfg, "slot_args", {}).get(slot, {})), prefix=f"model.slot_args.{slot}.")


def component(slot: str, name: str) -> type:
    """The class a slot name stands for: a short name from ``SLOTS`` or a ``"module:attr"`` path."""
    from .registry import load_target

    if slot not in SLOTS:
        raise KeyError(f"unknown slot {slot!r}; slots: {', '.join(SLOTS)}")
    target = SLOTS[slot].get(name, name if ":" in name else None)
    if target is None:
        raise ValueError(f"unknown {slot} component {name!r}; known: {', '.join(SLOTS[slot])}, "
                         "or a 'module:attr' path")
    if isinstance(target, str):
        try:
            return load_target(target)
        except (ImportError, AttributeError) as e:
            raise ValueError(f"{slot} component {name!r}: cannot import {target!r} ({e})") from None
    return target
