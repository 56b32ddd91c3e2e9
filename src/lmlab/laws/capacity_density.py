"""Capability density and the Densing law.

Paper: "Densing Law of LLMs", Chaojun Xiao et al. (Tsinghua / ModelBest), arXiv:2412.04315; Nature Machine
Intelligence 7:1823-1833 (2025). No official code; reference models: HF ``openbmb/DensingLaw-ScalingModels``.

Idea. The density of a model M is rho = N_hat(S_M) / N_M: the parameter count a *reference* model family
needs to reach M's benchmark score S_M, over M's own count. N_hat comes from two fitted steps: (1) a loss law
on the reference runs, L(N, D) = a N^-alpha + b D^-beta, L being the conditional loss of the benchmark
answers; (2) a score law on well-trained models, S = c / (1 + exp(-gamma (L - l))) + d. Inverting (2) gives
the loss L_hat that goes with score S; inverting (1) at a fixed D0 gives N_hat. The Densing law: the envelope
of record-setting densities grows exponentially with release date, ln rho_max(t) = A t + B (A ~ 0.007/day,
doubling in ~3.5 months).

Deviations / choices: the loss step uses the shared fitting core (Huber on log residuals, L-BFGS from a grid,
bootstrap CIs); the score step is least squares on linear residuals (scores can be 0). Inversion never returns
a silent number: a score the sigmoid never reaches is "out_of_range" (no value); a loss below the reference's
floor b D0^-beta is "saturated" (no finite N_hat); a score or N_hat outside the range the reference was
fitted on is returned but flagged "extrapolated". The densing fit is ordinary least squares of ln rho on days
(the paper's regression; ``delta=None``) with bootstrap CIs; besides the paper's record-setting envelope it
offers all points and per-quarter maxima as robustness variants. The efficiency formulas for MoE / quantised
models are not implemented. Defaults: D0 = 5T tokens and day 0 = 2023-02-24 (Llama-1), from the Nature
version (arXiv v2 used D0 = 1T; densities are not comparable across the two).

The 51-model (date, density) table of the paper's Fig. 1 ships as ``data/densing_models.csv`` (digitised; its
header states the provenance). ``densing_fit()`` on it gives A = 0.00654/day, R^2 = 0.934, doubling 106 days.

    fit = densing_fit()                                            # envelope fit of the shipped table
    curve = ReferenceCurve.fit(loss_runs, score_points, d0=5e12)   # or ReferenceCurve.load("curve.json")
    est = curve.density(score=0.62, params=1.5e9)                  # Estimate(density=..., flag="ok", ...)
"""

from __future__ import annotations

import datetime as dt
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lmlab.core.config import param
from lmlab.laws.base import Columns, Fit, Law, Param, as_columns
from lmlab.laws.table import number_column, where

DATA = Path(__file__).parent / "data" / "densing_models.csv"
ORIGIN = "2023-02-24"  # Llama-1 release, day 0 of the paper's time axis


@dataclass
class Config:
    d0_tokens: float = param(5e12, "training tokens D0 at which the reference family defines N_hat",
                             source="Nature MI version, Methods (arXiv v2: 1e12)")
    origin: str = param(ORIGIN, "day 0 of the densing-law time axis (ISO date)",
                        source="paper Fig. 1 (Llama-1 release)")
    variant: str = param("envelope", "points the densing law is fitted on: record-setting envelope | all | "
                         "per-quarter maxima", source="paper Fig. 1 (envelope)",
                         choices=("envelope", "all", "quarterly"))
    chance: float = param(0.0, "lower bound of the score floor d (chance accuracy of the benchmark)")
    n_boot: int = param(1000, "bootstrap resamples for confidence intervals")
    seed: int = param(0, "bootstrap seed")


# ------------------------------------------------------------------ the two reference steps
def loss_form(n: np.ndarray, d: np.ndarray, a: float, alpha: float, b: float, beta: float) -> np.ndarray:
    """Conditional benchmark loss of a reference model with n parameters trained on d tokens (paper eq. 2)."""
    return a * n ** -alpha + b * d ** -beta


def score_form(loss: np.ndarray, c: float, gamma: float, l: float, d: float) -> np.ndarray:
    """Benchmark score from conditional loss (paper eq. 3); gamma < 0 when the score falls as loss rises."""
    return c / (1 + np.exp(-gamma * (loss - l))) + d


