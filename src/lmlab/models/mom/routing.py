"""MoM routing: the config, the GRU and MLP routers, top-k selection with SKIP, the gathered module mix, the
Switch load-balancing loss.

Legend: N tokens (batch x time, flattened), C model width, R router width, M modules in a pool, K top-k.
A router scores M + 1 choices when SKIP is on (the last index is SKIP: a zero update).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lmlab.core.config import param

ROUTERS = ("gru", "mlp", "fixed")


@dataclass
class MoMConfig:
    """The module pool and its assembly. Widths, heads, norm, positions and vocabulary come from the model's
    ``TransformerConfig`` ([model]); its ``n_layers`` is not used (depth is bottom + chunks x rounds + top)."""

    bottom_layers: int = param(1, "vanilla layers below the MoM chunks", source="official mom/config.py "
                               "num_bottom_layers = 1")
    chunks: int = param(1, "MoM blocks (each owns its own module pools and routers)",
                        source="official default 4; 1 here (CPU scale, spec 4.6)")
    n_attn: int = param(4, "attention modules per chunk N_A", source="official pretrain.sh (4)")
    n_ffn: int = param(4, "FFN modules per chunk N_F", source="official pretrain.sh (4)")
    rounds: int = param(4, "assembly rounds H per chunk (depth_per_chunk)", source="official pretrain.sh: 8; "
                        "4 here (CPU scale)")
    top_layers: int = param(1, "vanilla layers above the MoM chunks", source="official default 2; 1 here")
    router: str = param("gru", "gru: GRU cell whose state is carried across the rounds of a chunk (the paper's); "
                        "mlp: stateless 2-layer MLP (official 'naive'); fixed: round r -> module r, no SKIP, "
                        "weight 1 (the vanilla Transformer as a special case)", choices=ROUTERS,
                        source="paper (GRU); official config default 'naive'")
    router_dim: int = param(256, "router hidden width R", source="official mom/config.py")
    tau: float = param(0.2, "softmax temperature of the router scores", source="official pretrain.sh")
    top_k: int = param(1, "modules per token and round (weights renormalised over the top-k when k > 1)",
                       source="official routing_top_k = 1")
    skip: bool = param(True, "SKIP choice (enable_pause): a token may take no module in a round",
                       source="official enable_pause = True")
    aux_coef: float = param(0.01, "coefficient of the Switch load-balancing loss", source="official train.py")

    def __post_init__(self) -> None:
        for name in ("chunks", "n_attn", "n_ffn", "rounds", "router_dim", "top_k"):
            if getattr(self, name) < 1:
                raise ValueError(f"MoMConfig.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("bottom_layers", "top_layers"):
            if getattr(self, name) < 0:
                raise ValueError(f"MoMConfig.{name} must be >= 0, got {getattr(self, name)}")
        if self.router not in ROUTERS:
            raise ValueError(f"MoMConfig.router {self.router!r} is not one of {', '.join(ROUTERS)}")
        if not self.tau > 0:
            raise ValueError(f"MoMConfig.tau must be > 0, got {self.tau}")
        if self.aux_coef < 0:
            raise ValueError(f"MoMConfig.aux_coef must be >= 0, got {self.aux_coef}")
        smallest = min(self.n_attn, self.n_ffn) + int(self.skip)
        if self.top_k > smallest:
            raise ValueError(f"MoMConfig.top_k {self.top_k} exceeds the choices of the smaller pool ({smallest})")
        if self.router == "fixed" and (self.rounds > min(self.n_attn, self.n_ffn) or self.skip):
            raise ValueError(f"MoMConfig.router 'fixed' maps round r to module r: needs rounds {self.rounds} <= "
                             f"n_attn {self.n_attn} and n_ffn {self.n_ffn}, and skip = false (got {self.skip})")

    @property
    def depth(self) -> int:
        """Attention applications per token: one KV-cache slot each."""
        return self.bottom_layers + self.chunks * self.rounds + self.top_layers


# ---------------------------------------------------------------- routers


class GRURouter(nn.Module):
    """GRU cell over the token's hidden state; the state carries the token's path across the rounds."""

    def __init__(self, dim: int, router_dim: int, choices: int):
        super().__init__()
        self.cell = nn.GRUCell(dim, router_dim)
        self.out = nn.Linear(router_dim, choices)

    def forward(self, x: torch.Tensor, state: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        # x (N, C), state (N, R) or None -> logits (N, M+1), new state (N, R)
        state = self.cell(x, state)
        return self.out(state), state


class MLPRouter(nn.Module):
    """Stateless Linear -> ReLU -> Linear (the official 'naive' TokenRouter)."""

    def __init__(self, dim: int, router_dim: int, choices: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, router_dim), nn.ReLU(), nn.Linear(router_dim, choices))

    def forward(self, x: torch.Tensor, state: torch.Tensor | None) -> tuple[torch.Tensor, None]:
        return self.net(x), None  # (N, M+1)


def make_router(cfg: MoMConfig, dim: int, n_modules: int) -> nn.Module | None:
    """The router of one pool (None for the fixed router, which has no parameters)."""
    choices = n_modules + int(cfg.skip)
    return {"gru": GRURouter, "mlp": MLPRouter}[cfg.router](dim, cfg.router_dim, choices) \
        if cfg.router != "fixed" else None


@dataclass
class Routing:
    """One round's decision for every token."""

    probs: torch.Tensor  # (N, M+1) or (N, M) router probabilities (pruned modules 0)
    sel: torch.Tensor  # (N, K) chosen indices; index M is SKIP
    weight: torch.Tensor  # (N, K) scale of each chosen module's output


