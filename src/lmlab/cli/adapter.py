"""``lmlab adapter info PATH [--json]`` and ``lmlab adapter merge PATH --out DIR``.

    lmlab train adapter --model runs/lm --adapter.method lora --adapter.rank 8 --train.steps 200 --out runs/lm-lora
    lmlab adapter info runs/lm-lora                  # method, config, base, targets, parameter counts
    lmlab adapter merge runs/lm-lora --out runs/lm-merged

PATH is an adapter folder (kind lmlab-adapter) or a run folder of ``lmlab train adapter`` (its ``model/``).
``info`` reads meta.json only (the base is not loaded). ``merge`` loads base + adapter (``lmlab.load``), folds
the adapter into the base weights and saves the plain base model (an lmlab Transformer folder with its
tokenizer, or a Hugging Face folder); routed adapters (molora, hydralora, malora) cannot be merged. The library
calls are ``lmlab.recipes.adapter.adapter_info`` and ``merge_adapter``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    info = sub.add_parser("info", help="print an adapter's method, config, base, targets and parameter counts")
    info.add_argument("path", help="adapter folder or run folder of `lmlab train adapter`")
    info.add_argument("--json", action="store_true", help="print the information as one JSON object")
    merge = sub.add_parser("merge", help="fold an unrouted adapter into its base and save the plain model")
    merge.add_argument("path", help="adapter folder or run folder of `lmlab train adapter`")
    merge.add_argument("--out", required=True, type=Path, help="output folder (absent, empty or lmlab's own)")
    merge.add_argument("--threads", type=int, default=None, help="torch threads (default $LMLAB_THREADS or 1)")


def run(args: argparse.Namespace) -> int:
    from lmlab.recipes.adapter import adapter_info, merge_adapter

    if args.action == "info":
        info = adapter_info(args.path)
        if args.json:
            print(json.dumps(info, indent=2))
            return 0
        share = info["trainable"] / info["total"] if info["trainable"] and info["total"] else float("nan")
        print(f"{'adapter':>10}: {info['folder']}")
        print(f"{'method':>10}: {info['method']}")
        print(f"{'base':>10}: {info['base']}")
        print(f"{'params':>10}: {info['trainable']} trainable of {info['total']} ({share:.2%})")
        print(f"{'targets':>10}: {len(info['targets'])} linear layers: {', '.join(info['targets'])}")
        for k, v in info["config"].items():
            print(f"{k:>22}: {v}")
        return 0
    from lmlab.core.runtime import set_threads

    set_threads(args.threads)
    out = merge_adapter(args.path, args.out)
    print(f"merged {out['method']} into {out['layers']} layers of {out['base']}; saved {out['params']} parameters "
          f"to {out['out']}")
    return 0
