"""One low-rank module family: LoRA, MoLoRA, HydraLoRA and MALoRA as settings of one config.

Papers: LoRA (Hu et al., arXiv:2106.09685); MoLoRA (Zadouri et al., arXiv:2309.05444, official code
github.com/for-ai/parameter-efficient-moe); HydraLoRA (Tian et al., arXiv:2404.19245, NeurIPS 2024, official code
github.com/Clin0212/HydraLoRA); MALoRA - Mixture of Asymmetric Low-Rank Adaptation (Wang et al., arXiv:2410.22782,
Findings of NAACL 2025; no official code release).

On a frozen ``W0`` (d_out x d_in), N experts, k active per token, the adapter adds

    delta(x) = scale * sum_{i in TopK(g(x))} w_i(x) * B_i A_i x,      g(x) = softmax(W_g x), w renormalised over top-k

and the family differs only in how the down-projections A_i are shared (``share_a``):

    none      A_i independent (r x d_in)                       LoRA (N = 1, no router), MoLoRA (N > 1)
    full      A_i = A, one matrix for all experts               HydraLoRA (one A, N B heads)
    subspace  A_i = P_i S, S (d_s x d_in) shared, P_i (r' x d_s) MALoRA; B_i (d_out x r') may have r' > r

MALoRA computes ``s = S x`` once per token; each selected expert then costs r' * d_s + d_out * r'. Trainable
parameters per adapted matrix (``param_count``): MoLoRA ``N r (d_in + d_out)``, HydraLoRA ``r d_in + N r d_out``,
MALoRA ``d_s d_in + N r' (d_s + d_out)``, plus the router ``N d_in`` when N > 1. A routed adapter adds the Switch
load-balance loss ``N * sum_i f_i * P_i`` (f_i: share of the token-expert assignments that go to i, P_i: mean router
probability), averaged over the adapted modules and multiplied by ``aux_coef`` (0.01, Switch Transformer's value);
the Trainer adds it to the loss through ``pop_aux``.

Reconstructed (MALoRA has no official code; training.md Sec. 3.2): S initialised from the top-d_s right singular
vectors, scaled by their singular values, of N stacked Kaiming-uniform A matrices (r' x d_in each); P_i Kaiming
uniform; B_i zero, so applying any adapter of the family leaves the model unchanged until it is trained. The
token-level top-k router and its softmax-then-renormalise gating follow MoLoRA; HydraLoRA's paper routes densely
(all heads, top_k = N), which is its default here.

The fast path runs every expert on every token as one matrix product per side, with the weight of an unselected
expert zero (exact, and the fastest form on a CPU for N <= 8); ``naive_delta`` keeps the per-token, per-expert loop
of the pseudo-code as the reference the tests compare it with.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lmlab.core.config import param

SHARE_A = {"lora": "none", "molora": "none", "hydralora": "full", "malora": "subspace"}
# method -> (experts, active experts); 0 in the config means "the method's default"
ROUTING = {"lora": (1, 1), "molora": (4, 2), "hydralora": (4, 0), "malora": (4, 2)}  # 0 active = all (dense)
ATTN_MLP = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class Config:
    method: str = param("lora", "lora | molora | hydralora | malora: sets how A is shared and the routing",
                        choices=tuple(SHARE_A))
    rank: int = param(8, "rank r of each expert's B (MALoRA: the expert rank r')")
    alpha: float = param(16.0, "scale = alpha / rank", source="LoRA paper Sec. 4 (alpha fixed, rank swept)")
    dropout: float = param(0.0, "dropout on the adapter's input")
    target_modules: list[str] = param(ATTN_MLP, "module names (a name or its last dotted parts); one string = a "
                                      "regex the full module name must match", source="MoLoRA: attention + FFN")
    n_experts: int = param(0, "experts N (0 = the method's default: lora 1, molora/hydralora/malora 4)")
    top_k: int = param(0, "experts per token (0 = the method's default: molora/malora 2, hydralora N)")
    subspace_rank: int = param(8, "MALoRA: rank d_s of the shared down-projection subspace S",
                               source="training.md Sec. 3.6 (d_s = 8, r' = 12)")
    aux_coef: float = param(0.01, "weight of the load-balance loss of routed adapters",
                            source="Switch Transformer (Fedus et al. 2021) Sec. 2.2")
    seed: int = param(0, "seed of the adapter's initialisation")

    def __post_init__(self) -> None:
        if self.method not in SHARE_A:
            raise ValueError(f"adapter method {self.method!r} is unknown; expected one of {', '.join(SHARE_A)}")
        n, k = ROUTING[self.method]
        self.n_experts = self.n_experts or n
        self.top_k = self.top_k or min(k or self.n_experts, self.n_experts)
        for name in ("rank", "n_experts", "top_k", "subspace_rank"):
            if getattr(self, name) <= 0:
                raise ValueError(f"adapter {name} must be > 0, got {getattr(self, name)}")
        if self.top_k > self.n_experts:
            raise ValueError(f"adapter top_k={self.top_k} exceeds n_experts={self.n_experts}")
        if ROUTING[self.method][0] == 1 and self.n_experts != 1:
            raise ValueError(f"lora has one expert, got n_experts={self.n_experts}; use molora for a mixture")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"adapter dropout must be in [0, 1), got {self.dropout}")
        if isinstance(self.target_modules, str):
            self.target_modules = [self.target_modules]
        if not self.target_modules:
            raise ValueError("adapter target_modules is empty; name at least one module")

    @property
    def share_a(self) -> str:
        return SHARE_A[self.method]

    @property
    def routed(self) -> bool:
        return self.n_experts > 1

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


def lora(**kw) -> Config:
    return Config(method="lora", **kw)


def molora(**kw) -> Config:
    return Config(method="molora", **kw)


def hydralora(**kw) -> Config:
    return Config(method="hydralora", **kw)


def malora(**kw) -> Config:
    return Config(method="malora", **kw)


def param_count(cfg: Config, d_in: int, d_out: int) -> int:
    """Trainable parameters of one adapted (d_out x d_in) matrix: the formulas of the module docstring."""
    n, r = cfg.n_experts, cfg.rank
    down = {"none": n * r * d_in, "full": r * d_in,
            "subspace": cfg.subspace_rank * d_in + n * r * cfg.subspace_rank}[cfg.share_a]
    return down + n * r * d_out + (n * d_in if cfg.routed else 0)


def _kaiming(*shape: int, fan_in: int, gen: torch.Generator) -> torch.Tensor:
    bound = 1.0 / math.sqrt(fan_in)  # nn.Linear's kaiming_uniform_(a=sqrt(5)) bound, as PEFT's LoRA A
    return (torch.rand(*shape, generator=gen) * 2 - 1) * bound


class LowRankMixture(nn.Module):
    """One adapter on one (d_out x d_in) matrix: ``forward(x) -> delta`` to add to ``W0 x`` (module docstring)."""

    def __init__(self, cfg: Config, d_in: int, d_out: int, *, seed: int = 0):
        super().__init__()
        self.cfg, self.d_in, self.d_out = cfg, d_in, d_out
        gen = torch.Generator().manual_seed(seed)
        n, r, ds = cfg.n_experts, cfg.rank, cfg.subspace_rank
        if cfg.share_a == "none":
            self.A = nn.Parameter(_kaiming(n, r, d_in, fan_in=d_in, gen=gen))  # (N, r, d_in)
        elif cfg.share_a == "full":
            self.A = nn.Parameter(_kaiming(r, d_in, fan_in=d_in, gen=gen))  # (r, d_in)
        else:
            stacked = _kaiming(n * r, d_in, fan_in=d_in, gen=gen)  # N Kaiming A_i, stacked (N r', d_in)
            _, sv, vh = torch.linalg.svd(stacked, full_matrices=False)
            k = min(ds, vh.shape[0])
            S = torch.zeros(ds, d_in)
            S[:k] = sv[:k, None] * vh[:k]  # top right singular vectors scaled by singular values
            self.S = nn.Parameter(S)  # (d_s, d_in)
            self.P = nn.Parameter(_kaiming(n, r, ds, fan_in=ds, gen=gen))  # (N, r', d_s)
        self.B = nn.Parameter(torch.zeros(n, d_out, r))  # (N, d_out, r): zero, so the adapter starts as identity
        self.router = nn.Linear(d_in, n, bias=False) if cfg.routed else None
        if self.router is not None:
            with torch.no_grad():
                self.router.weight.copy_(_kaiming(n, d_in, fan_in=d_in, gen=gen))
        self.drop = nn.Dropout(cfg.dropout)
        self._aux: torch.Tensor | None = None  # load-balance loss since the last pop (training only)

    # ------------------------------------------------------------ routing

    def gates(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(weights (T, N) with zeros off the top-k, router probabilities (T, N)) for tokens x (T, d_in)."""
        logits = self.router(x)  # (T, N), softmax in float32 at least
        probs = F.softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)  # (T, N)
        top_w, top_i = probs.topk(self.cfg.top_k, dim=-1)  # (T, k)
        top_w = top_w / top_w.sum(-1, keepdim=True)
        return torch.zeros_like(probs).scatter(1, top_i, top_w), probs

    def balance_loss(self, weights: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
        """Switch loss N * sum_i f_i P_i; 1.0 when routing is uniform."""
        n = self.cfg.n_experts
        f = (weights > 0).float().mean(0) / self.cfg.top_k  # (N,) share of the assignments
        return n * (f * probs.mean(0)).sum()

    def pop_aux(self) -> torch.Tensor | None:
        out, self._aux = self._aux, None
        return out

    # ------------------------------------------------------------ forward

    def down(self, x: torch.Tensor) -> torch.Tensor:
        """Per-expert down-projection (T, N, r) of x (T, d_in); ``full`` broadcasts one (T, 1, r)."""
        T, n, r = x.shape[0], self.cfg.n_experts, self.cfg.rank
        if self.cfg.share_a == "none":
            return (x @ self.A.reshape(n * r, self.d_in).T).view(T, n, r)
        if self.cfg.share_a == "full":
            return (x @ self.A.T).unsqueeze(1)
        s = x @ self.S.T  # (T, d_s): once per token, shared by every expert
        return (s @ self.P.reshape(n * r, -1).T).view(T, n, r)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = x.reshape(-1, self.d_in)  # (T, d_in)
        h = self.down(self.drop(x).to(self.B.dtype))  # (T, N | 1, r)
        n, r = self.cfg.n_experts, self.cfg.rank
        if self.router is not None:
            w, probs = self.gates(x.to(self.router.weight.dtype))
            if self.training and torch.is_grad_enabled():
                aux = self.balance_loss(w, probs)
                self._aux = aux if self._aux is None else self._aux + aux
            h = h * w.to(h.dtype).unsqueeze(-1)  # (T, N, r): unselected experts weigh 0
        h = h.expand(-1, n, r).reshape(-1, n * r)  # (T, N r)
        y = h @ self.B.permute(0, 2, 1).reshape(n * r, self.d_out)  # (T, d_out)
        return (y * self.cfg.scale).view(*shape[:-1], self.d_out)

    def expert_down(self, i: int) -> torch.Tensor:
        """The effective A_i (r, d_in) of expert i."""
        if self.cfg.share_a == "none":
            return self.A[i]
        if self.cfg.share_a == "full":
            return self.A
        return self.P[i] @ self.S

    def delta_weight(self) -> torch.Tensor:
        """scale * B A (d_out, d_in) of an unrouted adapter: what ``merge`` adds to W0."""
        if self.cfg.routed:
            raise ValueError(f"cannot merge a routed adapter ({self.cfg.method}, {self.cfg.n_experts} experts): "
                             "its expert mix changes with every token, so no single weight equals it")
        return self.cfg.scale * self.B[0] @ self.expert_down(0)


def naive_delta(mod: LowRankMixture, x: torch.Tensor) -> torch.Tensor:
    """Reference: token by token, expert by expert, with each A_i formed explicitly (no dropout)."""
    flat = x.reshape(-1, mod.d_in)
    rows = []
    for t in range(flat.shape[0]):
        xt = flat[t].to(mod.B.dtype)
        if mod.router is None:
            chosen = {0: 1.0}
        else:
            dt = torch.promote_types(mod.router.weight.dtype, torch.float32)
            p = F.softmax(mod.router.weight.to(dt) @ flat[t].to(dt), dim=-1)
            top_w, top_i = p.topk(mod.cfg.top_k)
            chosen = {int(i): w / top_w.sum() for w, i in zip(top_w, top_i)}
        rows.append(sum(mod.cfg.scale * w * (mod.B[i] @ (mod.expert_down(i) @ xt)) for i, w in chosen.items()))
    return torch.stack(rows).view(*x.shape[:-1], mod.d_out)