LOSS_LAW = Law("density_loss", loss_form,
               (Param("a", 1e-3, 1e7, log=True, init=(1.0, 30.0, 1e3)),
                Param("alpha", 0.01, 2.0, init=(0.1, 0.3, 0.7)),
                Param("b", 1e-3, 1e9, log=True, init=(1.0, 30.0, 1e3)),
                Param("beta", 0.01, 2.0, init=(0.1, 0.3, 0.7))),
               x=("params", "tokens"), y="loss", formula="loss = a * params^-alpha + b * tokens^-beta",
               positive=("params", "tokens"), source="arXiv:2412.04315 eq. 2")


def score_law(chance: float = 0.0) -> Law:
    """The sigmoid score step with floor d >= ``chance``."""
    if not 0 <= chance < 1:
        raise ValueError(f"chance accuracy must be in [0, 1), got {chance}")
    return Law("density_score", score_form,
               (Param("c", 1e-3, 1.0, init=(0.3, 0.9)),
                Param("gamma", -200.0, 200.0, init=(-30, -10, -3, -1, 3)),
                Param("l", 0.0, 20.0, init=(0.5, 1.0, 2.0, 4.0)),
                Param("d", chance, 1.0, init=(chance, chance + 0.1))),
               x=("loss",), y="score", formula="score = c / (1 + exp(-gamma (loss - l))) + d",
               residual="linear", delta=None, source="arXiv:2412.04315 eq. 3")


SCORE_LAW = score_law()


@dataclass
class Estimate:
    score: float  # the benchmark score given
    params: float | None  # the model's own parameter count (None when only N_hat was asked for)
    loss: float | None  # L_hat: the conditional loss the score law maps to this score
    effective_params: float | None  # N_hat; None when undefined (flag out_of_range / saturated)
    density: float | None  # N_hat / params
    flag: str  # ok | extrapolated | out_of_range | saturated
    note: str = ""  # why the flag was raised


class ReferenceCurveError(ValueError):
    """A reference curve file that exists but is not a curve written by ``ReferenceCurve.save``."""


def _curve_json(path: Path) -> dict[str, Any]:
    """The JSON object of a reference curve file; anything else raises ReferenceCurveError naming the file."""
    expected = "expected a reference curve JSON written by ReferenceCurve.save"
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ReferenceCurveError(f"{path}: not a UTF-8 JSON file (byte 0x{data[e.start]:02x} at offset "
                                  f"{e.start}); {expected}") from None
    try:
        out = json.loads(text)
    except json.JSONDecodeError as e:
        raise ReferenceCurveError(f"{path}: not valid JSON at line {e.lineno}, column {e.colno} ({e.msg}); "
                                  f"{expected}") from None
    if not isinstance(out, dict):
        raise ReferenceCurveError(f"{path}: holds a JSON {type(out).__name__}, not an object; {expected}")
    return out


