"""``lmlab generate``: decode text from any model ``lmlab.load`` reads, plainly or speculatively.

    lmlab generate --model runs/tiny --prompt "In the beginning" --max-new-tokens 64
    lmlab generate --model smollm2-135m --chat --prompt "Name three rivers." --decoder gsd --draft skip:odd
    lmlab generate --model runs/big --decoder chain_sd --draft runs/small --sample --temperature 0.8
    lmlab generate --model runs/big --decoder gsd --draft runs/small --set depth=6 --set merge_context=0
    lmlab generate --model runs/prm-adapter --decoder best_of_n --set n=16 --scorer implicit:runs/prm-adapter

``--model`` is a run folder of ``lmlab train``, a saved model folder, a Hugging Face folder, a ``.gguf`` file or
a known name (``smollm2-135m``). ``--decoder`` is a decoding registry name (``lmlab list decoding``).
``--draft`` is another model with the same tokenizer or a layer-skip spec (``skip:0,2,4``, ``skip:3-9``,
``skip:odd``). ``--set key=value`` overrides a field of the decoder's config (``lmlab info gsd`` lists them).
``best_of_n`` / ``weighted_vote`` sample ``n`` candidates and pick by ``--scorer`` (``lmlab.recipes.scorers``).
Prints the text, then the decoding stats. The library call is ``lmlab.recipes.generate.generate_text``.
"""

from __future__ import annotations

import argparse

from lmlab.decoding import token_decoders


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", "--checkpoint", dest="model", required=True,
                   help="run folder, model folder, Hugging Face folder, .gguf or a known name (smollm2-135m)")
    p.add_argument("--prompt", required=True, help="prompt text")
    p.add_argument("--chat", action="store_true", help="wrap the prompt in the tokenizer's chat template")
    p.add_argument("--max-new-tokens", type=int, default=64, help="tokens to generate")
    p.add_argument("--decoder", choices=token_decoders(), default="greedy", help="decoding registry name")
    p.add_argument("--draft", default=None, help="draft model (same tokenizer) or skip:0,2,4 (chain_sd/tree_sd/gsd)")
    p.add_argument("--sample", action="store_true", help="speculative decoders: sample instead of greedy")
    p.add_argument("--temperature", type=float, default=None, help="sampling temperature (> 0) [default: 1.0]")
    p.add_argument("--top-k", type=int, default=None, help="sampling: keep the k most likely tokens")
    p.add_argument("--top-p", type=float, default=None, help="sampling: nucleus mass")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument("--no-stop", action="store_true", help="do not stop at the tokenizer's end-of-text token")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default $LMLAB_THREADS or 1)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="decoder config override, e.g. depth=6, budget=24 or n=16")
    p.add_argument("--scorer", default=None, help="best_of_n / weighted_vote: implicit:ADAPTER, "
                   "implicit:POLICY,REFERENCE (implicit PRM) or likelihood")
    p.add_argument("--scorer-set", dest="scorer_overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="implicit PRM config override, e.g. aggregation=sum or beta=0.001")
    p.add_argument("--step-sep", default=None, help="text ending a reasoning step (one token, e.g. a newline)")
    p.add_argument("--answer", default=None, help="weighted_vote: regular expression of the final answer "
                   "(its first group if any); default: whole continuations vote")


def run(args: argparse.Namespace) -> int:
    from lmlab.core.runtime import set_threads
    from lmlab.recipes.generate import generate_text

    set_threads(args.threads)
    text, stats = generate_text(args.model, args.prompt, decoder=args.decoder, draft=args.draft, chat=args.chat,
                                max_new_tokens=args.max_new_tokens, sample=args.sample,
                                temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                                overrides=args.overrides, seed=args.seed, stop_at_eos=not args.no_stop,
                                scorer=args.scorer, scorer_overrides=args.scorer_overrides,
                                step_sep=args.step_sep, answer=args.answer)
    print(text)
    print()
    for k, v in stats.summary().items():
        print(f"{k:>24}: {v:.4f}" if isinstance(v, float) else f"{k:>24}: {v}")
    return 0
