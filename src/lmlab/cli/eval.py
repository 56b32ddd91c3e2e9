"""``lmlab eval --model RUN_DIR [--task countdown3 --task countdown4]``: exact-verifier accuracy per task.

RUN_DIR is a run of ``lmlab train task``; ``--task`` defaults to the task it was trained on. Causal models decode
greedily, bidirectional (masked diffusion) ones with ``--decode.*`` (``lmlab info masked``). The library call
is ``lmlab.recipes.tasks.evaluate_run``.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    from lmlab.core.config import add_arguments as add_config_arguments
    from lmlab.decoding.masked import Config as DecodeConfig
    from lmlab.recipes.tasks import TASKS

    p.add_argument("--model", "--checkpoint", dest="model", type=Path, required=True,
                   help="run folder written by lmlab train task")
    p.add_argument("--task", action="append", default=[],
                   help=f"task spec, repeatable (default: the training task); presets: {', '.join(TASKS)}")
    p.add_argument("--n", type=int, default=500, help="test examples per task")
    p.add_argument("--seed", type=int, default=1_000_003, help="test data seed")
    add_config_arguments(p, DecodeConfig, prefix="decode.")  # --decode.steps, --decode.order, --decode.remask ...


def run(args: argparse.Namespace) -> int:
    from lmlab.core.config import from_args
    from lmlab.core.runtime import set_threads
    from lmlab.decoding.masked import Config as DecodeConfig
    from lmlab.recipes.tasks import evaluate_run

    set_threads()
    decode = from_args(DecodeConfig, argparse.Namespace(**{k.replace("cfg::decode.", "cfg::"): v
                                                           for k, v in vars(args).items()}))
    mode, rows = evaluate_run(args.model, args.task or None, args.n, args.seed, decode)
    print(f"{args.model}: {mode}")
    print(f"{'task':<28} {'n':>6} {'accuracy':>9}")
    for r in rows:
        print(f"{r['task']:<28} {r['n']:>6} {r['accuracy']:>9.3f}")
    return 0
