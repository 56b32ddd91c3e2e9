"""The registries as text: what ``lmlab list`` and ``lmlab info <slug>`` print (``list_text`` imports no torch).

``info`` accepts a registry name or the slug of a reproduction folder (``repro/<slug>/``), and shows what the
last full reproduction measured (``repro/<slug>/results/latest.json``): its date, machine, verdict and every
gate, so a method that fails its gates says so before anyone relies on it. Nothing is shown that the results
file does not hold.
"""

from __future__ import annotations

import importlib
import inspect
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lmlab
from lmlab.core.registry import Entry


@dataclass(frozen=True)
class Match:
    """The registry entry a name given to ``lmlab info`` stands for."""

    family: str
    name: str  # registry name of the entry
    entry: Entry
    note: str = ""  # how a reproduction slug led to this entry ("" when the name is a registry name)


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


def repro_users(slug: str, regs: dict[str, Any]) -> list[tuple[str, str, Entry]]:
    """(family, name, entry) of every entry whose reproduction is ``repro/<slug>/``."""
    return [(f, n, e) for f, r in regs.items() for n, e in r.items() if (e.repro or n) == slug]


def resolve(name: str, regs: dict[str, Any] | None = None) -> Match:
    """The entry ``name`` stands for: a registry name, else the reproduction slug of exactly one entry.

    A slug shared by several entries and named like none of them is a KeyError listing the candidates.
    """
    regs = lmlab.registries() if regs is None else regs
    for fam, reg in regs.items():
        if name in reg:
            return Match(fam, name, reg.entry(name))
    users = repro_users(name, regs)
    if len(users) == 1:
        fam, entry_name, e = users[0]
        return Match(fam, entry_name, e, f"{name} is the reproduction of {fam}:{entry_name}")
    if users:
        cands = ", ".join(f"{f}:{n}" for f, n, _ in users)
        raise KeyError(f"{name!r} is the reproduction (repro/{name}/) of several methods: {cands}; "
                       "ask for one of them by name")
    names = sorted(n for r in regs.values() for n in r)
    slugs = sorted({e.repro for r in regs.values() for _, e in r.items() if e.repro} - set(names))
    raise KeyError(f"unknown method {name!r}; known methods: {', '.join(names)}; "
                   f"reproduction slugs: {', '.join(slugs) or '(none)'}")


def checkout_root() -> Path | None:
    """The checkout holding ``repro/`` (``lmlab.harness.repo_root``), or None when lmlab runs without one."""
    from lmlab.harness import repo_root

    try:
        return repo_root()
    except FileNotFoundError:
        return None


def _num(x: Any) -> str:
    return "missing" if x is None else f"{x:.4g}" if isinstance(x, float) else str(x)


def gate_lines(record: dict[str, Any]) -> list[str]:
    """Verdict and one row per gate of a reproduction record: name, value, op, threshold, ok/FAIL."""
    gates = record.get("gates") or []
    if not gates:
        return ["  result:  no gates recorded"]
    passed = sum(bool(g.get("passed")) for g in gates)
    verdict = "PASS" if passed == len(gates) else "FAIL"
    lines = [f"  result:  {verdict} ({passed} of {len(gates)} gates passed)"]
    w = max(len(str(g.get("name"))) for g in gates)
    for g in gates:
        ok = "ok" if g.get("passed") else "FAIL"
        lines.append(f"    {g.get('name')!s:<{w}}  {_num(g.get('value')):>10} {g.get('op')!s:<2} "
                     f"{_num(g.get('threshold')):<10} {ok}")
    return lines


def results_lines(slug: str, root: Path | None) -> list[str]:
    """What the last full reproduction ``repro/<slug>/`` under ``root`` measured, read from its latest.json."""
    head = f"last full reproduction (repro/{slug}/results/latest.json):"
    if root is None:
        return [f"{head} no reproduction results here (lmlab runs without a checkout holding repro/)"]
    if not (root / "repro" / slug).is_dir():
        return [f"{head} no repro/{slug}/ folder in this checkout"]
    file = root / "repro" / slug / "results" / "latest.json"
    if not file.is_file():
        return [f"{head} not run yet (`lmlab repro {slug}` runs it)"]
    try:
        record = json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        return [f"{head} {file} is unreadable ({e}); `lmlab repro {slug}` writes it again"]
    if not isinstance(record, dict):
        return [f"{head} {file} holds no result record (a JSON {type(record).__name__})"]
    lines = [head, f"  date:    {record.get('date', 'not recorded')}",
             f"  machine: {record.get('machine', 'not recorded')}"]
    if record.get("smoke"):
        lines.append("  (a --smoke run: its gates check plumbing only)")
    return lines + gate_lines(record)


def config_lines(config: str) -> list[str]:
    """The config table of a method: field, default, help text and the source of a paper-derived default."""
    from lmlab.core.config import describe
    from lmlab.core.registry import load_target

    rows = describe(load_target(config))
    w = max((len(r["name"]) for r in rows), default=4)
    lines = [f"config ({config}):"]
    for r in rows:
        src = f"  [source: {r['source']}]" if r["source"] else ""
        lines.append(f"  {r['name']:<{w}}  {r['default']!r:<12} {r['help']}{src}")
    return lines


def info_text(slug: str) -> str:
    """The text ``lmlab info`` prints: registry line, last reproduction's gates, module docstring, config table."""
    regs = lmlab.registries()
    m = resolve(slug, regs)
    e, repro = m.entry, m.entry.repro or m.name
    lines = [m.note] if m.note else []
    lines += [f"{m.name}  [{m.family}, {e.status}]", f"paper:   {e.paper}", f"summary: {e.summary}",
              f"target:  {e.target}", f"repro:   repro/{repro}/"]
    shared = [f"{f}:{n}" for f, n, _ in repro_users(repro, regs) if n != m.name]
    if shared:
        lines.append(f"         (also the reproduction of {', '.join(shared)})")
    lines += ["", *results_lines(repro, checkout_root()), ""]
    lines += [inspect.getdoc(importlib.import_module(e.module)) or "(no module docstring)", ""]
    if e.config:
        lines += config_lines(e.config)
    return "\n".join(lines)
