"""Batch-size laws: the optimal batch size against compute or data, and the critical batch size.

Papers: "Scaling Law for Language Models Training Considering Batch Size", Xian Shuai, Yiding Wang, Yimeng Wu,
Xin Jiang, Xiaozhe Ren (Huawei Noah's Ark Lab), arXiv:2412.01505, no code released; "An Empirical Model of
Large-Batch Training", McCandlish, Kaplan, Amodei et al., arXiv:1812.06162; Kaplan et al. 2020,
arXiv:2001.08361, Sec. 5.1.

Idea. At a fixed compute budget C the loss-optimal batch grows slowly with C, B_opt ~ C^0.102, while the steps
grow as S_opt ~ C^0.434 (so tokens D_opt = B S ~ C^0.536); at fixed data D the optimal batch is a power law in
D, and the optimal learning rate grows as B^gamma with gamma in [0.75, 1]. McCandlish et al.: the steps S and
examples E = B S needed to reach a given loss obey (S / S_min - 1)(E / E_min - 1) = 1, i.e.
S(B) = S_min (1 + B_crit / B), where the critical batch B_crit = E_min / S_min is close to the gradient noise
scale B_simple = tr(Sigma) / |G|^2 and grows as the loss falls, B_crit(L) = B* L^(-1 / alpha_B) (Kaplan).
The Trainer measures B_simple (``TrainConfig.noise_scale_every``); ``noise_scale_points`` reads it back.

Deviations / sources: only the abstract of arXiv:2412.01505 and secondary summaries were available, so its
exponents below are marked [2nd] and its own L(N, D, B) form and constants are not implemented; the laws here
are power laws and the McCandlish trade-off, fitted with the shared core (log residuals, Huber delta 1e-3,
L-BFGS from a grid, bootstrap CIs). B_opt at each budget is the vertex of the parabola of loss against log B
through the best measured batch and its two neighbours (the best learning rate per batch first); an optimum on
the edge of the grid is reported as such, not extrapolated. Steps to a target loss are read off the training
loss smoothed with a centred moving average over a fixed number of sequences (no lag, equal noise for every
batch size). Units: a batch counts sequences (windows) unless a column says tokens; B_simple from the Trainer
is in sequences (x seq_len for tokens).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lmlab.core.config import param
from lmlab.laws.base import Columns, Fit, Law, Param, as_columns, power_law
from lmlab.laws.table import number_column, where

# Published numbers to compare with, each with its source. [2nd] = secondary summary: re-check with the paper.
REFERENCE: dict[str, dict[str, Any]] = {
    "shuai2024": {"source": "arXiv:2412.01505 abstract + secondary summaries [2nd]", "N_opt~C": 0.464,
                  "D_opt~C": 0.536, "S_opt~C": 0.434, "B_opt~C": 0.102, "lr~B": (0.75, 1.0)},
    "deepseek": {"source": "DeepSeek LLM, arXiv:2401.02954 Sec. 3.1 (tokens, C in FLOPs)",
                 "B_opt": (0.2920, 0.3271), "lr_opt": (0.3118, -0.1250)},
    "kaplan": {"source": "arXiv:2001.08361 eq. 5.3 (tokens, loss in nats)", "B_star": 2e8, "alpha_B": 0.21},
}


@dataclass
class Config:
    smooth_sequences: int = param(4096, "training-loss smoothing window, sequences (centred moving average)")
    n_boot: int = param(200, "bootstrap resamples for confidence intervals")
    seed: int = param(0, "bootstrap seed")
    targets: list[float] = param([], "target losses for the steps/batch trade-off ([] = spread over the "
                                 "range every run reaches)")
    n_targets: int = param(6, "number of targets when ``targets`` is empty")
    target_start: float = param(0.5, "default targets start at the loss the slowest run has after this "
                                "fraction of its steps (skips the warmup-dominated start)")


def tradeoff_form(batch: np.ndarray, s_min: float, b_crit: float) -> np.ndarray:
    """Steps to a fixed loss at batch size B: S = S_min (1 + B_crit / B) (McCandlish et al., eq. 2.11)."""
    return s_min * (1 + b_crit / batch)


TRADEOFF_LAW = Law("steps_batch", tradeoff_form,
                   (Param("S_min", 1e-3, 1e12, log=True, init=(1.0, 100.0, 1e4)),
                    Param("B_crit", 1e-3, 1e12, log=True, init=(1.0, 30.0, 1e3, 1e5))),
                   x=("batch",), y="steps", formula="steps = S_min * (1 + B_crit / batch)",
                   positive=("batch",), derived={"E_min": lambda p: p["S_min"] * p["B_crit"]},
                   source="arXiv:1812.06162 eq. 2.11")
CRITICAL_LAW = Law("critical_batch", lambda loss, b_star, alpha_b: b_star * loss ** (-1 / alpha_b),
                   (Param("B_star", 1e-6, 1e15, log=True, init=(1.0, 1e3, 1e6)),
                    Param("alpha_B", 1e-3, 10.0, log=True, init=(0.05, 0.2, 1.0))),
                   x=("loss",), y="b_crit", formula="b_crit = B_star * loss^(-1 / alpha_B)",
                   positive=("loss",), source="arXiv:2001.08361 eq. 5.3")
LAWS = {"batch_compute": power_law("batch_compute", "compute", "batch", source="arXiv:2412.01505 [2nd]"),
        "batch_data": power_law("batch_data", "tokens", "batch", source="arXiv:2412.01505 [2nd]"),
        "lr_batch": power_law("lr_batch", "batch", "lr", source="arXiv:2412.01505 [2nd]"),
        "steps_batch": TRADEOFF_LAW, "critical_batch": CRITICAL_LAW}


def scale_batch(batch: float, compute: float, new_compute: float, exponent: float = 0.102) -> float:
    """Carry a tuned batch size to a new compute budget: B' = B (C' / C)^exponent (default from
    arXiv:2412.01505 [2nd])."""
    if min(batch, compute, new_compute) <= 0:
        raise ValueError(f"batch and compute budgets must be > 0, got {batch}, {compute}, {new_compute}")
    return batch * (new_compute / compute) ** exponent


# ------------------------------------------------------------------ reading runs
def smooth(loss: np.ndarray, window: int) -> np.ndarray:
    """Centred moving average whose half-width shrinks near the ends (no lag and no look-ahead bias)."""
    loss = np.asarray(loss, dtype=float)
    i = np.arange(len(loss))
    half = np.minimum(np.minimum(i, len(loss) - 1 - i), max(window, 1) // 2)
    c = np.concatenate([[0.0], np.cumsum(loss)])
    return (c[i + half + 1] - c[i - half]) / (2 * half + 1)


def steps_to_target(loss: np.ndarray, target: float, window: int = 1) -> float | None:
    """First step (1-based) whose smoothed training loss is <= target, interpolated; None if never."""
    s = smooth(loss, window)
    hit = np.flatnonzero(s <= target)
    if hit.size == 0:
        return None
    i = int(hit[0])
    if i == 0:
        return 1.0
    return i + (s[i - 1] - target) / (s[i - 1] - s[i])  # between step i and i + 1 (1-based)


def _check_runs(runs: list[dict[str, Any]]) -> None:
    if not runs:
        raise ValueError("no runs given")
    for r in runs:
        missing = [k for k in ("batch", "loss") if k not in r]
        if missing:
            raise ValueError(f"a run needs keys 'batch' and 'loss' (per-step training losses); "
                             f"missing {missing}")
        if not r["batch"] > 0:
            raise ValueError(f"run batch size must be > 0, got {r['batch']}")


def default_targets(runs: list[dict[str, Any]], n: int, window: int, start: float = 0.5) -> list[float]:
    """``n`` targets spread in log space between the loss the slowest run has ``start`` of the way into its
    training and the worst final loss any batch size reaches, so every batch size reaches every target."""
    curves = [(r["batch"], smooth(r["loss"], max(1, window // r["batch"]))) for r in runs]
    finals: dict[float, float] = {}
    for b, s in curves:
        finals[b] = min(finals.get(b, np.inf), float(s.min()))
    if not 0 <= start < 1:
        raise ValueError(f"target start must be a fraction in [0, 1), got {start}")
    hi, lo = max(float(s[int(len(s) * start)]) for _, s in curves), max(finals.values())
    if not lo < hi:
        raise ValueError(f"runs do not improve on their early loss (early {hi:.4g}, worst final {lo:.4g})")
    return [float(v) for v in np.geomspace(hi, lo * 1.001, n)]


def tradeoff_points(runs: list[dict[str, Any]], targets: list[float], window_sequences: int = 4096
                    ) -> Columns:
    """Steps and examples each batch size needs to reach each target (best learning rate per batch size).
    runs: dicts with ``batch`` (sequences) and ``loss`` (per-step training losses); ``lr`` optional."""
    _check_runs(runs)
    rows: list[tuple[float, float, float, float]] = []
    for target in targets:
        best: dict[float, float] = {}
        for r in runs:
            s = steps_to_target(r["loss"], target, max(1, window_sequences // r["batch"]))
            if s is not None:
                best[r["batch"]] = min(best.get(r["batch"], np.inf), s)
        rows += [(target, b, s, b * s) for b, s in sorted(best.items())]
    t, b, s, e = (np.array(c, dtype=float) for c in zip(*rows)) if rows else [np.zeros(0)] * 4
    return {"target": t, "batch": b, "steps": s, "examples": e}


@dataclass
class CriticalBatch:
    fits: dict[float, Fit]  # target loss -> fit of S(B) = S_min (1 + B_crit / B)
    table: Columns  # target, S_min, E_min, B_crit (+ CIs), r2, n
    trend: Fit | None  # B_crit against the target loss (Kaplan's form); None with fewer than 2 targets
    points: Columns = field(default_factory=dict)  # the (target, batch, steps, examples) points


def critical_batch(runs: list[dict[str, Any]], cfg: Config | None = None) -> CriticalBatch:
    """McCandlish's analysis: per target loss, fit S(B) over batch sizes; then B_crit against the target."""
    cfg = cfg or Config()
    _check_runs(runs)
    targets = list(cfg.targets) or default_targets(runs, cfg.n_targets, cfg.smooth_sequences,
                                                   cfg.target_start)
    pts = tradeoff_points(runs, targets, cfg.smooth_sequences)
    fits, rows = {}, []
    for t in targets:
        sel = pts["target"] == t
        if sel.sum() < 3:  # two batch sizes determine S_min and B_crit exactly: no check of the form
            continue
        f = TRADEOFF_LAW.fit({"batch": pts["batch"][sel], "steps": pts["steps"][sel]}, n_boot=cfg.n_boot,
                             seed=cfg.seed)
        fits[t] = f
        ci = f.ci["B_crit"]
        rows.append((t, f.params["S_min"], f.derived["E_min"], f.params["B_crit"], ci[0], ci[1], f.r2,
                     int(sel.sum())))
    names = ("target", "S_min", "E_min", "B_crit", "B_crit_lo", "B_crit_hi", "r2", "n")
    table = {k: np.array(v, dtype=float) for k, v in zip(names, zip(*rows))} if rows else {}
    trend = None
    if len(rows) >= 2:
        trend = CRITICAL_LAW.fit({"loss": table["target"], "b_crit": table["B_crit"]}, n_boot=cfg.n_boot,
                                 seed=cfg.seed)
    return CriticalBatch(fits, table, trend, pts)


