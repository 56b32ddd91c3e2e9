"""Fitting core of the laws family: a ``Law`` is a named functional form with parameter bounds, and
``Law.fit(points)`` returns a ``Fit`` (parameters, bootstrap confidence intervals, residuals, R^2,
``predict``, ``plot``, JSON output).

The recipe is the one used to fit and refit Chinchilla's law (Hoffmann et al. 2022, arXiv 2203.15556,
App. D.2; Besiroglu et al. 2024, "Chinchilla Scaling: A replication attempt", arXiv 2404.10102):

- residuals on a log scale, r_i = ln y_i - ln f(x_i; theta) (``residual="log"``; ``"linear"`` for quantities
  such as accuracies that can be zero); loss = mean Huber_delta(r_i) with delta = 1e-3 (``delta=None``: least
  squares, i.e. ordinary regression when the law is linear in its parameters);
- a grid of initialisations (the product of each parameter's ``init`` values, else three points spread over
  its bounds), evaluated at once; L-BFGS-B (scipy, central-difference gradients) from the ``refine`` best grid
  points (Epoch's replication starts from every grid point; screening first is far cheaper, and on the
  laws tested here it finds the same optimum), keeping the best end point; a parameter with ``log=True`` is
  optimised as ln(value), which keeps coefficients spanning decades well conditioned;
- confidence intervals from a case bootstrap: refits on points resampled with replacement (started from the
  best fit), percentile interval of every parameter and of every derived quantity (e.g. a doubling time);
- R^2 in the space of the residuals (of ln y for log residuals), the number papers quote for log-linear laws.

Points are a dict of columns, a list of records, or a CSV/JSON file (``read_table`` in ``laws.table``, which
also fixes how rows are named in errors: the file line, or the 1-based row of in-memory points). A law may
``prepare`` raw columns (parse dates, select an envelope) before they are checked. Bad input raises ValueError
naming the problem: missing columns, empty, non-numeric or non-finite values (with their row), non-positive
values where logs are taken, fewer distinct inputs (x values, or x tuples of a multi-input law) than
parameters. Bootstrap resamples with fewer distinct inputs than parameters are skipped for the same reason.

    law = power_law("bopt", x="compute", y="batch")              # y = k * x^e
    fit = law.fit("runs.csv", n_boot=500)
    fit.params["e"], fit.ci["e"], fit.r2; fit.predict([1e18, 1e19]); fit.plot("fit.png"); fit.save("fit.json")
"""

from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy.optimize import minimize

from lmlab.laws.table import Columns, as_columns, number_column, where
from lmlab.laws.table import read_table as read_table  # re-exported: the family's one table reader


@dataclass(frozen=True)
class Param:
    name: str
    lo: float  # lower bound (finite)
    hi: float  # upper bound (finite)
    log: bool = False  # optimise ln(value); needs lo > 0
    init: tuple[float, ...] = ()  # starting values of the grid; default: 3 points spread over [lo, hi]

    def __post_init__(self) -> None:
        if not (math.isfinite(self.lo) and math.isfinite(self.hi) and self.lo < self.hi):
            raise ValueError(f"parameter {self.name!r}: bounds must be finite with lo < hi, "
                             f"got ({self.lo}, {self.hi})")
        if self.log and self.lo <= 0:
            raise ValueError(f"parameter {self.name!r}: log=True needs lo > 0, got lo={self.lo}")
        bad = [v for v in self.init if not self.lo <= v <= self.hi]
        if bad:
            raise ValueError(f"parameter {self.name!r}: init {bad} outside bounds ({self.lo}, {self.hi})")

    def grid(self) -> tuple[float, ...]:
        if self.init:
            return self.init
        if self.log:
            return tuple(float(v) for v in np.exp(np.linspace(math.log(self.lo), math.log(self.hi), 5)[1:-1]))
        return tuple(float(v) for v in np.linspace(self.lo, self.hi, 5)[1:-1])

    def to_z(self, v: float) -> float:  # optimiser coordinate
        return math.log(v) if self.log else v

    def from_z(self, z: float) -> float:
        return math.exp(z) if self.log else z


