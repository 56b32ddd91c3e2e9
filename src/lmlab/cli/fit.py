"""``lmlab fit --law <name> data.csv [--plot out.png] [--out fit.json]``: fit an empirical law to a table.

Laws are the ``LAWS`` tables of the modules behind the ``laws`` registry (``lmlab fit --list`` shows them); a
registry name stands for its module's first law (``capacity_density`` -> ``densing``). The data file is a CSV
with a header row ('#' lines are comments) or JSON (records or columns) holding the law's columns. The fit
(parameters, bootstrap CIs, derived quantities, R^2) is printed; ``--out`` writes it as JSON, ``--plot`` as PNG.

``lmlab fit --reference curve.json --score 0.62 --params 1.5e9`` instead computes a model's capability
density from its benchmark score with a reference curve saved by ``ReferenceCurve.save``.
"""

from __future__ import annotations

import argparse
import json
from typing import Any


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("data", nargs="?", help="CSV or JSON file with the law's columns")
    p.add_argument("--law", help="law name (see --list) or laws registry name")
    p.add_argument("--list", action="store_true", help="list the laws that can be fitted")
    p.add_argument("--plot", help="write a PNG of the data, the fit and its confidence band")
    p.add_argument("--out", help="write the fit as JSON")
    p.add_argument("--n-boot", type=int, default=200, help="bootstrap resamples for the CIs [default: 200]")
    p.add_argument("--level", type=float, default=0.95, help="confidence level [default: 0.95]")
    p.add_argument("--delta", default="law",
                   help="Huber delta on the residuals, 'none' for least squares [default: the law's own]")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    p.add_argument("--reference", help="reference curve JSON: compute a density instead of fitting")
    p.add_argument("--score", type=float, help="benchmark score of the model (with --reference)")
    p.add_argument("--params", type=float, help="parameter count of the model (with --reference)")


def _density(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from lmlab.laws.capacity_density import ReferenceCurve

    if args.score is None:
        raise ValueError("--reference needs --score (the model's benchmark score)")
    est = ReferenceCurve.load(args.reference).density(args.score, args.params)
    print(json.dumps(asdict(est), indent=2))
    return 0


def run(args: argparse.Namespace) -> int:
    from lmlab.laws.base import available_laws, find_law

    if args.list:
        for name, (reg, law) in sorted(available_laws().items()):
            print(f"{name:<20} [{reg}] {law.formula}  ({law.source})")
        return 0
    if args.reference:
        return _density(args)
    if not args.law or not args.data:
        raise ValueError("give --law NAME and a data file (or --list, or --reference with --score)")
    if args.n_boot < 0:
        raise ValueError(f"--n-boot must be >= 0, got {args.n_boot}")
    delta: Any = args.delta
    if delta not in ("law", "none"):
        try:
            delta = float(delta)
        except ValueError:
            raise ValueError(f"--delta must be a number, 'none' or 'law', got {args.delta!r}") from None
    fit = find_law(args.law).fit(args.data, n_boot=args.n_boot, level=args.level, seed=args.seed,
                                 delta=None if delta == "none" else delta)
    print(fit.summary())
    if args.out:
        print(f"wrote {fit.save(args.out)}")
    if args.plot:
        print(f"wrote {fit.plot(args.plot)}")
    return 0
