"""Pipelines family: LLM data pipelines against a `ChatClient`, JSONL in and out, resumable by record id.

One registry line per method; targets are lazy "module:attr" strings, so importing this module imports no torch.
A line's target is the method's class, built from its ``Config``; its ``pipeline()`` gives the ``base.Pipeline``
that ``runner.run`` runs. ``build(name, overrides=[...])`` is the one way to get the method object from its
registry line (``lmlab pipeline NAME`` runs ``build(NAME).pipeline()``).
"""

from typing import Any

from lmlab.core.registry import Entry, Registry

REGISTRY = Registry("pipelines", {
    "reviseval": Entry("lmlab.pipelines.reviseval:RevisEval", paper="arXiv:2410.05193",
                       summary="revise each response into a response-adapted reference, then judge or score against it",
                       config="lmlab.pipelines.reviseval:Config"),
    "rise_pairs": Entry("lmlab.pipelines.rise:RisePairs", paper="arXiv:2410.06638", repro="rise",
                        summary="self-sample attempts, grade them, and self-edit each step of a correct one into a "
                                "subtle error (RISE)", config="lmlab.pipelines.rise:Config"),
})


def build(name: str, cfg: Any = None, overrides: list[str] | None = None) -> Any:
    """The method object ``name`` with config ``cfg`` (default: its Config()) plus ``key=value`` overrides."""
    from lmlab.core.config import apply_overrides

    make, cfg_cls = REGISTRY.get(name), REGISTRY.config(name)
    if cfg_cls is None:
        if cfg is not None or overrides:
            raise ValueError(f"pipeline {name!r} has no config to set")
        return make()
    return make(apply_overrides(cfg if cfg is not None else cfg_cls(), list(overrides or [])))