def one_blas_thread() -> contextlib.AbstractContextManager:
    """L-BFGS-B calls BLAS on tiny vectors; a multi-threaded BLAS on a busy machine makes that ~30x slower."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # optional: without it the fit is only slower
        return contextlib.nullcontext()
    return threadpool_limits(1, user_api="blas")


def huber(r: np.ndarray, delta: float | None) -> np.ndarray:
    """Huber loss, quadratic within +-delta and linear outside; delta=None: 0.5 r^2."""
    a = np.abs(r)
    if delta is None:
        return 0.5 * r * r
    return np.where(a <= delta, 0.5 * r * r, delta * (a - 0.5 * delta))


@dataclass(frozen=True)
class Law:
    name: str
    fn: Callable[..., np.ndarray]  # fn(*x_columns, *params) -> predicted y, vectorised over points
    params: tuple[Param, ...]
    x: tuple[str, ...]  # input column names, in fn's argument order
    y: str  # output column name
    formula: str = ""  # human-readable form, e.g. "y = k * x^e"
    residual: str = "log"  # "log": ln y - ln f; "linear": y - f
    delta: float | None = 1e-3  # Huber delta on the residuals; None = least squares
    positive: tuple[str, ...] = ()  # x columns that must be > 0 (logs or powers taken)
    derived: Mapping[str, Callable[[dict[str, float]], float]] = field(default_factory=dict)
    prepare: Callable[[Columns], Columns] | None = None  # raw columns -> fit columns (parse, select)
    source: str = ""  # where the functional form comes from

    def __post_init__(self) -> None:
        if self.residual not in ("log", "linear"):
            raise ValueError(f"law {self.name!r}: residual must be 'log' or 'linear', got {self.residual!r}")
        if self.delta is not None and self.delta <= 0:
            raise ValueError(f"law {self.name!r}: Huber delta must be > 0 or None, got {self.delta}")

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.params]

    # ------------------------------------------------------------ input
    def _checked(self, cols: Columns, needed: Sequence[str]) -> Columns:
        missing = [c for c in needed if c not in cols]
        if missing:
            raise ValueError(f"law {self.name!r} needs columns {list(needed)}; missing {missing} "
                             f"(got {sorted(cols)})")
        out = {}
        for c in needed:
            v = number_column(cols, c, f"law {self.name!r}: ")
            must_be_positive = c in self.positive or (c == self.y and self.residual == "log")
            if must_be_positive and np.any(v <= 0):
                i = int(np.flatnonzero(v <= 0)[0])
                raise ValueError(f"law {self.name!r}: column {c!r} must be > 0 (its log is taken), "
                                 f"got {v[i]} at {where(cols, i, c)}")
            out[c] = v
        return out

    def points(self, points: Any) -> Columns:
        """Validated float columns (x and y) of ``points`` after the law's ``prepare`` step."""
        cols = as_columns(points)
        if self.prepare is not None:
            cols = self.prepare(cols)
        out = self._checked(cols, [*self.x, self.y])
        n, k = len(out[self.y]), len(self.params)
        distinct = int(np.max(self.x_groups(out), initial=-1)) + 1
        if distinct < k:
            what = f"{self.x[0]!r} values" if len(self.x) == 1 else f"{self.x} combinations"
            raise ValueError(f"law {self.name!r} has {k} parameters ({', '.join(self.names)}) but the {n} points "
                             f"have {distinct} distinct {what}: need at least {k}")
        return out

    def x_groups(self, cols: Columns) -> np.ndarray:
        """(n,) integer id of every point's input value (its x tuple for a multi-input law), 0..distinct-1."""
        X = np.stack([cols[c] for c in self.x], axis=1)  # (n, len(x))
        return np.unique(X, axis=0, return_inverse=True)[1].reshape(-1)

    # ------------------------------------------------------------ model and objective
    def evaluate_many(self, X: Sequence[np.ndarray], thetas: np.ndarray) -> np.ndarray:
        """Predictions for m parameter vectors at once: thetas (m, k) -> (m, n). ``fn`` gets x columns shaped
        (1, n) and parameters shaped (m, 1); a form that does not broadcast is evaluated row by row."""
        m, n = len(thetas), len(X[0])
        with np.errstate(all="ignore"):
            try:
                out = self.fn(*(x[None, :] for x in X), *(thetas[:, j:j + 1] for j in range(thetas.shape[1])))
                return np.broadcast_to(np.asarray(out, dtype=float), (m, n)).copy()
            except (ValueError, TypeError):
                rows = [np.broadcast_to(np.asarray(self.fn(*X, *t), dtype=float), (n,)) for t in thetas]
                return np.stack(rows)

    def evaluate(self, X: Sequence[np.ndarray], theta: Sequence[float]) -> np.ndarray:
        return self.evaluate_many(X, np.asarray(theta, dtype=float)[None, :])[0]

    def residuals(self, y: np.ndarray, pred: np.ndarray) -> np.ndarray:
        if self.residual == "linear":
            return y - pred
        with np.errstate(all="ignore"):
            return np.log(y) - np.log(np.maximum(pred, 1e-300))

    def _losses(self, Z: np.ndarray, X: list[np.ndarray], y: np.ndarray, delta: float | None) -> np.ndarray:
        """Objective at m optimiser points Z (m, k) -> (m,); invalid predictions cost 1e12."""
        logs = np.array([p.log for p in self.params])
        r = self.residuals(y[None, :], self.evaluate_many(X, np.where(logs, np.exp(Z), Z)))  # (m, n)
        scale = 1.0 if delta is None else delta  # dividing by delta keeps gradients O(1); same argmin
        out = np.mean(huber(r, delta), axis=1) / scale
        return np.where(np.all(np.isfinite(r), axis=1), out, 1e12)

    def _value_and_grad(self, z: np.ndarray, X: list[np.ndarray], y: np.ndarray, delta: float | None):
        k = len(z)
        h = 1e-6 * np.maximum(1.0, np.abs(z))
        f = self._losses(np.vstack([z, z + np.diag(h), z - np.diag(h)]), X, y, delta)  # central differences
        return f[0], (f[1:k + 1] - f[k + 1:]) / (2 * h)

    def _minimize(self, X: list[np.ndarray], y: np.ndarray, starts: np.ndarray, delta: float | None):
        bounds = [(p.to_z(p.lo), p.to_z(p.hi)) for p in self.params]
        best = None
        for z0 in starts:
            res = minimize(self._value_and_grad, z0, args=(X, y, delta), jac=True, method="L-BFGS-B",
                           bounds=bounds, options={"maxiter": 1000, "ftol": 1e-13, "gtol": 1e-10})
            if best is None or res.fun < best.fun:
                best = res
        return best

    def starts(self, X: list[np.ndarray], y: np.ndarray, delta: float | None, *, refine: int = 8,
               max_grid: int = 20_000, seed: int = 0) -> np.ndarray:
        """The ``refine`` best points (lowest objective) of the initialisation grid, as optimiser vectors."""
        grid = np.array([[p.to_z(v) for p, v in zip(self.params, combo)]
                         for combo in itertools.product(*(p.grid() for p in self.params))])
        if len(grid) > max_grid:
            grid = grid[np.sort(np.random.default_rng(seed).choice(len(grid), max_grid, replace=False))]
        f = np.concatenate([self._losses(grid[i:i + 512], X, y, delta) for i in range(0, len(grid), 512)])
        return grid[np.argsort(f, kind="stable")[:refine]]

    # ------------------------------------------------------------ the fit
    def fit(self, points: Any, *, n_boot: int = 200, level: float = 0.95, seed: int = 0,
            delta: float | None | str = "law", refine: int = 8) -> Fit:
        """Fit the law to ``points``: grid, L-BFGS from the ``refine`` best grid points, bootstrap.
        ``delta="law"`` uses the law's own Huber delta."""
        if not 0 < level < 1:
            raise ValueError(f"confidence level must be in (0, 1), got {level}")
        d = self.delta if delta == "law" else delta
        data = self.points(points)
        X, y = [data[c] for c in self.x], data[self.y]
        with one_blas_thread():
            best = self._minimize(X, y, self.starts(X, y, d, refine=refine, seed=seed), d)
            rng = np.random.default_rng(seed)
            draws, n, k, groups = [], len(y), len(self.params), self.x_groups(data)
            for _ in range(n_boot):
                idx = rng.integers(0, n, n)
                if len(np.unique(groups[idx])) < k:  # too few distinct x values to pin the law down
                    continue
                res = self._minimize([x[idx] for x in X], y[idx], best.x[None, :], d)
                draws.append([p.from_z(v) for p, v in zip(self.params, res.x)])
        theta = np.array([p.from_z(v) for p, v in zip(self.params, best.x)])
        r = self.residuals(y, self.evaluate(X, theta))
        target = np.log(y) if self.residual == "log" else y
        sst = float(np.sum((target - target.mean()) ** 2))
        r2 = 1.0 - float(np.sum(r * r)) / sst if sst > 0 else float("nan")
        return Fit(self, dict(zip(self.names, theta.tolist())), residuals=r, r2=r2, loss=float(best.fun),
                   data=data, boot=np.asarray(draws, dtype=float).reshape(-1, k), level=level, delta=d)


