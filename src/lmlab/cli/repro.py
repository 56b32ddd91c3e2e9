"""``lmlab repro <slug>|all [--smoke] [--set KEY=VALUE]``: run paper reproductions, check their gates, write
results, print the claim-vs-measured table.

Only a full run (no ``--smoke``, no ``--set``) updates the committed record (``results/latest.json``, the dated
copy, INDEX.md and the README sections); reduced runs write their own untracked file. The harness (folder layout,
result files, INDEX.md and README sections) is ``lmlab.harness``.
"""

from __future__ import annotations

import argparse
import sys

from lmlab import harness
from lmlab.core.runtime import use_device


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("slug", help="reproduction folder name under repro/, or 'all'")
    p.add_argument("--smoke", action="store_true",
                   help="reduced run (< 60 s) whose gates check plumbing only; writes results/smoke.json only")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config.toml key; writes results/custom-<date>.json only")
    p.add_argument("--device", default=None, help="cpu | cuda | cuda:N | mps | auto (default: $LMLAB_DEVICE or cpu)")


def run(args: argparse.Namespace) -> int:
    use_device(args.device)
    records = harness.run_repros(args.slug, args.smoke, args.overrides,
                                 log=lambda msg: print(msg, file=sys.stderr, flush=True))
    print(harness.table(records))
    failed = [r["slug"] for r in records if not harness.passed(r)]
    if failed:
        print(f"gates failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0
