"""MoICE attention: per head and token, a router mixes N attentions that differ only in their RoPE base.

Paper: Mixture of In-Context Experts Enhance LLMs' Long Context Awareness (Lin et al., NeurIPS 2024,
arXiv:2406.19598); official code p1nksnow/MoICE (``modeling/modeling_llama.py``, ``training/train-balance.py``).

Idea. Each RoPE base b has distance ranges where the attention upper bound dips ("blind spots"). MoICE keeps
the frozen q, k, v of a layer and computes, for every base b_j of a set B = {b_1..b_N},

    o = sum_j s_j * Attn(RoPE_bj(q), RoPE_bj(K), V)          (the same V for every base)
    g = W2 (SiLU(W1 q~) * (W3 q~)) + c,   s = renorm(topK(softmax(g)))

with q~ the query rotated with the FIRST base b_1, W1, W3 (N x D), W2 (N x N): one router per layer, shared by
the heads, deciding per head and per token. The KV cache holds UN-rotated keys (as many bytes as the base
model's); every step rotates all cached keys once per base. The balance loss is Switch-style over the router
probabilities of all layers, flattened over (batch, tokens, heads), with the top-K mask:

    L = aux_coef * N * sum_j f_j * P_j,   f_j = (top-K selections of j) / (tokens),  P_j = mean softmax prob

which is what ``transformers``' ``load_balancing_loss_func`` computes on the concatenated router logits (it is
the constant aux_coef * N when K = N, the released setting).

Fast path: the N bases become N x H extra heads of ONE ``scaled_dot_product_attention`` call; the reference
(``naive``) loops over the bases with the core ``RoPE`` module and explicit softmax attention.

Deviations: W2 has a bias c (zero unless ``identity_init``) so the router can start as a one-hot on b_1
("identity init": W2 = 0, c = (identity_logit, 0, ..., 0), so the model starts from the base model's output;
the release starts from a random router). The release computes the N attentions with flash-attn; here SDPA.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lmlab.core import masks
from lmlab.core.blocks import RoPE, naive_attention
from lmlab.core.config import param

RELEASE_BASES = [10000.0, 17500.0, 18000.0, 19000.0, 20000.0, 22500.0, 25000.0]


@dataclass
class Config:
    bases: list[float] = param(RELEASE_BASES, "RoPE bases of the experts; bases[0] rotates the router input (use "
                               "the model's own base there)", source="official release for Llama-2-7B-chat "
                               "(p1nksnow/MoICE training/train.sh); other models need a search (issue #1)")
    top_k: int | None = param(None, "K bases kept per head and token; None = all N (the release: K = N = 7)",
                              source="official training/train.sh topk=7")
    aux_coef: float = param(0.3, "weight of the Switch balance loss over the routers of all layers",
                            source="official training/train-balance.py")
    identity_init: bool = param(False, "start each router as a one-hot on bases[0] (the base model's output)")
    identity_logit: float = param(16.0, "identity init: router bias of bases[0] (others 0); exp(-16) ~ 1e-7 "
                                  "leaves the other bases ~1e-7 weight each, while keeping gradients alive")
    seed: int = param(0, "seed of the router initialisation")

    def __post_init__(self) -> None:
        if not self.bases:
            raise ValueError("MoICE bases is empty; expected a list of N >= 1 positive RoPE bases")
        bad = [b for b in self.bases if not (isinstance(b, (int, float)) and math.isfinite(b) and b > 0)]
        if bad:
            raise ValueError(f"MoICE bases must be finite positive numbers, got {bad} in {self.bases}")
        self.bases = [float(b) for b in self.bases]
        if self.top_k is None:
            self.top_k = len(self.bases)
        if not 1 <= self.top_k <= len(self.bases):
            raise ValueError(f"MoICE top_k={self.top_k} must be in [1, {len(self.bases)}] (the number of bases)")
        if self.aux_coef < 0:
            raise ValueError(f"MoICE aux_coef must be >= 0, got {self.aux_coef}")


# ---------------------------------------------------------------- rotations with N bases


class BaseTables(nn.Module):
    """cos / sin tables of every base, (N, L, D), taken from core ``RoPE`` modules (the same numbers, bit for bit)."""

    def __init__(self, head_dim: int, max_seq_len: int, bases: list[float]):
        super().__init__()
        self.ropes = nn.ModuleList(RoPE(head_dim, max_seq_len, b) for b in bases)  # the naive path's rotations
        self.register_buffer("cos", torch.stack([r.cos for r in self.ropes]), persistent=False)  # (N, L, D)
        self.register_buffer("sin", torch.stack([r.sin_rot for r in self.ropes]), persistent=False)  # (N, L, D)

    def rotate(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """x (B, H, T, D) at positions (T,) or (B, T) -> (B, N, H, T, D), x rotated with every base."""
        cos, sin = self.cos[:, positions], self.sin[:, positions]  # (N, T, D) or (N, B, T, D)
        if cos.dtype != x.dtype:
            cos, sin = cos.to(x.dtype), sin.to(x.dtype)
        if cos.ndim == 4:
            cos, sin = cos.transpose(0, 1)[:, :, None], sin.transpose(0, 1)[:, :, None]  # (B, N, 1, T, D)
        else:
            cos, sin = cos[:, None], sin[:, None]  # (N, 1, T, D)
        x = x[:, None]  # (B, 1, H, T, D)
        return x * cos + x.roll(x.shape[-1] // 2, -1) * sin  # RoPE.forward's arithmetic


def key_positions(q_positions: torch.Tensor, S: int) -> torch.Tensor:
    """Positions of the S keys: the S - T cached ones at 0..S-T-1, the T new ones where the queries are.
    q_positions (T,) or (B, T) -> (S,) or (B, S)."""
    T = q_positions.shape[-1]
    old = torch.arange(S - T, device=q_positions.device).expand(*q_positions.shape[:-1], S - T)
    return torch.cat([old, q_positions], -1)


# ---------------------------------------------------------------- the router and its balance loss


class Router(nn.Module):
    """g = W2 (SiLU(W1 q) * (W3 q)) + c over the N bases; one per layer, applied per head and token."""

    def __init__(self, head_dim: int, cfg: Config, layer_idx: int = 0):
        super().__init__()
        N = len(cfg.bases)
        self.w1 = nn.Linear(head_dim, N, bias=False)
        self.w3 = nn.Linear(head_dim, N, bias=False)
        self.w2 = nn.Linear(N, N, bias=True)
        gen = torch.Generator().manual_seed(cfg.seed * 100003 + layer_idx)
        with torch.no_grad():
            for lin in (self.w1, self.w3, self.w2):  # nn.Linear's default scale, from a seeded generator
                bound = 1.0 / math.sqrt(lin.in_features)
                lin.weight.copy_(torch.rand(lin.weight.shape, generator=gen) * 2 * bound - bound)
            self.w2.bias.zero_()
            if cfg.identity_init:
                self.w2.weight.zero_()
                self.w2.bias[0] = cfg.identity_logit

    def forward(self, q: torch.Tensor) -> torch.Tensor:
        """q (B, H, T, D) -> logits (B, H, T, N)."""
        return self.w2(F.silu(self.w1(q)) * self.w3(q))


def route(logits: torch.Tensor, top_k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """logits (..., N) -> (weights s (..., N) top-K renormalised, probabilities p (..., N), top-K mask (..., N))."""
    p = torch.softmax(logits.float(), dim=-1)  # (..., N)
    N = p.shape[-1]
    if top_k >= N:
        return p.to(logits.dtype), p, torch.ones_like(p, dtype=torch.bool)
    top, idx = p.topk(top_k, dim=-1)  # (..., K)
    keep = torch.zeros_like(p, dtype=torch.bool).scatter(-1, idx, True)
    s = torch.zeros_like(p).scatter(-1, idx, top / top.sum(-1, keepdim=True))
    return s.to(logits.dtype), p, keep


class BalanceStats:
    """Running Switch balance loss over the layers of one or more passes: aux_coef * N * sum_j f_j P_j, with f and
    P averaged over every (layer, batch, token, head) seen (= the loss on the concatenated router logits)."""

    def __init__(self, aux_coef: float):
        self.coef, self.f, self.P, self.n = aux_coef, None, None, 0

    def add(self, p: torch.Tensor, keep: torch.Tensor) -> None:
        """p, keep (..., N): router probabilities and top-K mask of one layer."""
        f, P = keep.flatten(0, -2).float().mean(0), p.flatten(0, -2).mean(0)  # (N,), (N,)
        self.f = f if self.f is None else self.f + f
        self.P = P if self.P is None else self.P + P
        self.n += 1

    def loss(self) -> torch.Tensor | None:
        if self.n == 0:
            return None
        N = self.f.shape[0]
        return self.coef * N * ((self.f / self.n) * (self.P / self.n)).sum()


# ---------------------------------------------------------------- the mixed attention


def causal_mask(mask: torch.Tensor | None, causal: bool, T: int, S: int, device: torch.device):
    """(mask, is_causal) for SDPA: the given mask, or SDPA's causal flag, or an offset causal mask with a cache."""
    if mask is not None or not causal:
        return mask, False
    if T == S:
        return None, True
    return masks.causal(T, S, device=device), False