def _interval(samples: np.ndarray, level: float) -> tuple[float, float]:
    s = samples[np.isfinite(samples)]
    if s.size == 0:
        return (float("nan"), float("nan"))
    q = (1 - level) / 2
    return float(np.quantile(s, q)), float(np.quantile(s, 1 - q))


@dataclass
class Fit:
    law: Law
    params: dict[str, float]  # best-fit parameter values
    residuals: np.ndarray  # (n,) in the law's residual space (ln y - ln f for log residuals)
    r2: float  # 1 - SS_res / SS_tot in the residual space
    loss: float  # final objective (mean Huber / delta, or mean 0.5 r^2)
    data: Columns  # the fitted points: x columns and y
    boot: np.ndarray  # (n_boot_ok, n_params) bootstrap parameter draws
    level: float = 0.95  # confidence level of the intervals
    delta: float | None = 1e-3  # Huber delta used

    @property
    def ci(self) -> dict[str, tuple[float, float]]:
        return {name: _interval(self.boot[:, j], self.level) for j, name in enumerate(self.law.names)}

    def _derive(self, params: dict[str, float]) -> dict[str, float]:
        with np.errstate(all="ignore"):
            return {k: float(f(params)) for k, f in self.law.derived.items()}

    @property
    def derived(self) -> dict[str, float]:
        """Quantities computed from the parameters (e.g. doubling time), as declared by the law."""
        return self._derive(self.params)

    @property
    def derived_ci(self) -> dict[str, tuple[float, float]]:
        rows = [self._derive(dict(zip(self.law.names, b))) for b in self.boot]
        return {k: _interval(np.array([r[k] for r in rows]), self.level) for k in self.law.derived}

    def _x(self, points: Any, columns: dict[str, Any]) -> list[np.ndarray]:
        records = isinstance(points, (list, tuple)) and all(isinstance(r, Mapping) for r in points)
        if points is None:
            points = columns
        elif len(self.law.x) == 1 and not (records or isinstance(points, (Mapping, str, Path))):
            points = {self.law.x[0]: points}
        cols = self.law._checked(as_columns(points), self.law.x)
        return [cols[c] for c in self.law.x]

    def predict(self, points: Any = None, **columns: Any) -> np.ndarray:
        """Predicted y at new x: ``predict([..])`` for one-input laws, else ``predict(N=[..], D=[..])``."""
        return self.law.evaluate(self._x(points, columns), list(self.params.values()))

    def band(self, points: Any = None, **columns: Any) -> tuple[np.ndarray, np.ndarray]:
        """Pointwise confidence band of the prediction from the bootstrap draws: (lower, upper)."""
        X = self._x(points, columns)
        if len(self.boot) == 0:
            p = self.law.evaluate(X, list(self.params.values()))
            return p, p
        preds = np.stack([self.law.evaluate(X, b) for b in self.boot])  # (n_boot, n)
        q = (1 - self.level) / 2
        return np.nanquantile(preds, q, axis=0), np.nanquantile(preds, 1 - q, axis=0)

    def to_dict(self) -> dict[str, Any]:
        law = self.law
        return {"law": law.name, "formula": law.formula, "source": law.source, "x": list(law.x), "y": law.y,
                "residual": law.residual, "delta": self.delta, "n": len(self.residuals),
                "params": self.params,
                "ci": self.ci, "level": self.level, "n_boot": len(self.boot), "derived": self.derived,
                "derived_ci": self.derived_ci, "r2": self.r2, "loss": self.loss,
                "residuals": self.residuals.tolist(), "points": {k: v.tolist() for k, v in self.data.items()}}

    def save(self, path: str | Path) -> Path:
        from lmlab.core.results import write_json

        return write_json(path, self.to_dict())

    def summary(self) -> str:
        lines = [f"{self.law.name}: {self.law.formula}   (n={len(self.residuals)}, R^2={self.r2:.4f})"]
        pct = f"{100 * self.level:.0f}%"
        for name, v in {**self.params, **self.derived}.items():
            lo, hi = {**self.ci, **self.derived_ci}[name]
            lines.append(f"  {name:>14} = {v:<12.6g} {pct} CI [{lo:.6g}, {hi:.6g}]")
        return "\n".join(lines)

    def plot(self, path: str | Path, *, title: str | None = None, others: Any = None,
             logx: bool | None = None) -> Path:
        """PNG of the data, the fitted curve and its bootstrap band against the first x column (one curve
        per combination of the other x columns); ``others``: extra points in grey (e.g. points not fitted)."""
        from lmlab.laws.plot import plot_fit

        return plot_fit(self, Path(path), title=title, others=others, logx=logx)


