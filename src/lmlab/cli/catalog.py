"""``lmlab list [FAMILY]`` and ``lmlab info <slug>``: the registries as tables (``list`` imports no torch).

``info`` also takes a reproduction slug (``lmlab info densing_law``) and shows the gates of the last full run.
"""

from __future__ import annotations

import argparse

import lmlab
from lmlab.catalog import info_text, list_text


def add_list_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("family", nargs="?", default=None, help=f"one of {', '.join(lmlab.FAMILIES)}")


def run_list(args: argparse.Namespace) -> int:
    print(list_text(args.family))
    return 0


def add_info_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("slug", help="registry name of the method (see `lmlab list`) or the slug of its reproduction "
                   "folder repro/SLUG/")


def run_info(args: argparse.Namespace) -> int:
    print(info_text(args.slug))
    return 0