@dataclass
class ReferenceCurve:
    loss: dict[str, float]  # a, alpha, b, beta of the loss step
    score: dict[str, float]  # c, gamma, l, d of the score step
    d0: float  # tokens at which N_hat is defined
    score_range: tuple[float, float]  # scores the score step was fitted on
    params_range: tuple[float, float]  # model sizes the loss step was fitted on
    meta: dict[str, Any] = field(default_factory=dict)  # fit quality, provenance

    @classmethod
    def fit(cls, loss_points: Any, score_points: Any, d0: float, *, chance: float = 0.0, n_boot: int = 200,
            seed: int = 0) -> ReferenceCurve:
        """Fit both steps: ``loss_points`` has columns params, tokens, loss; ``score_points`` loss, score."""
        if not d0 > 0:
            raise ValueError(f"d0 (reference training tokens) must be > 0, got {d0}")
        lf = LOSS_LAW.fit(loss_points, n_boot=n_boot, seed=seed)
        sf = score_law(chance).fit(score_points, n_boot=n_boot, seed=seed)
        s, n = sf.data["score"], lf.data["params"]
        meta = {"loss_r2": lf.r2, "score_r2": sf.r2, "loss_ci": lf.ci, "score_ci": sf.ci,
                "n_loss_points": len(n), "n_score_points": len(s)}
        return cls(lf.params, sf.params, float(d0), (float(s.min()), float(s.max())),
                   (float(n.min()), float(n.max())), meta)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, path: str | Path) -> Path:
        from lmlab.core.results import write_json

        return write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> ReferenceCurve:
        """A curve written by :meth:`save`; a binary, non-JSON or incomplete file raises ReferenceCurveError."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"reference curve file not found: {path}")
        data = _curve_json(path)
        need = {"loss": ("a", "alpha", "b", "beta"), "score": ("c", "gamma", "l", "d")}
        for key, names in need.items():
            missing = [k for k in names if k not in data.get(key, {})]
            if missing:
                raise ReferenceCurveError(f"{path}: reference curve lacks {key} parameters {missing}")
        for key in ("d0", "score_range", "params_range"):
            if key not in data:
                raise ReferenceCurveError(f"{path}: reference curve lacks {key!r}")
        return cls(data["loss"], data["score"], float(data["d0"]), tuple(data["score_range"]),
                   tuple(data["params_range"]), data.get("meta", {}))

    def reference_loss(self, params: float, tokens: float | None = None) -> float:
        """L(N, D) of the reference family (D defaults to D0)."""
        return float(loss_form(np.float64(params), np.float64(self.d0 if tokens is None else tokens),
                               **self.loss))

    def density(self, score: float, params: float | None = None) -> Estimate:
        """N_hat for ``score`` and, with ``params``, the density N_hat / params, with a validity flag."""
        if params is not None and not params > 0:
            raise ValueError(f"params must be > 0, got {params}")
        if not math.isfinite(score):
            raise ValueError(f"score must be finite, got {score}")
        c, gamma, l, d = (self.score[k] for k in ("c", "gamma", "l", "d"))
        a, alpha, b, beta = (self.loss[k] for k in ("a", "alpha", "b", "beta"))
        est = Estimate(score, params, None, None, None, "out_of_range")
        if not d < score < c + d:
            est.note = f"score {score} outside the score law's open range ({d:.4g}, {c + d:.4g})"
            return est
        est.loss = l - math.log(c / (score - d) - 1) / gamma  # paper: L_hat = l - ln(c / (S - d) - 1) / gamma
        rest = est.loss - b * self.d0 ** -beta
        if rest <= 0:
            est.flag = "saturated"
            est.note = (f"loss {est.loss:.4g} is below the reference floor b D0^-beta = "
                        f"{b * self.d0 ** -beta:.4g}: no finite reference model reaches it")
            return est
        est.effective_params = (rest / a) ** (-1 / alpha)
        est.density = est.effective_params / params if params is not None else None
        lo, hi = self.score_range
        nlo, nhi = self.params_range
        est.flag = "ok"
        if not lo <= score <= hi:
            est.flag = "extrapolated"
            est.note = f"score {score} outside the fitted scores [{lo:.4g}, {hi:.4g}]"
        elif not nlo <= est.effective_params <= nhi:
            est.flag = "extrapolated"
            est.note = f"N_hat {est.effective_params:.4g} outside the reference sizes [{nlo:.4g}, {nhi:.4g}]"
        return est


# ------------------------------------------------------------------ the Densing law
def days_since(dates: Any, origin: str = ORIGIN) -> np.ndarray:
    """Days from ``origin`` to each ISO date (YYYY-MM-DD)."""
    day0 = _date(origin)
    return np.array([(_date(s) - day0).days for s in np.atleast_1d(dates)], dtype=float)


def _date(s: Any) -> dt.date:
    try:
        return dt.date.fromisoformat(str(s).strip())
    except ValueError:
        raise ValueError(f"expected an ISO date YYYY-MM-DD, got {s!r}") from None


def envelope(days: np.ndarray, rho: np.ndarray) -> np.ndarray:
    """Boolean mask of record-setting points: in date order, the best point of each date enters when it beats
    every earlier density (ties: the first listed). The paper fits its trend line on these."""
    keep = np.zeros(len(days), dtype=bool)
    best = -np.inf
    for day in np.unique(days):
        idx = np.flatnonzero(days == day)
        top = idx[np.argmax(rho[idx])]  # argmax returns the first of equal values
        if rho[top] > best:
            keep[top], best = True, rho[top]
    return keep


def quarterly_maxima(days: np.ndarray, rho: np.ndarray, origin: str = ORIGIN) -> np.ndarray:
    """Boolean mask of the densest point of each calendar quarter."""
    day0 = _date(origin)
    dates = [day0 + dt.timedelta(days=float(t)) for t in days]
    quarters = np.array([(d.year, (d.month - 1) // 3) for d in dates])
    keep = np.zeros(len(days), dtype=bool)
    for q in {tuple(q) for q in quarters}:
        idx = np.flatnonzero(np.all(quarters == q, axis=1))
        keep[idx[np.argmax(rho[idx])]] = True
    return keep


def _days(cols: Columns, origin: str) -> np.ndarray:
    """Column ``days`` when given, else the days from ``origin`` to each ``date``; a bad cell names its row."""
    if "days" in cols:
        return number_column(cols, "days")
    days = []
    for i, s in enumerate(cols["date"].tolist()):
        try:
            days.append(days_since(s, origin)[0])
        except ValueError as e:
            raise ValueError(f"column 'date' at {where(cols, i, 'date')}: {e}") from None
    return np.array(days, dtype=float)


def densing_points(table: Any, variant: str = "envelope", origin: str = ORIGIN) -> Columns:
    """Columns ``days``, ``density`` (+ ``model`` when given) of the points a variant fits on. ``table`` needs
    ``density`` and either ``date`` (ISO) or ``days``."""
    cols = as_columns(table)
    if "density" not in cols or not ("date" in cols or "days" in cols):
        raise ValueError(f"a densing table needs columns 'density' and 'date' (or 'days'); "
                         f"got {sorted(cols)}")
    days = _days(cols, origin)
    rho = number_column(cols, "density")
    if np.any(rho <= 0):
        i = int(np.flatnonzero(rho <= 0)[0])
        raise ValueError(f"column 'density' must be > 0 (its log is taken), got {rho[i]} at "
                         f"{where(cols, i, 'density')}")
    masks = {"all": lambda: np.ones(len(rho), dtype=bool), "envelope": lambda: envelope(days, rho),
             "quarterly": lambda: quarterly_maxima(days, rho, origin)}
    if variant not in masks:
        raise ValueError(f"densing variant {variant!r} is not one of {sorted(masks)}")
    keep = masks[variant]()
    out = {"days": days[keep], "density": rho[keep]}
    if "model" in cols:
        out["model"] = cols["model"][keep]
    return out


def densing_law(variant: str = "envelope", origin: str = ORIGIN) -> Law:
    """ln rho = A t + B on the chosen points; derived: doubling time in days and months, rho at day 0."""
    return Law(f"densing_{variant}" if variant != "envelope" else "densing",
               lambda t, A, B: np.exp(A * t + B),
               (Param("A", -0.1, 0.1, init=(0.0, 0.005)), Param("B", -20.0, 20.0)),
               x=("days",), y="density", formula=f"ln density = A days + B (days since {origin}, {variant})",
               delta=None, derived={"doubling_days": lambda p: math.log(2) / p["A"],
                                    "doubling_months": lambda p: math.log(2) / p["A"] / 30.44,
                                    "density_day0": lambda p: math.exp(p["B"])},
               prepare=lambda cols: densing_points(cols, variant, origin), source="arXiv:2412.04315 Fig. 1")


def load_models(path: str | Path | None = None) -> Columns:
    """The shipped 51-model (model, date, density) table, or a table of the same shape."""
    return as_columns(DATA if path is None else path)


def densing_fit(table: Any = None, cfg: Config | None = None) -> Fit:
    """Fit the Densing law (default: the shipped table, record-setting envelope, 1000 bootstrap resamples)."""
    cfg = cfg or Config()
    return densing_law(cfg.variant, cfg.origin).fit(load_models() if table is None else table,
                                                    n_boot=cfg.n_boot, seed=cfg.seed)


LAWS = {"densing": densing_law("envelope"), "densing_all": densing_law("all"),
        "densing_quarterly": densing_law("quarterly"), "density_loss": LOSS_LAW, "density_score": SCORE_LAW}