def power_law(name: str, x: str, y: str, *, k: tuple[float, float] = (1e-12, 1e12),
              e: tuple[float, float] = (-5.0, 5.0), source: str = "", delta: float | None = 1e-3) -> Law:
    """y = k * x^e (a straight line in log-log space); derived: none."""
    return Law(name, lambda xv, kv, ev: kv * xv ** ev,
               (Param("k", *k, log=True), Param("e", *e)), x=(x,), y=y, formula=f"{y} = k * {x}^e",
               positive=(x,), source=source, delta=delta)


def available_laws() -> dict[str, tuple[str, Any]]:
    """law name -> (registry name, Law), over every laws-registry module that defines ``LAWS``."""
    import importlib

    from lmlab.laws import REGISTRY

    out: dict[str, tuple[str, Any]] = {}
    for name, entry in REGISTRY.items():
        laws = getattr(importlib.import_module(entry.module), "LAWS", None) or {}
        for law_name, law in laws.items():
            out.setdefault(law_name, (name, law))
    return out


def find_law(name: str):
    laws = available_laws()
    if name in laws:
        return laws[name][1]
    owned = [law for reg, law in laws.values() if reg == name]
    if owned:
        return owned[0]
    raise ValueError(f"unknown law {name!r}; known: {', '.join(sorted(laws))} (see `lmlab fit --list`)")
