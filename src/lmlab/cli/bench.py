"""``lmlab bench <name>|all [--quick]``: run A-vs-B benchmarks from ``bench/<name>.py`` and print their ratios.

``name`` is a registered benchmark (a file name under bench/, without .py), not a path. Full runs write
``bench/results/<name>.json``; ``--quick`` only checks the plumbing and writes nothing. The harness and the
A/B loop are ``lmlab.harness``.
"""

from __future__ import annotations

import argparse
import sys

from lmlab import harness
from lmlab.core.runtime import use_device


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", help="benchmark file name under bench/ (without .py), or 'all'")
    p.add_argument("--quick", action="store_true", help="short run to check the plumbing; results not written")
    p.add_argument("--device", default=None, help="cpu | cuda | cuda:N | mps | auto (default: $LMLAB_DEVICE or cpu)")


def run(args: argparse.Namespace) -> int:
    use_device(args.device)
    for rec in harness.run_benches(args.name, args.quick, log=lambda msg: print(msg, file=sys.stderr, flush=True)):
        print(f"{rec['name']}: {rec['a']} vs {rec['b']} ({rec['metric']})")
        for c in rec["cases"]:
            ratio = f"{c['ratio']:.3f}" if c["ratio"] is not None else "n/a"
            print(f"  {c['label']:<24} A {c['a_value']:.4g}  B {c['b_value']:.4g}  ratio {ratio}")
    return 0
