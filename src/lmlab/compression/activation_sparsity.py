"""PPL-p% activation sparsity: per-layer CETT thresholds for the gated FFN of any model; Top-k, FAT-eps.

Paper: "Sparsing Law: Towards Large Language Models with Greater Activation Sparsity", Luo et al., ICML 2025,
arXiv:2411.02335. Official code: github.com/thunlp/SparsingLaw (src/model_utils.py, src/calc_activation.py).

Idea. A gated FFN computes out = sum_i h_i w_i with h = act(x W_gate^T) * (x W_up^T) and w_i = W_down[:, i];
neuron i's output norm for a token is r_i = |h_i| ||w_i||. CETT(t), the cumulative error of tail truncation,
is the mean over tokens of ||sum_{r_i <= t} h_i w_i|| / ||sum_i h_i w_i||. For a target CETT c every layer
gets the largest threshold t_l with CETT(t_l) <= c (binary search over 65,536 candidates between min r and
the 99th percentile of r); sparse inference drops neuron i when |h_i| <= t_l / ||w_i||. PPL-p% bisects c in
[0, 1] until sparse/dense perplexity = 1 + p/100 on the evaluation text; the activation ratio (mean kept
fraction over layers and tokens) is the model's sparsity metric, sparsity = 1 - ratio.

Baselines: Top-k keeps the fraction k of largest |act(gate)|, per token (``topk_token``) or, as the official
code does, ranked over the whole flattened batch tensor (``topk_batch``, the official whole-batch variant);
FAT-eps drops |act(gate)| <= eps. The same PPL-p% bisection can tune k or eps (``Config.strategy``).
``SparseGatedFFN`` with ``kernel="gather"`` is the threshold-sparse FFN for inference (only the kept rows of
W_down are read); its masked forward is the reference it is tested against.

Deviations from the official code: (1) when even the smallest candidate exceeds c, the official search returns
``thresholds[-1]`` (the largest candidate: maximal pruning); here the layer gets t = 0 (nothing dropped);
(2) a neuron counts as active iff h_i != 0 after masking (official: |h_i| >= threshold), so with t = 0 exact
zeros of ReLU are inactive and the drop rule is r_i <= t everywhere, as in the CETT definition; (3) CETT
evaluations are memoised per layer across the outer bisection (same result, fewer matmuls); (4) any gated
FFN (lmlab ``GatedMLP``/``ReGLU``, Hugging Face Llama-family MLP, found by its gate_proj/up_proj/down_proj
names) instead of a MiniCPM subclass, by module replacement; (5) the reported knob is the evaluated one whose
perplexity ratio is closest to 1 + p/100 (the official code re-evaluates the final midpoint; on a few thousand
tokens the ratio jitters by ~0.1 % between neighbouring c, so the midpoint can land that far off the target).
Defaults come from the official code (65,536 candidates, 0.99 quantile, bisection tolerance 1e-6, p = 1).

Legend: N tokens, C model dim, F FFN hidden dim, L layers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lmlab.core.config import param, to_dict
from lmlab.core.runtime import Timer
from lmlab.core.scoring import score, token_batches

from .base import Report, set_module

STRATEGIES = ("cett", "topk_token", "topk_batch", "fat")
OFFICIAL = "official calc_thresholds_given_cett"


@dataclass
class Config:
    p: float = param(1.0, "PPL-p%: target sparse/dense perplexity ratio 1 + p/100",
                     source="paper, ICML version (CETT-PPL-1%); official calc_activation.py (prune_arg=1.01)")
    strategy: str = param("cett", "knob tuned by the bisection: cett (per-layer CETT thresholds, the method) "
                          "| topk_token | topk_batch (official whole-batch Top-k) | fat (FAT-eps)",
                          choices=STRATEGIES)
    n_candidates: int = param(65536, "threshold candidates per layer", source=OFFICIAL)
    quantile: float = param(0.99, "candidates span min(r) .. this quantile of r (drops extremes)",
                            source=OFFICIAL)
    quantile_samples: int = param(65536, "strided subsample of r for the quantile", source=OFFICIAL)
    tol: float = param(1e-6, "bisection stops when the knob interval is below this",
                       source="official calc_cett_for_target_ppl_ratio")


@dataclass
class SparsityReport(Report):
    strategy: str = "cett"  # knob that was tuned
    knob: float = 0.0  # final CETT c, Top-k dropped fraction 1 - k, or FAT eps
    ppl_ratio: float = 1.0  # sparse / dense perplexity on the calibration text
    activation_ratio: float = 1.0  # mean over layers and tokens of the kept fraction of FFN neurons
    per_layer: list[float] = field(default_factory=list)  # activation ratio per layer
    thresholds: list[float] = field(default_factory=list)  # CETT thresholds t_l on r (cett strategy only)
    dense_nll: float = 0.0  # mean next-token NLL (nats) of the dense model
    sparse_nll: float = 0.0  # same with the sparse FFNs
    history: list[dict] = field(default_factory=list)  # {knob, ppl_ratio, activation_ratio, ...} per step

    @property
    def sparsity(self) -> float:
        return 1.0 - self.activation_ratio

    def to_dict(self) -> dict[str, Any]:
        keys = ("strategy", "knob", "ppl_ratio", "activation_ratio", "per_layer", "thresholds", "dense_nll",
                "sparse_nll", "history")
        return super().to_dict() | {k: getattr(self, k) for k in keys}


# ---------------------------------------------------------------- finding and wrapping gated FFNs


def _activation(m: nn.Module) -> Callable | None:
    act = getattr(m, "act_fn", None)  # Hugging Face Llama-family MLP
    return act if act is not None else getattr(m, "act", None)  # lmlab GatedMLP (staticmethod)


def is_gated_ffn(m: nn.Module) -> bool:
    return (all(isinstance(getattr(m, n, None), nn.Linear) for n in ("gate_proj", "up_proj", "down_proj"))
            and callable(_activation(m)))


def find_gated_ffns(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of every gated FFN (gate_proj, up_proj, down_proj, activation), in layer order."""
    found = [(n, m) for n, m in model.named_modules() if is_gated_ffn(m) or isinstance(m, SparseGatedFFN)]
    if not found:
        mlps = sorted({type(m).__name__ for n, m in model.named_modules() if n.endswith(("mlp", "ffn"))})
        raise ValueError(f"{type(model).__name__} has no gated FFN (a module with gate_proj, up_proj, "
                         "down_proj and an activation, e.g. mlp='swiglu' or 'reglu', or a Llama-family "
                         f"MLP); activation sparsity needs one. MLP modules found: {mlps or 'none'}")
    return found


