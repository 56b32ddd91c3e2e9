"""lmlab: recent transformer and LLM research methods as tested components (``lmlab VERB --help``).

The verb -> "module" table is imported lazily, so ``lmlab list`` never imports torch.

Each verb module defines ``add_arguments(parser)`` and ``run(args) -> int`` (the exit code).
"""

from __future__ import annotations

import argparse
import importlib
import sys

VERBS = {  # verb: (module, one-line help)
    "list": ("lmlab.cli.catalog", "list registered methods by family (imports no torch)"),
    "info": ("lmlab.cli.catalog", "show a method's paper, docstring and config table"),
    "train": ("lmlab.cli.train", "train a model with an objective (TOML config + --set overrides)"),
    "generate": ("lmlab.cli.generate", "generate text from a checkpoint or a pretrained model"),
    "eval": ("lmlab.cli.eval", "accuracy per task difficulty of a model trained with `lmlab train --task`"),
    "compress": ("lmlab.cli.compress", "quantize a model (rtn | hadamard | flatquant) and save it"),
    "fit": ("lmlab.cli.fit", "fit an empirical law to a CSV/JSON table of points"),
    "repro": ("lmlab.cli.repro", "run a paper reproduction (or all) and check its gates"),
    "bench": ("lmlab.cli.bench", "run an A-vs-B benchmark and record the ratio"),
}

# A verb whose arguments name another model or data kind is served by that kind's module, which defines
# add_<verb>_arguments / run_<verb>: (verb, flag, value or None for any value) -> module.
ROUTES = {
    ("train", "--model", "acdit"): "lmlab.cli.acdit",
    ("generate", "--model", "acdit"): "lmlab.cli.acdit",
    ("train", "--task", None): "lmlab.cli.eval",
}


def route(verb: str, argv: list[str]) -> str:
    for (v, flag, value), module in ROUTES.items():
        if v != verb:
            continue
        for i, a in enumerate(argv):
            given = a.split("=", 1)[1] if a.startswith(flag + "=") else (
                argv[i + 1] if a == flag and i + 1 < len(argv) else None)
            if given is not None and value in (None, given):
                return module
    return VERBS[verb][0]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    top = argparse.ArgumentParser(prog="lmlab", description=__doc__.splitlines()[0])
    top.add_argument("verb", choices=sorted(VERBS), metavar="VERB",
                     help="; ".join(f"{v}: {h}" for v, (_, h) in VERBS.items()))
    if not argv or argv[0] in ("-h", "--help"):
        top.print_help()
        return 0
    verb = argv[0]
    if verb not in VERBS:
        top.error(f"unknown verb {verb!r}; choose from {', '.join(VERBS)}")
    module = importlib.import_module(route(verb, argv[1:]))
    parser = argparse.ArgumentParser(prog=f"lmlab {verb}", description=VERBS[verb][1])
    (getattr(module, f"add_{verb}_arguments", None) or module.add_arguments)(parser)
    args = parser.parse_args(argv[1:])
    try:
        return int((getattr(module, f"run_{verb}", None) or module.run)(args) or 0)
    except (ValueError, KeyError, FileNotFoundError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"lmlab {verb}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
