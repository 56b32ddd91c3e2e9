"""``lmlab compress --method flatquant --bits w4a4kv4 --model smollm2-135m --calib corpus_en --out DIR``.

Quantizes a model with a method of the compression registry and saves it with its tokenizer; ``lmlab.load(DIR)``
reads it back. ``--model``: anything ``lmlab.load`` reads (run folder, Hugging Face folder, .gguf, smollm2-135m).
``--calib``: corpus_en | a UTF-8 text file | none (data-free methods: rtn, hadamard). ``--eval N`` also prints
the perplexity of N validation windows before and after. ``--out`` must be absent, empty or lmlab's own output;
``--overwrite`` writes into any other folder, next to its files, removing none. Methods report progress on
stderr. The library call is ``lmlab.recipes.compress.compress``.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method", required=True, help="compression registry name: rtn | hadamard | flatquant")
    p.add_argument("--bits", default=None, help="w<b>[a<b>][kv<b>], e.g. w4a4kv4, w4a16 (default: method's)")
    p.add_argument("--model", required=True, help="run folder, Hugging Face folder, .gguf or smollm2-135m")
    p.add_argument("--calib", default="corpus_en", help="corpus_en | path to a text file | none")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--overwrite", action="store_true",
                   help="write into a folder holding files lmlab did not write (next to them; nothing is removed)")
    p.add_argument("--nsamples", type=int, default=32, help="calibration windows (methods without nsamples)")
    p.add_argument("--seq-len", type=int, default=512, help="calibration window length for those methods")
    p.add_argument("--seed", type=int, default=0, help="seed of the calibration window offsets")
    p.add_argument("--eval", type=int, default=0, metavar="N", help="validation windows to score (0 = none)")
    p.add_argument("--eval-len", type=int, default=512, help="validation window length")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="method config override, e.g. epochs=5")


def run(args: argparse.Namespace) -> int:
    from lmlab.core.runtime import set_threads
    from lmlab.recipes.compress import compress

    set_threads(args.threads)
    out = compress(args.method, args.model, args.out, bits=args.bits, calib=args.calib, nsamples=args.nsamples,
                   seq_len=args.seq_len, seed=args.seed, eval_windows=args.eval, eval_len=args.eval_len,
                   overrides=args.overrides, overwrite=args.overwrite)
    if "ppl_before" in out:
        bos = "BOS prepended" if out["bos_used"] else "no BOS"
        print(f"perplexity before: {out['ppl_before']:.4f} ({out['eval_tokens']} tokens, {bos})")
        print(f"perplexity after:  {out['ppl_after']:.4f}")
    report, sizes = out["report"], out["sizes"]
    print(f"{args.method} {out['bits']}: {len(report.layers)} blocks, {report.seconds:.1f} s; saved to {args.out}")
    print(f"size: folder {sizes['folder_bytes'] / 1e6:.1f} MB, model {sizes.get('saved_bytes', 0) / 1e6:.1f} MB "
          f"vs full precision {sizes.get('fp_bytes', 0) / 1e6:.1f} MB")
    for note in report.notes:
        print(f"note: {note}")
    return 0