class SparseGatedFFN(nn.Module):
    """A gated FFN with an activation-sparsity mode; shares (not copies) the wrapped module's linears.

    mode: ``dense`` | ``threshold`` (drop |h_i| <= tau_i, tau = t / ||w_i||) | ``topk_token`` | ``topk_batch``
    (keep fraction ``k`` of largest |act(gate)|) | ``fat`` (drop |act(gate)| <= eps). ``kernel="gather"`` runs
    the threshold mode as a real sparse down projection over the active neurons only (inference).
    """

    def __init__(self, ffn: nn.Module):
        super().__init__()
        self.gate_proj, self.up_proj, self.down_proj = ffn.gate_proj, ffn.up_proj, ffn.down_proj
        self.act = _activation(ffn)
        self.zero_below = bool((self.act(torch.tensor([-2.0, -0.5])) == 0).all())  # ReLU-like: 0 if gate < 0
        self.original = [ffn]  # a list keeps it out of the module tree (no duplicate parameters)
        self.mode, self.kernel, self.tau, self.t, self.k, self.eps = "dense", "masked", None, 0.0, 1.0, 0.0
        self.record, self.recorded, self.gate_max = False, [], 0.0  # recorded: (N, F) chunks of h
        self.kept_sum, self.tokens = 0.0, 0  # sum over tokens of the kept fraction, and token count
        self._down_t: tuple | None = None

    def set_threshold(self, t: float) -> None:
        """Drop neuron i when r_i = |h_i| ||w_i|| <= t (t on the scale of r, shared by the layer)."""
        norms = self.down_proj.weight.detach().float().norm(dim=0)  # (F,)
        self.tau = torch.where(norms > 0, t / norms.clamp_min(1e-30), torch.full_like(norms, float("inf")))
        self.t, self.mode = float(t), "threshold"

    def reset_stats(self) -> None:
        self.kept_sum, self.tokens = 0.0, 0

    @property
    def activation_ratio(self) -> float:
        return self.kept_sum / self.tokens if self.tokens else float("nan")

    def drop_mask(self, a: torch.Tensor, h: torch.Tensor) -> torch.Tensor | None:
        """Bool (..., F), True = drop, for a = act(gate) and h = a * up."""
        if self.mode == "dense":
            return None
        if self.mode == "threshold":
            return h.abs() <= self.tau.to(h.dtype)
        if self.mode == "fat":
            return a.abs() <= self.eps
        if self.mode in ("topk_token", "topk_batch"):
            return topk_drop(a, self.k, per_token=self.mode == "topk_token")
        raise ValueError(f"unknown sparsity mode {self.mode!r}; expected dense, threshold, {STRATEGIES[1:]}")

    def forward(self, x: torch.Tensor, ctx: Any = None) -> torch.Tensor:  # ctx: the core block context
        if self.kernel == "gather" and self.mode == "threshold" and not torch.is_grad_enabled():
            return self.gather_forward(x)
        a = self.act(self.gate_proj(x))  # (..., F)
        h = a * self.up_proj(x)  # (..., F)
        if self.record:
            self.recorded.append(h.detach().reshape(-1, h.shape[-1]).float())
            self.gate_max = max(self.gate_max, float(a.detach().abs().max()))
        drop = self.drop_mask(a, h)
        if drop is not None:
            h = h.masked_fill(drop, 0.0)
        kept = (h != 0).float().mean(-1)  # (...,)
        self.kept_sum, self.tokens = self.kept_sum + float(kept.sum()), self.tokens + kept.numel()
        return self.down_proj(h)

    def _down_rows(self) -> torch.Tensor:
        """W_down^T (F, C), contiguous: a neuron's output vector is one row (cached per weight version)."""
        w = self.down_proj.weight
        key = (w.data_ptr(), w._version)
        if self._down_t is None or self._down_t[0] != key:
            self._down_t = (key, w.detach().t().contiguous())
        return self._down_t[1]

    def gather_forward(self, x: torch.Tensor) -> torch.Tensor:
        """Threshold-sparse FFN: dense gate (and up), then sum_i h_i w_i over the kept neurons only.

        Equal to the masked forward up to float summation order. Gathering rows costs more per row than a
        dense GEMV on a CPU (measured: break-even near 60 % of the rows for the fused gather-sum, 1/3 for the
        up rows, which index_select copies), so the gathers are used only below those shares; above them the
        masked h goes through the dense down projection.
        """
        shape = x.shape
        xs = x.reshape(-1, shape[-1])  # (N, C)
        a = self.act(self.gate_proj(xs))  # (N, F)
        rows = None
        if self.zero_below:
            live = (a != 0).any(0).nonzero().squeeze(1)  # (F',) neurons with a nonzero gate somewhere
            rows = live if live.numel() * 3 < a.shape[1] else None
        if rows is None:
            h, tau = a * self.up_proj(xs), self.tau  # (N, F)
        else:
            b = self.up_proj.bias.index_select(0, rows) if self.up_proj.bias is not None else None
            u = F.linear(xs, self.up_proj.weight.index_select(0, rows), b)  # (N, F')
            h, tau = a.index_select(1, rows) * u, self.tau.index_select(0, rows)
        keep = h.abs() > tau.to(h.dtype)  # (N, F')
        self.kept_sum += float(keep.float().mean(-1).sum()) * h.shape[1] / a.shape[1]
        self.tokens += xs.shape[0]
        cols = keep.any(0).nonzero().squeeze(1)  # (K,) neurons kept by at least one token
        if rows is None and cols.numel() > 0.6 * a.shape[1]:  # too dense to pay: masked dense projection
            return self.down_proj(h * keep).reshape(*shape[:-1], -1)
        hk = (h * keep).index_select(1, cols)  # (N, K)
        idx = cols if rows is None else rows.index_select(0, cols)
        down = self._down_rows()
        if xs.shape[0] == 1:  # decode: fused gather + weighted sum of K rows of W_down^T
            out = F.embedding_bag(idx[None], down, mode="sum", per_sample_weights=hk)  # (1, C)
        else:
            out = hk @ down.index_select(0, idx)  # (N, C)
        if self.down_proj.bias is not None:
            out = out + self.down_proj.bias
        return out.reshape(*shape[:-1], out.shape[-1])


