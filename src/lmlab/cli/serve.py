"""``lmlab serve``: an OpenAI-compatible HTTP server over any model ``lmlab.load`` reads.

    lmlab serve --model runs/tiny
    lmlab serve --model smollm2-135m --decoder gsd --draft skip:odd --set depth=6 --port 8001
    LMLAB_KEY=secret lmlab serve --model runs/tiny --api-key-env LMLAB_KEY
    lmlab serve --model runs/tiny --adapter legal=runs/tiny-legal --adapter chat=runs/tiny-chat

Endpoints: GET /health, GET /v1/models, POST /v1/chat/completions, POST /v1/completions (``stream`` supported).
Any OpenAI client reaches it with ``base_url="http://127.0.0.1:8000/v1"``; the model name is the ``--model``
value. ``--adapter NAME=PATH`` (repeatable) serves each adapter (``lmlab train adapter``) on the one loaded base
model: a request with ``model=NAME`` runs that adapter, one with the ``--model`` value runs none, and
/v1/models lists them all. It listens on loopback unless ``--host`` says otherwise. The library call is
``lmlab.serve.run``.
"""

from __future__ import annotations

import argparse
import os

from lmlab.decoding import token_decoders


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True,
                   help="run folder, model folder, Hugging Face folder, .gguf or a known name (smollm2-135m)")
    p.add_argument("--decoder", choices=token_decoders(rerank=False), default="greedy",
                   help="decoding registry name; temperature 0 requests decode greedily, > 0 sample")
    p.add_argument("--draft", default=None, help="draft model (same tokenizer) or skip:0,2,4 (chain_sd/tree_sd/gsd)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="decoder config override, e.g. depth=6")
    p.add_argument("--adapter", dest="adapters", action="append", default=[], metavar="NAME=PATH",
                   help="serve the adapter in PATH on the base model as model NAME (repeatable)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (loopback by default)")
    p.add_argument("--port", type=int, default=8000, help="port to listen on")
    p.add_argument("--api-key-env", default=None, metavar="VAR",
                   help="environment variable holding the API key clients must send as a Bearer token")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default $LMLAB_THREADS or 1)")
    p.add_argument("--check", action="store_true",
                   help="load the model, build the decoder and the app, answer one request in process, then exit "
                        "without listening (checks a deployment's settings)")


def run(args: argparse.Namespace) -> int:
    from lmlab.core.runtime import set_threads
    from lmlab.serve import run as serve

    api_key = None
    if args.api_key_env is not None:
        api_key = os.environ.get(args.api_key_env)
        if not api_key:
            raise ValueError(f"--api-key-env {args.api_key_env}: that environment variable is unset or empty")
    set_threads(args.threads)
    serve(args.model, decoder=args.decoder, draft=args.draft, overrides=args.overrides, host=args.host,
          port=args.port, api_key=api_key, check=args.check, adapters=args.adapters,
          on_ready=lambda url: print(f"{'checked' if args.check else 'serving'} {args.model} at {url}", flush=True))
    return 0
