"""``lmlab pipeline NAME --in X.jsonl --out Y.jsonl --llm URL|local:MODEL|replay:FILE [--cache FILE]``.

Runs a pipeline of the pipelines registry (``lmlab list pipelines``) over the records of X into Y with
``lmlab.pipelines.runner.run``: resumable by record id (re-run the same command after a kill), failures to
``Y.errors.jsonl``, provenance per record, a token ledger in ``Y.summary.json``. ``--llm``: an OpenAI-compatible
endpoint (``http://127.0.0.1:8000/v1?model=NAME``, e.g. ``lmlab serve``, vLLM, llama.cpp server; the API key from
``?api_key_env=VAR``), ``local:SPEC`` (any model ``lmlab.load`` reads, in process) or ``replay:FILE`` (answers
only from a response cache). ``--cache FILE`` records every answer in a SQLite cache: a re-run asks nothing twice.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", help="pipelines registry name (lmlab list pipelines)")
    p.add_argument("--in", dest="inp", type=Path, required=True, help="input JSONL, one record per line with an id")
    p.add_argument("--out", type=Path, required=True, help="output JSONL (appended to on a re-run)")
    p.add_argument("--llm", required=True, help="http(s)://HOST/v1?model=NAME | local:SPEC | replay:FILE")
    p.add_argument("--cache", default=None, help="SQLite response cache to record into (and answer from)")
    p.add_argument("--concurrency", type=int, default=4, help="records in flight at once")
    p.add_argument("--id-key", default="id", help="the record field that identifies a record")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="pipeline config override (lmlab info NAME lists the fields)")


def run(args: argparse.Namespace) -> int:
    from lmlab.pipelines import build
    from lmlab.pipelines.runner import run as run_pipeline
    from lmlab.serve import make_client

    pipeline = build(args.name, overrides=args.overrides).pipeline()
    summary = run_pipeline(pipeline, args.inp, args.out, make_client(args.llm, args.cache),
                           concurrency=args.concurrency, id_key=args.id_key)
    led = summary.ledger
    print(f"{summary.pipeline}: {summary.written} written, {summary.failed} failed, {summary.skipped_done} already "
          f"done of {summary.records_in}; {led.requests} requests ({led.cached} cached), "
          f"{led.prompt_tokens} prompt + {led.completion_tokens} completion tokens")
    if summary.failed:
        print(f"failures: {args.out.with_name(args.out.stem + '.errors.jsonl')}")
    return 0
