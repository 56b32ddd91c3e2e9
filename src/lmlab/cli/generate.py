"""``lmlab generate``: decode text from a trained checkpoint or a pretrained model, plainly or speculatively.

    lmlab generate --checkpoint runs/tiny --prompt "In the beginning" --max-new-tokens 64
    lmlab generate --model smollm2-135m --chat --prompt "Name three rivers." --decoder gsd --draft skip:odd
    lmlab generate --checkpoint runs/big --decoder chain --draft runs/small --sample --temperature 0.8
    lmlab generate --checkpoint runs/big --decoder gsd --draft runs/small --set depth=6 --set merge_context=0

``--checkpoint`` is a run folder of ``lmlab train`` (``<run>/model`` holds model.safetensors, meta.json with
the model config, and tokenizer.json); ``--model`` is a name known to ``core.hf.load_pretrained``, a ``.gguf``
file or a Hugging Face model folder. ``--draft`` is another checkpoint / model with the same tokenizer, or a
layer-skip spec of the target (``skip:0,2,4``, ``skip:3-9``, ``skip:odd``). ``--set key=value`` overrides a
field of the decoder's config (``lmlab info gsd`` lists them). Prints the text, then the decoding stats.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

DECODERS = {"greedy": "greedy", "sample": "sample", "chain": "chain_sd", "tree": "tree_sd", "gsd": "gsd"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", type=Path, help="run folder of `lmlab train` (or its model/ folder)")
    src.add_argument("--model", help="pretrained model: a known name (smollm2-135m), a .gguf or an HF folder")
    p.add_argument("--prompt", required=True, help="prompt text")
    p.add_argument("--chat", action="store_true", help="wrap the prompt in the tokenizer's chat template")
    p.add_argument("--max-new-tokens", type=int, default=64, help="tokens to generate")
    p.add_argument("--decoder", choices=sorted(DECODERS), default="greedy", help="decoding method")
    p.add_argument("--draft", default=None, help="draft checkpoint / model (same tokenizer) or skip:0,2,4")
    p.add_argument("--sample", action="store_true", help="speculative decoders: sample instead of greedy")
    p.add_argument("--temperature", type=float, default=None, help="sampling temperature (> 0) [default: 1.0]")
    p.add_argument("--top-k", type=int, default=None, help="sampling: keep the k most likely tokens")
    p.add_argument("--top-p", type=float, default=None, help="sampling: nucleus mass")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument("--no-stop", action="store_true", help="do not stop at the tokenizer's end-of-text token")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default $LMLAB_THREADS or 1)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="decoder config override, e.g. depth=6 or budget=24")


def load_checkpoint(path: Path) -> tuple[Any, Any]:
    """(Transformer in eval mode, tokenizer) from a run folder of ``lmlab train`` or its ``model`` folder."""
    from lmlab.core.checkpoint import load_model, read_meta
    from lmlab.core.config import from_dict
    from lmlab.core.tokenizer import load_tokenizer
    from lmlab.core.transformer import Transformer, TransformerConfig

    folder = path / "model" if (path / "model" / "meta.json").is_file() else path
    if not (folder / "meta.json").is_file():
        raise FileNotFoundError(f"{path} is not a checkpoint: no model/meta.json or meta.json in it")
    meta = read_meta(folder)
    if not isinstance(meta.get("config"), dict):
        raise ValueError(f"{folder}/meta.json has no model config")
    model = Transformer(from_dict(TransformerConfig, meta["config"]))
    load_model(folder, model)
    tok = load_tokenizer(folder) if (folder / "tokenizer.json").is_file() else None
    return model.eval(), tok


def load_any(spec: str | Path) -> tuple[Any, Any]:
    """An lmlab checkpoint folder, or anything ``core.hf.load_pretrained`` accepts."""
    path = Path(spec)
    if path.is_dir() and ((path / "meta.json").is_file() or (path / "model" / "meta.json").is_file()):
        return load_checkpoint(path)
    from lmlab.core.hf import load_pretrained
    from lmlab.core.tokenizer import HFTokenizer

    model, tok = load_pretrained(str(spec))
    return model, (HFTokenizer(tok) if tok is not None else None)


def build_draft(spec: str, target: Any, target_tok: Any) -> Any:
    from lmlab.decoding.drafts import layer_skip, parse_skip
    from lmlab.decoding.loop import check_draft

    if spec.startswith("skip:"):
        n = target.cfg.n_layers if hasattr(target, "cfg") else target.n_layers
        return layer_skip(target, parse_skip(spec, n))
    draft, tok = load_any(spec)
    if tok is not None and target_tok is not None:
        from lmlab.core.tokenizer import fingerprint

        if fingerprint(tok) != fingerprint(target_tok):
            raise ValueError(f"draft {spec!r} uses another tokenizer than the target; speculative decoding "
                             "compares token ids, so both must share one tokenizer")
    check_draft(target, draft)
    return draft


def build_decoder(args: argparse.Namespace, draft: Any) -> Any:
    from lmlab.core.config import apply_overrides, from_dict, to_dict
    from lmlab.decoding import REGISTRY

    name = DECODERS[args.decoder]
    entry = REGISTRY.entry(name)
    cls, cfg_cls = REGISTRY.get(name), REGISTRY.config(name)
    if cfg_cls is None:
        if args.overrides:
            raise ValueError(f"decoder {args.decoder!r} has no config to --set")
        return cls()
    data = to_dict(cfg_cls())
    knobs = {"temperature": 1.0 if args.temperature is None else args.temperature, "top_k": args.top_k,
             "top_p": args.top_p}
    if "sampling" in data:
        data["sampling"] = {"sample": args.sample, **knobs}
    else:
        data.update({k: v for k, v in knobs.items() if k in data})
    cfg = apply_overrides(from_dict(cfg_cls, data), args.overrides)
    if "draft" in entry.caps:
        if draft is None:
            raise ValueError(f"decoder {args.decoder!r} needs --draft (a checkpoint, a model or skip:0,2,4)")
        return cls(cfg, draft=draft)
    return cls(cfg)


def run(args: argparse.Namespace) -> int:
    import torch

    from lmlab.core.runtime import set_threads

    set_threads(args.threads)
    if args.decoder in ("greedy", "sample") and args.draft:
        raise ValueError(f"--draft is only used by chain, tree and gsd, not by {args.decoder!r}")
    if args.sample and args.decoder in ("greedy", "sample"):
        raise ValueError(f"--sample switches chain, tree and gsd to sampling; with --decoder {args.decoder} "
                         "use --decoder sample (or drop --sample)")
    given = [f for f, v in (("--temperature", args.temperature), ("--top-k", args.top_k), ("--top-p", args.top_p))
             if v is not None]
    sampling = args.decoder == "sample" or (args.sample and args.decoder != "greedy")
    if given and not sampling:
        raise ValueError(f"{', '.join(given)} only apply when sampling (--decoder sample, or --sample with "
                         f"chain / tree / gsd); --decoder {args.decoder} is greedy")
    model, tok = load_checkpoint(args.checkpoint) if args.checkpoint else load_any(args.model)
    if tok is None:
        raise ValueError("the model has no tokenizer next to it; cannot encode --prompt")
    text = args.prompt
    if args.chat:
        if not hasattr(getattr(tok, "tok", None), "apply_chat_template"):
            raise ValueError("--chat needs a Hugging Face tokenizer with a chat template")
        text = tok.tok.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                           add_generation_prompt=True)
    ids = tok.encode(text)
    draft = build_draft(args.draft, model, tok) if args.draft else None
    decoder = build_decoder(args, draft)
    eos = None if args.no_stop else tok.eos_id
    with torch.no_grad():
        gen = decoder.generate(model, ids, args.max_new_tokens, seed=args.seed, eos_id=eos)
    print(tok.decode(gen.tokens))
    print()
    for k, v in gen.stats.summary().items():
        print(f"{k:>24}: {v:.4f}" if isinstance(v, float) else f"{k:>24}: {v}")
    return 0