def optimal_batch(rows: Any, budget: str = "tokens") -> Columns:
    """B_opt per budget from a sweep table with columns ``budget`` (e.g. tokens or compute), batch, loss
    and optionally lr: the best lr per batch size, then the vertex of the parabola of loss against ln B
    through the best batch size and its neighbours. ``interior`` = 0 when the best is on the grid's edge."""
    cols = as_columns(rows)
    missing = [c for c in (budget, "batch", "loss") if c not in cols]
    if missing:
        raise ValueError(f"sweep table needs columns {budget!r}, 'batch', 'loss'; missing {missing}")
    b_all, l_all, d_all = (number_column(cols, c, "sweep table: ") for c in ("batch", "loss", budget))
    if np.any(b_all <= 0):
        i = int(np.flatnonzero(b_all <= 0)[0])
        raise ValueError(f"batch sizes must be > 0 (log B is taken), got {b_all[i]} at {where(cols, i, 'batch')}")
    out: dict[str, list[float]] = {budget: [], "batch": [], "loss": [], "interior": []}
    for d in np.unique(d_all):
        sel = d_all == d
        bs = np.unique(b_all[sel])
        loss = np.array([l_all[sel & (b_all == b)].min() for b in bs])  # best lr per batch size
        i = int(np.argmin(loss))
        b_opt, l_opt, interior = float(bs[i]), float(loss[i]), 0.0
        if 0 < i < len(bs) - 1:
            x, y = np.log(bs[i - 1:i + 2]), loss[i - 1:i + 2]
            a2, a1, a0 = np.polyfit(x, y, 2)
            if a2 > 0:
                v = -a1 / (2 * a2)
                b_opt, l_opt, interior = float(math.exp(v)), float(a2 * v * v + a1 * v + a0), 1.0
        for k, v in ((budget, float(d)), ("batch", b_opt), ("loss", l_opt), ("interior", interior)):
            out[k].append(v)
    return {k: np.array(v) for k, v in out.items()}


