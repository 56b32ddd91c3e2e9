"""The registries as text: what ``lmlab list`` and ``lmlab info <slug>`` print (``list_text`` imports no torch)."""

from __future__ import annotations

import importlib
import inspect

import lmlab


def list_text(family: str | None = None) -> str:
    """Every method by family: name, status, paper, summary."""
    regs = lmlab.registries()
    if family and family not in regs:
        raise ValueError(f"unknown family {family!r}; families: {', '.join(regs)}")
    lines = []
    for fam, reg in regs.items():
        if family and fam != family:
            continue
        lines.append(f"{fam} ({len(reg)})")
        lines += [f"  {name:<22} {e.status:<12} {e.paper:<34} {e.summary}" for name, e in reg.items()]
    return "\n".join(lines)


def info_text(slug: str) -> str:
    """The text ``lmlab info`` prints: registry line, module docstring, config table."""
    from lmlab.core.config import describe
    from lmlab.core.registry import load_target

    family, e = lmlab.find(slug)
    lines = [f"{slug}  [{family}, {e.status}]", f"paper:   {e.paper}", f"summary: {e.summary}",
             f"target:  {e.target}", f"repro:   repro/{e.repro or slug}/", ""]
    doc = inspect.getdoc(importlib.import_module(e.module)) or "(no module docstring)"
    lines += [doc, ""]
    if e.config:
        lines.append(f"config ({e.config}):")
        rows = describe(load_target(e.config))
        w = max((len(r["name"]) for r in rows), default=4)
        for r in rows:
            src = f"  [source: {r['source']}]" if r["source"] else ""
            lines.append(f"  {r['name']:<{w}}  {r['default']!r:<12} {r['help']}{src}")
    return "\n".join(lines)
