"""``lmlab sample --model runs/acdit --class 3 --out grid.png``: images from an ACDiT run (``lmlab train acdit``).

The library call is ``lmlab.recipes.acdit.sample_grid``.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", "--checkpoint", dest="model", default="runs/acdit",
                   help="run folder of `lmlab train acdit`")
    p.add_argument("--class", dest="classes", type=int, action="append", default=None,
                   help="class id to generate (repeatable; default: every class)")
    p.add_argument("--n", type=int, default=8, help="images per class")
    p.add_argument("--out", type=Path, default=Path("grid.png"), help="PNG grid to write")
    p.add_argument("--steps", type=int, default=None, help="solver steps per block (default: the job's)")
    p.add_argument("--guidance", type=float, default=None, help="classifier-free guidance scale")
    p.add_argument("--solver", choices=["ddim", "dpm++2m"], default=None, help="few-step solver")
    p.add_argument("--seed", type=int, default=0, help="noise seed")
    p.add_argument("--scale", type=int, default=4, help="pixel upscaling in the grid")


def run(args: argparse.Namespace) -> int:
    from lmlab.core.runtime import set_threads
    from lmlab.recipes.acdit import sample_grid

    set_threads()
    path, n, classes = sample_grid(args.model, args.out, args.classes, args.n, args.steps, args.guidance,
                                   args.solver, args.seed, args.scale)
    print(f"wrote {n} samples of class(es) {classes} to {path}")
    return 0