def noise_scale_points(history: list[dict[str, Any]], batch: int | None = None) -> Columns:
    """(step, loss, b_simple[, examples]) from Trainer history records that carry a noise-scale estimate."""
    recs = [r for r in history if math.isfinite(r.get("b_simple", float("nan"))) and r["b_simple"] > 0]
    cols = {k: np.array([r[k] for r in recs], dtype=float) for k in ("step", "loss", "b_simple")}
    if batch is not None:
        cols["examples"] = cols["step"] * batch
    return cols


# ------------------------------------------------------------------ a sweep run with the one Trainer
def train_run(train_ids: np.ndarray, val_ids: np.ndarray, model_cfg: Any, *, batch: int, lr: float,
              tokens: int, seq_len: int, eval_every_tokens: int, warmup_steps: int = 20, grad_accum: int = 2,
              noise_every: int = 1, eval_batches: int = 8, seed: int = 0) -> dict[str, Any]:
    """Train a fresh core Transformer at one (batch, lr) with a constant lr after warmup, so the curve at D
    tokens stands for a run of D tokens; returns the per-step losses, val losses every ``eval_every_tokens``
    and the EMA noise scale B_simple (batch = sequences per optimizer step, split into ``grad_accum``)."""
    import torch

    from lmlab.core.data import TokenWindows
    from lmlab.core.scoring import token_nll
    from lmlab.core.train import LossOutput, TrainConfig, Trainer
    from lmlab.core.transformer import Transformer

    def next_token_loss(model: torch.nn.Module, b: dict[str, torch.Tensor]) -> LossOutput:
        logits = model(b["ids"])  # (B, T, V)
        return LossOutput(token_nll(logits, b["targets"], reduction="mean"), {})

    if batch % grad_accum:
        raise ValueError(f"batch {batch} must be divisible by grad_accum {grad_accum}")
    per_step = batch * seq_len
    if eval_every_tokens % per_step:
        raise ValueError(f"eval_every_tokens {eval_every_tokens} must be a multiple of batch * seq_len = "
                         f"{per_step}")
    cfg = TrainConfig(steps=tokens // per_step, lr=lr, schedule="constant",
                      warmup_steps=warmup_steps, grad_accum=grad_accum,
                      noise_scale_every=noise_every, eval_every=eval_every_tokens // per_step,
                      eval_batches=eval_batches, seed=seed, progress=False, log_every=10**9)
    torch.manual_seed(seed)
    model = Transformer(model_cfg)
    val = TokenWindows(val_ids, 32, seq_len)
    data = TokenWindows(train_ids, batch // grad_accum, seq_len, seed=seed)
    trainer = Trainer(model, next_token_loss, data, cfg, eval_data=lambda: val.sequential())
    hist = trainer.fit(resume=False)
    evals = [(r["step"] * per_step, r["eval_loss"]) for r in hist if "eval_loss" in r]
    return {"batch": batch, "lr": lr, "params": model.num_params(),
            "loss": np.array([r["loss"] for r in hist]),
            "eval_tokens": np.array([e[0] for e in evals], dtype=float),
            "eval_loss": np.array([e[1] for e in evals], dtype=float),
            "noise": noise_scale_points(hist, batch), "seconds": trainer.seconds}