def install(model: nn.Module) -> list[SparseGatedFFN]:
    """Replace every gated FFN by a ``SparseGatedFFN`` (idempotent); returns them in layer order."""
    out = []
    for name, m in find_gated_ffns(model):
        if not isinstance(m, SparseGatedFFN):
            m = SparseGatedFFN(m)
            set_module(model, name, m)
        out.append(m)
    return out


def remove(model: nn.Module) -> nn.Module:
    """Put the original FFN modules back."""
    for name, m in list(model.named_modules()):
        if isinstance(m, SparseGatedFFN):
            set_module(model, name, m.original[0])
    return model


def topk_drop(a: torch.Tensor, k: float, per_token: bool = True) -> torch.Tensor:
    """Bool drop mask keeping the fraction k of largest |a|: per token (last dim) or over the whole tensor."""
    if not 0.0 <= k <= 1.0:
        raise ValueError(f"Top-k fraction k must be in [0, 1], got {k}")
    flat = a.abs() if per_token else a.abs().reshape(-1)
    n_drop = int(flat.shape[-1] * (1 - k))  # as the official code: int(numel * (1 - k)) zeroed
    drop = torch.zeros_like(flat, dtype=torch.bool)
    if n_drop:
        drop.scatter_(-1, flat.topk(n_drop, dim=-1, largest=False).indices, True)
    return drop.view_as(a)