def route(logits: torch.Tensor, alive: torch.Tensor, tau: float, top_k: int) -> Routing:
    """softmax(logits / tau) over live choices, top-k; weights renormalised over the top-k when k > 1.

    With k = 1 the weight is the raw top probability (Switch): a renormalised top-1 weight would be the constant 1
    and the router would get no gradient. ``alive`` (M+1,) bool masks pruned modules out (SKIP stays alive).
    """
    logits = logits.float().masked_fill(~alive, float("-inf"))  # (N, M+1)
    probs = torch.softmax(logits / tau, dim=-1)
    weight, sel = probs.topk(top_k, dim=-1)  # (N, K)
    if top_k > 1:
        weight = weight / weight.sum(-1, keepdim=True)
    return Routing(probs, sel, weight)


def fixed_route(n: int, r: int, n_modules: int, device: torch.device) -> Routing:
    """Round r -> module r with weight 1 for all n tokens (the depth-ordered vanilla Transformer)."""
    sel = torch.full((n, 1), r, dtype=torch.long, device=device)
    probs = F.one_hot(sel[:, 0], n_modules).float()
    return Routing(probs, sel, torch.ones(n, 1, device=device))


def balance_loss(probs: torch.Tensor, sel: torch.Tensor) -> torch.Tensor:
    """Switch load balancing n * sum_i f_i P_i (f_i: share of tokens whose top-1 is i, P_i: mean probability)."""
    n = probs.shape[-1]
    f = F.one_hot(sel[:, 0], n).float().mean(0)  # (M+1,)
    return n * (f * probs.mean(0)).sum()


# ---------------------------------------------------------------- applying the chosen modules

ModuleFn = Callable[[int, torch.Tensor], torch.Tensor]  # (module index, rows (n, Cin)) -> (n, Cout)


def mix_gathered(fn: ModuleFn, x: torch.Tensor, sel: torch.Tensor, weight: torch.Tensor, n_modules: int,
                 out_dim: int) -> torch.Tensor:
    """sum_k weight[t, k] * fn(sel[t, k], x[t]) for every token t, one batched call per module (fast path).

    x (N, Cin), sel/weight (N, K) -> (N, out_dim). SKIP (index n_modules) contributes nothing."""
    out = x.new_zeros(x.shape[0], out_dim)
    for m in range(n_modules):
        rows, k = (sel == m).nonzero(as_tuple=True)  # tokens that chose m, and in which top-k slot
        if rows.numel():
            out.index_add_(0, rows, fn(m, x[rows]) * weight[rows, k, None].to(x.dtype))
    return out


def mix_per_token(fn: ModuleFn, x: torch.Tensor, sel: torch.Tensor, weight: torch.Tensor, n_modules: int,
                  out_dim: int) -> torch.Tensor:
    """The reference of ``mix_gathered``: a loop over tokens and their chosen modules."""
    rows = []
    for t in range(x.shape[0]):
        acc = x.new_zeros(out_dim)
        for k in range(sel.shape[1]):
            m = int(sel[t, k])
            if m < n_modules:
                acc = acc + weight[t, k].to(x.dtype) * fn(m, x[t:t + 1])[0]
        rows.append(acc)
    return torch.stack(rows)  # (N, out_dim)
