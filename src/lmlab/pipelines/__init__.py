"""Pipelines family: LLM data pipelines against a `ChatClient`, JSONL in and out, resumable by record id.

One registry line per method; targets are lazy "module:attr" strings, so importing this module imports no torch.
A line's target is ``make(cfg) -> base.Pipeline``; ``build(name, overrides=[...])`` is the one way to get a
pipeline from its registry line (what ``lmlab pipeline NAME`` runs with ``runner.run``).
"""

from typing import Any

from lmlab.core.registry import Entry, Registry  # noqa: F401  (Entry: for the lines to come)

REGISTRY = Registry("pipelines", {
})


def build(name: str, cfg: Any = None, overrides: list[str] | None = None) -> Any:
    """The pipeline ``name`` with config ``cfg`` (default: its Config()) plus ``key=value`` overrides."""
    from lmlab.core.config import apply_overrides

    make, cfg_cls = REGISTRY.get(name), REGISTRY.config(name)
    if cfg_cls is None:
        if cfg is not None or overrides:
            raise ValueError(f"pipeline {name!r} has no config to set")
        return make()
    return make(apply_overrides(cfg if cfg is not None else cfg_cls(), list(overrides or [])))