def mixed_attention(q_rot: torch.Tensor, k_rot: torch.Tensor, v: torch.Tensor, s: torch.Tensor,
                    mask: torch.Tensor | None, causal: bool) -> torch.Tensor:
    """Fast path: the N bases as N x H heads of one SDPA call.

    q_rot (B, N, H, T, D), k_rot (B, N, Hkv, S, D), v (B, Hkv, S, D), s (B, H, T, N) -> (B, H, T, D).
    """
    B, N, H, T, D = q_rot.shape
    S, rep = k_rot.shape[3], H // k_rot.shape[2]
    if rep > 1:
        k_rot, v = k_rot.repeat_interleave(rep, dim=2), v.repeat_interleave(rep, dim=1)  # (B, N, H, S, D)
    v = v[:, None].expand(B, N, H, S, D)
    mask, is_causal = causal_mask(mask, causal, T, S, q_rot.device)
    o = F.scaled_dot_product_attention(q_rot.reshape(B, N * H, T, D), k_rot.reshape(B, N * H, S, D),
                                       v.reshape(B, N * H, S, D), attn_mask=mask, is_causal=is_causal)
    return torch.einsum("bnhtd,bhtn->bhtd", o.view(B, N, H, T, D), s)  # (B, H, T, D)


def naive_mixed_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, s: torch.Tensor,
                          q_pos: torch.Tensor, k_pos: torch.Tensor, tables: BaseTables,
                          mask: torch.Tensor | None, causal: bool) -> torch.Tensor:
    """Reference: one explicit attention per base, with the core RoPE module.

    q (B, H, T, D), k / v (B, Hkv, S, D) un-rotated, s (B, H, T, N) -> (B, H, T, D).
    """
    H, T, S = q.shape[1], q.shape[2], k.shape[2]
    rep = H // k.shape[1]
    k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)  # (B, H, S, D)
    mask, is_causal = causal_mask(mask, causal, T, S, q.device)
    if is_causal:
        mask = masks.causal(T, S, device=q.device)
    if mask is not None and mask.dtype != torch.bool:  # an additive float mask (Hugging Face eager)
        mask = mask > torch.finfo(mask.dtype).min / 2
    out = torch.zeros_like(q)
    for j, rope in enumerate(tables.ropes):
        qj, _ = rope(q, q, q_pos)  # (B, H, T, D)
        kj, _ = rope(k, k, k_pos)  # (B, H, S, D)
        out = out + s[..., j, None] * naive_attention(qj, kj, v, mask)
    return out


def moice_attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_pos: torch.Tensor, tables: BaseTables,
                 router: Router, top_k: int, mask: torch.Tensor | None, causal: bool,
                 naive: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One MoICE attention over un-rotated q (B, H, T, D) and keys / values (B, Hkv, S, D) (cached + new).

    Returns (output (B, H, T, D), router probabilities p (B, H, T, N), top-K mask (B, H, T, N)).
    """
    k_pos = key_positions(q_pos, k.shape[2])  # (S,) or (B, S)
    q_rot = tables.rotate(q, q_pos)  # (B, N, H, T, D)
    s, p, keep = route(router(q_rot[:, 0]), top_k)  # router input: q rotated with the first base
    if naive:
        return naive_mixed_attention(q, k, v, s, q_pos, k_pos, tables, mask, causal), p, keep
    return mixed_attention(q_rot, tables.rotate(k, k_pos), v, s, mask, causal), p, keep
