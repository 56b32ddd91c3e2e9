"""Text generation from any model ``lmlab.load`` reads, with any registered decoder (``lmlab generate``).

    text, stats = generate_text("runs/lm", "In the beginning", decoder="gsd", draft="skip:odd")

``draft`` is another model spec sharing the target's tokenizer, or a layer-skip spec of the target
(``skip:0,2,4``, ``skip:3-9``, ``skip:odd``). ``chat`` wraps the prompt in the tokenizer's chat template.
Sampling knobs go into the decoder's config: its ``sampling`` table (speculative decoders) or its own
temperature / top_k / top_p fields (``sample``); ``overrides`` are further ``key=value`` config settings.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from lmlab.adapters.tuner import AdaptedModel
from lmlab.core.config import apply_overrides, from_dict, to_dict
from lmlab.core.lm import LM
from lmlab.core.tokenizer import fingerprint
from lmlab.decoding import REGISTRY as DECODERS
from lmlab.decoding import build, rerank_decoders
from lmlab.decoding.drafts import layer_skip, parse_skip
from lmlab.decoding.loop import check_draft
from lmlab.loader import load
from lmlab.recipes.scorers import answer_extractor, load_scorer


def load_draft(spec: str, target: LM, target_tok: Any) -> LM:
    """A layer-skip view of ``target`` (``skip:...``) or another model with the same tokenizer.

    For a model with adapters the view skips layers of its base, whose kept layers run the active adapter.
    """
    if spec.startswith("skip:"):
        base = target.base if isinstance(target, AdaptedModel) else target
        return layer_skip(base, parse_skip(spec, target.n_layers))
    draft, tok, _ = load(spec)
    if tok is not None and target_tok is not None and fingerprint(tok) != fingerprint(target_tok):
        raise ValueError(f"draft {spec!r} uses another tokenizer than the target; speculative decoding compares "
                         "token ids, so both must share one tokenizer")
    check_draft(target, draft)
    return draft


def decoder_config(name: str, sample: bool, temperature: float | None, top_k: int | None, top_p: float | None,
                   overrides: list[str]) -> Any:
    """The decoder's config with the sampling knobs placed where that config keeps them."""
    cfg_cls = DECODERS.config(name)
    knobs = {"temperature": 1.0 if temperature is None else temperature, "top_k": top_k, "top_p": top_p}
    given = [k for k, v in (("temperature", temperature), ("top_k", top_k), ("top_p", top_p)) if v is not None]
    if cfg_cls is None:
        if sample:
            raise ValueError(f"sample=True switches chain_sd, tree_sd and gsd to sampling; decoder {name!r} is "
                             "greedy: use decoder 'sample' instead")
        if given:
            raise ValueError(f"{', '.join(given)} only apply when sampling (decoder 'sample', or chain_sd / "
                             f"tree_sd / gsd with sample=True); decoder {name!r} is greedy")
        if overrides:
            raise ValueError(f"decoder {name!r} has no config to set")
        return None
    data = to_dict(cfg_cls())
    fields = {f.name for f in dataclasses.fields(cfg_cls)}
    if "sampling" in fields:
        data["sampling"] = {**data["sampling"], "sample": sample, **knobs}
        if given and not sample:
            raise ValueError(f"{', '.join(given)} only apply when sampling: decoder {name!r} needs sample=True")
    elif sample:
        raise ValueError(f"decoder {name!r} always samples; sample=True is for chain_sd, tree_sd and gsd")
    else:
        data.update({k: v for k, v in knobs.items() if k in fields})
    return apply_overrides(from_dict(cfg_cls, data), overrides)


def generate_text(model: str | Any, prompt: str, *, decoder: str = "greedy", draft: str | None = None,
                  chat: bool = False, max_new_tokens: int = 64, sample: bool = False,
                  temperature: float | None = None, top_k: int | None = None, top_p: float | None = None,
                  overrides: list[str] | None = None, seed: int = 0, stop_at_eos: bool = True,
                  scorer: str | Any = None, scorer_overrides: list[str] | None = None, step_sep: str | None = None,
                  answer: str | None = None) -> tuple[str, Any]:
    """(generated text, decoder stats) for ``prompt``; ``model`` is a spec for ``lmlab.load`` or (model, tok).

    Best-of-N decoders (``best_of_n``, ``weighted_vote``) take ``scorer``: a spec of ``recipes.scorers.load_scorer``
    (``implicit:ADAPTER``, ``implicit:POLICY,REFERENCE``, ``likelihood``) with ``scorer_overrides`` and
    ``step_sep``, or a callable ``scorer(prompt_ids, candidates) -> list[float]``; ``answer`` is the regular
    expression of a candidate's final answer for ``weighted_vote`` (default: the whole continuation votes)."""
    target, tok = (model if isinstance(model, tuple) else load(model)[:2])
    if tok is None:
        raise ValueError("the model has no tokenizer next to it; cannot encode the prompt")
    cfg = decoder_config(decoder, sample, temperature, top_k, top_p, list(overrides or []))
    caps = DECODERS.entry(decoder).caps
    if draft is not None and "draft" not in caps:
        raise ValueError(f"a draft is only used by chain_sd, tree_sd and gsd, not by {decoder!r}")
    spec_only = [k for k, v in (("scorer_overrides", scorer_overrides), ("step_sep", step_sep)) if v]
    rerank = {}
    if "rerank" in caps:
        if isinstance(scorer, str):
            scorer = load_scorer(scorer, tok, target=target, overrides=scorer_overrides, step_sep=step_sep)
        elif spec_only:
            raise ValueError(f"{', '.join(spec_only)} configure a scorer named by a spec string; this scorer is an "
                             "object")
        rerank = {"scorer": scorer, "answer_of": answer_extractor(answer, tok)}
    elif scorer is not None or answer is not None or spec_only:
        raise ValueError(f"a scorer is only used by the best-of-N decoders {rerank_decoders()}, not by {decoder!r}")
    dec = build(decoder, cfg, draft=load_draft(draft, target, tok) if draft else None, **rerank)  # cfg: overrides
    text = prompt
    if chat:
        if not hasattr(getattr(tok, "tok", None), "apply_chat_template"):
            raise ValueError("chat needs a Hugging Face tokenizer with a chat template")
        text = tok.tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                           add_generation_prompt=True)
    with torch.no_grad():
        gen = dec.generate(target, tok.encode(text), max_new_tokens, seed=seed,
                           eos_id=tok.eos_id if stop_at_eos else None)
    return tok.decode(gen.tokens), gen.stats
