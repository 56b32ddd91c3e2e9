"""lmlab: recent transformer and LLM research methods as tested components (``lmlab VERB --help``).

The verb -> module table is imported lazily, so ``lmlab list`` never imports torch. Each verb module defines
``add_arguments(parser)`` and ``run(args) -> int`` (the exit code), or ``add_<verb>_arguments`` / ``run_<verb>``
when one module serves two verbs. Every verb parses its own flags only: ``lmlab VERB --help`` lists them all.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

VERBS = {  # verb: (module, one-line help)
    "list": ("lmlab.cli.catalog", "list registered methods by family (imports no torch)"),
    "info": ("lmlab.cli.catalog", "show a method's paper, docstring, config table and last reproduction gates"),
    "train": ("lmlab.cli.train", "run a training recipe: lm | task | acdit | adapter (TOML config + --set overrides)"),
    "adapter": ("lmlab.cli.adapter", "show a trained adapter (info) or fold it into its base model (merge)"),
    "generate": ("lmlab.cli.generate", "generate text from any model lmlab.load reads, plainly or speculatively"),
    "serve": ("lmlab.cli.serve", "serve a model over an OpenAI-compatible HTTP API (chat and text completions)"),
    "pipeline": ("lmlab.cli.pipeline", "run an LLM data pipeline over a JSONL file (resumable, errors file, ledger)"),
    "sample": ("lmlab.cli.sample", "sample an image grid from an ACDiT run"),
    "eval": ("lmlab.cli.eval", "accuracy per task of a model trained with `lmlab train task`"),
    "compress": ("lmlab.cli.compress", "quantize a model (rtn | hadamard | flatquant) and save it"),
    "fit": ("lmlab.cli.fit", "fit an empirical law to a CSV/JSON table of points"),
    "repro": ("lmlab.cli.repro", "run a paper reproduction (or all) and check its gates"),
    "bench": ("lmlab.cli.bench", "run an A-vs-B benchmark and record the ratio"),
}


def build_parser(verb: str) -> tuple[argparse.ArgumentParser, object]:
    """The parser of one verb and its module."""
    module = importlib.import_module(VERBS[verb][0])
    parser = argparse.ArgumentParser(prog=f"lmlab {verb}", description=VERBS[verb][1])
    (getattr(module, f"add_{verb}_arguments", None) or module.add_arguments)(parser)
    return parser, module


def log_to_stderr() -> None:
    """lmlab's progress and warnings (``logging`` under "lmlab") go to stderr, so stdout keeps the results."""
    log = logging.getLogger("lmlab")
    if not any(getattr(h, "lmlab_cli", False) for h in log.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler.lmlab_cli = True
        log.addHandler(handler)
    log.setLevel(logging.INFO)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    top = argparse.ArgumentParser(prog="lmlab", description=__doc__.splitlines()[0])
    top.add_argument("verb", choices=list(VERBS), metavar="VERB",
                     help="; ".join(f"{v}: {h}" for v, (_, h) in VERBS.items()))
    if not argv or argv[0] in ("-h", "--help"):
        top.print_help()
        return 0
    verb = argv[0]
    if verb not in VERBS:
        top.error(f"unknown verb {verb!r}; choose from {', '.join(VERBS)}")
    parser, module = build_parser(verb)
    args = parser.parse_args(argv[1:])
    log_to_stderr()
    try:
        return int((getattr(module, f"run_{verb}", None) or module.run)(args) or 0)
    except (ValueError, KeyError, FileNotFoundError, ModuleNotFoundError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"lmlab {verb}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
