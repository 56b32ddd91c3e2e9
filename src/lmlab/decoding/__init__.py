"""Decoding family: decoders returning `Generation(tokens, stats)`; speculative ones split into propose /
score / verify.

One registry line per method; targets are lazy "module:attr" strings, so importing this module imports no torch.
``build(name, cfg, draft=..., scorer=..., overrides=[...])`` is the one way to make a decoder from its registry line.
"""

from typing import Any

from lmlab.core.registry import Entry, Registry

REGISTRY = Registry("decoding", {
    "greedy": Entry("lmlab.decoding.reference:Greedy", paper="baseline", status="stable",
                    summary="plain greedy decoding with a KV cache (the exactness reference)",
                    caps=("hf", "greedy-lossless"), repro="gsd"),
    "sample": Entry("lmlab.decoding.reference:Sample", paper="baseline", status="stable",
                    summary="plain sampling with temperature, top-k, top-p (the distribution reference)",
                    config="lmlab.decoding.reference:Config", caps=("hf", "sampling"), repro="gsd"),
    "chain_sd": Entry("lmlab.decoding.chain:ChainSpeculative", paper="arXiv:2211.17192", status="stable",
                      summary="speculative decoding with a k-token draft chain, exact greedy and sampling",
                      config="lmlab.decoding.chain:Config", repro="gsd",
                      caps=("draft", "hf", "sampling", "greedy-lossless")),
    "tree_sd": Entry("lmlab.decoding.tree:TreeSpeculative", paper="arXiv:2305.09781", status="stable",
                     summary="token-tree speculative decoding: top-k expansion, sibling pruning, tree mask",
                     config="lmlab.decoding.tree:Config", repro="gsd",
                     caps=("draft", "hf", "sampling", "greedy-lossless")),
    "gsd": Entry("lmlab.decoding.gsd:GraphSpeculative", paper="arXiv:2407.16207", status="experimental",
                 summary="graph-structured speculative decoding: recurring draft tokens merged into a DAG",
                 config="lmlab.decoding.gsd:Config", caps=("draft", "hf", "sampling", "greedy-lossless")),
    "best_of_n": Entry("lmlab.decoding.rerank:BestOfN", paper="arXiv:2412.01981", status="experimental",
                       summary="sample N candidates, return the one a scorer ranks highest (e.g. an implicit PRM)",
                       config="lmlab.decoding.rerank:Config", caps=("hf", "rerank"), repro="implicit_prm"),
    "weighted_vote": Entry("lmlab.decoding.rerank:WeightedVote", paper="arXiv:2412.01981", status="experimental",
                           summary="sample N candidates, sum sigmoid(score) per final answer, return the winner",
                           config="lmlab.decoding.rerank:VoteConfig", caps=("hf", "rerank"), repro="implicit_prm"),
    "masked": Entry("lmlab.decoding.masked:masked_decode", paper="arXiv:2410.14157", status="experimental",
                    summary="iterative masked decoding for masked-diffusion models (easy-first top-k, MaskGIT)",
                    config="lmlab.decoding.masked:Config", caps=("bidirectional",), repro="mgdm"),
})


def token_decoders(rerank: bool = True) -> list[str]:
    """Registry names of the decoders that continue a token prompt (all but the masked-row decoders);
    ``rerank=False`` also leaves out those that need a scorer."""
    return [name for name, e in REGISTRY.items()
            if "bidirectional" not in e.caps and (rerank or "rerank" not in e.caps)]


def build(name: str, cfg: Any = None, *, draft: Any = None, scorer: Any = None, answer_of: Any = None,
          overrides: list[str] | None = None) -> Any:
    """The decoder ``name`` with config ``cfg`` (default: its Config()) plus ``key=value`` overrides.

    A decoder tagged "draft" needs ``draft`` (a model sharing the target's vocabulary, or a layer-skip view);
    one tagged "rerank" needs ``scorer`` (``scorer(prompt_ids, candidates) -> list[float]``, e.g.
    ``objectives.implicit_prm.as_scorer``) and ``weighted_vote`` takes ``answer_of(tokens)``; the others refuse
    them. ``masked`` is a function (``masked_decode``), not an object: use it directly.
    """
    from lmlab.core.config import apply_overrides

    entry = REGISTRY.entry(name)
    if "bidirectional" in entry.caps:
        raise ValueError(f"decoder {name!r} decodes masked positions of whole rows; call {entry.target} directly")
    cls, cfg_cls = REGISTRY.get(name), REGISTRY.config(name)
    if cfg_cls is None:
        if cfg is not None or overrides:
            raise ValueError(f"decoder {name!r} has no config to set")
    else:
        cfg = apply_overrides(cfg if cfg is not None else cfg_cls(), list(overrides or []))
    if "draft" in entry.caps:
        if draft is None:
            raise ValueError(f"decoder {name!r} needs a draft model (a small model or a layer skip such as skip:odd)")
        return cls(cfg, draft=draft)
    if draft is not None:
        raise ValueError(f"decoder {name!r} takes no draft model (drafts are for chain_sd, tree_sd and gsd)")
    if "rerank" in entry.caps:
        return rerank_decoder(name, cls, cfg, scorer, answer_of)
    if scorer is not None or answer_of is not None:
        raise ValueError(f"decoder {name!r} takes no scorer (scorers are for {', '.join(rerank_decoders())})")
    return cls(cfg) if cfg_cls is not None else cls()


def rerank_decoders() -> list[str]:
    """Registry names of the decoders that sample candidates and pick one with a scorer."""
    return [name for name, e in REGISTRY.items() if "rerank" in e.caps]


def rerank_decoder(name: str, cls: Any, cfg: Any, scorer: Any, answer_of: Any) -> Any:
    import inspect

    if scorer is None:
        raise ValueError(f"decoder {name!r} needs a scorer: lmlab generate --scorer implicit:ADAPTER (or "
                         "implicit:POLICY,REFERENCE, likelihood); in Python scorer(prompt_ids, candidates) -> "
                         "list[float], e.g. lmlab.objectives.implicit_prm.as_scorer(ImplicitPRM(policy, reference))")
    if answer_of is None:
        return cls(cfg, scorer=scorer)
    if "answer_of" not in inspect.signature(cls).parameters:
        raise ValueError(f"decoder {name!r} takes no answer_of (it picks by score alone; votes use answer_of)")
    return cls(cfg, scorer=scorer, answer_of=answer_of)