# ---------------------------------------------------------------- CETT


def cett(h: torch.Tensor, w_down: torch.Tensor, t: float) -> float:
    """Reference CETT: mean_tokens ||sum_{r_i <= t} h_i w_i|| / ||sum_i h_i w_i||; h (N, F), w_down (C, F)."""
    r = h.abs() * w_down.norm(dim=0)  # (N, F)
    full = (h @ w_down.t()).norm(dim=-1)  # (N,)
    tail = (h * (r <= t)) @ w_down.t()  # (N, C)
    return float((tail.norm(dim=-1) / full).mean())


class LayerCETT:
    """One layer's recorded dense activations and the binary search for its threshold (memoised)."""

    def __init__(self, h: torch.Tensor, w_down: torch.Tensor, cfg: Config):
        self.h, self.w = h.float(), w_down.detach().float()  # (N, F), (C, F)
        self.r = self.h.abs() * self.w.norm(dim=0)  # (N, F)
        self.full = (self.h @ self.w.t()).norm(dim=-1).clamp_min(1e-30)  # (N,)
        stride = max(self.r.numel() // cfg.quantile_samples, 1)
        hi = self.r.reshape(-1)[::stride].quantile(cfg.quantile)
        self.candidates = torch.linspace(float(self.r.min()), float(hi), cfg.n_candidates)
        self.memo: dict[int, float] = {}

    def cett_at(self, j: int) -> float:
        if j not in self.memo:
            tail = torch.where(self.r <= self.candidates[j], self.h, 0.0) @ self.w.t()  # (N, C)
            self.memo[j] = float((tail.norm(dim=-1) / self.full).mean())
        return self.memo[j]

    def threshold(self, c: float) -> float:
        """Largest candidate t with CETT(t) <= c (CETT is non-decreasing in t); 0 when there is none."""
        lo, hi = 0, len(self.candidates)  # find the first j with CETT > c in [lo, hi)
        while lo < hi:
            mid = (lo + hi) // 2
            if self.cett_at(mid) > c:
                hi = mid
            else:
                lo = mid + 1
        return float(self.candidates[lo - 1]) if lo > 0 else 0.0


# ---------------------------------------------------------------- evaluation and the PPL-p% search


def as_batches(calib: torch.Tensor | Iterable[torch.Tensor]) -> list[torch.Tensor]:
    """Token ids (B, T) or an iterable of them -> list of (B, T) LongTensors with T >= 2 (``core.scoring``)."""
    return token_batches(calib, min_len=2)


@torch.no_grad()
def mean_nll(model: nn.Module, batches: list[torch.Tensor], bos_id: int | None = None) -> float:
    """Token-weighted mean next-token NLL (nats) of ``model(ids) -> logits`` over the batches (core.scoring)."""
    return score(model, batches, bos_id=bos_id).mean_nll


def set_knob(ffns: list[SparseGatedFFN], strategy: str, u: float, layers: list[LayerCETT] | None = None,
             eps_max: float = 1.0) -> list[float]:
    """Put every FFN in the strategy's mode at knob u (more pruning as u grows); returns CETT thresholds."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; expected one of {STRATEGIES}")
    thresholds = [layers[i].threshold(u) for i in range(len(ffns))] if strategy == "cett" else []
    for i, f in enumerate(ffns):
        f.reset_stats()
        if strategy == "cett":
            f.set_threshold(thresholds[i])
        elif strategy == "fat":
            f.mode, f.eps = "fat", u * eps_max
        else:
            f.mode, f.k = strategy, 1.0 - u
    return thresholds


@torch.no_grad()
def evaluate(model: nn.Module, batches: torch.Tensor | Iterable[torch.Tensor], dense_nll: float) -> dict:
    """Perplexity ratio vs ``dense_nll`` and activation ratios of a model with installed sparse FFNs."""
    ffns, batches = install(model), as_batches(batches)
    for f in ffns:
        f.reset_stats()
    nll = mean_nll(model, batches)
    per_layer = [f.activation_ratio for f in ffns]
    return {"ppl_ratio": float(torch.tensor(nll - dense_nll).exp()),
            "activation_ratio": sum(per_layer) / len(ffns), "per_layer": per_layer, "nll": nll}


class PPLPSparsity:
    """PPL-p% sparsity: ``model, report = PPLPSparsity(Config(p=1)).fit(model, calib_ids)``.

    Installs ``SparseGatedFFN`` modules (module replacement) and leaves them in the mode found by the search;
    ``remove(model)`` restores the dense model. ``calib`` is token ids (B, T) or a list of such batches.
    """

    def __init__(self, cfg: Config | None = None):
        self.cfg = cfg or Config()
        if self.cfg.p <= 0 or self.cfg.tol <= 0 or self.cfg.n_candidates < 2:
            raise ValueError(f"need p > 0, tol > 0 and n_candidates >= 2, got {self.cfg}")

    @torch.no_grad()
    def fit(self, model: nn.Module, calib: torch.Tensor | Iterable[torch.Tensor]) -> tuple[nn.Module, Report]:
        cfg, batches = self.cfg, as_batches(calib)
        with Timer() as sw:
            ffns = install(model)
            for f in ffns:  # dense run, recording h for the CETT thresholds (as the official code)
                f.mode, f.record, f.recorded, f.gate_max = "dense", True, [], 0.0
            dense_nll = mean_nll(model, batches)
            layers = [LayerCETT(torch.cat(f.recorded), f.down_proj.weight, cfg) for f in ffns] \
                if cfg.strategy == "cett" else None
            eps_max = max(f.gate_max for f in ffns) or 1.0  # FAT eps spans [0, largest |act(gate)|]
            for f in ffns:
                f.record, f.recorded = False, []
            target, history = 1 + cfg.p / 100, []

            def ratio_at(u: float) -> float:
                set_knob(ffns, cfg.strategy, u, layers, eps_max)
                res = evaluate(model, batches, dense_nll)
                history.append({"knob": u, **res})
                return res["ppl_ratio"]

            lo, hi = 0.0, 1.0  # the official bisection: ratio(u) grows with u
            while hi - lo > cfg.tol:
                mid = (lo + hi) / 2
                lo, hi = (mid, hi) if ratio_at(mid) < target else (lo, mid)
            ratio_at((lo + hi) / 2)
            best = min(history, key=lambda e: abs(e["ppl_ratio"] - target))  # deviation (5)
            thresholds = set_knob(ffns, cfg.strategy, best["knob"], layers, eps_max)
        knob = best["knob"] * eps_max if cfg.strategy == "fat" else best["knob"]
        report = SparsityReport("ppl_p_sparsity", to_dict(cfg), seconds=sw.seconds, strategy=cfg.strategy,
                                knob=knob, ppl_ratio=best["ppl_ratio"], per_layer=best["per_layer"],
                                activation_ratio=best["activation_ratio"], thresholds=thresholds,
                                dense_nll=dense_nll, sparse_nll=best["nll"], history=history)
        return model, report
