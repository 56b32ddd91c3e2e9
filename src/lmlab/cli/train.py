"""``lmlab train RECIPE [--config run.toml] [--set train.lr=1e-3 ...] [--train.steps 200 ...]``.

RECIPE is a line of the recipes registry (``lmlab.recipes``): ``lm`` (text), ``task`` (reasoning tasks),
``acdit`` (images). Each recipe's job dataclass gives the flags (``lmlab train lm --help`` lists them all), the
TOML layout and the ``--set`` keys. Launch ``lmlab train lm`` under ``torchrun --nproc_per_node N`` for
DistributedDataParallel; ``--train.device cuda`` trains on a GPU.
"""

from __future__ import annotations

import argparse

from lmlab.core.config import add_job_arguments, job_from_args
from lmlab.recipes import REGISTRY


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="recipe", metavar="RECIPE", required=True)
    for name, entry in REGISTRY.items():
        sp = sub.add_parser(name, help=entry.summary, description=f"{entry.summary} ({entry.paper})")
        add_job_arguments(sp, REGISTRY.config(name), f"TOML file mirroring the {name} job")


def run(args: argparse.Namespace) -> int:
    job = job_from_args(REGISTRY.config(args.recipe), args)
    out = REGISTRY.get(args.recipe)(job)
    for k, v in out.items():
        print(f"{k:>22}: {v:.4f}" if isinstance(v, float) else f"{k:>22}: {v}")
    return 0
