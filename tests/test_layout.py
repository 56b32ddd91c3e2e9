"""DESIGN.md's budgets and boundaries, enforced: file sizes, import direction, registry <-> files, repro folders."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import lmlab

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "lmlab"
FAMILIES = ("models", "decoding", "compression", "adapters", "objectives", "laws", "pipelines")
# who may import whom (DESIGN.md "Dependency direction"); cli and apps may import anything. The top-level
# modules loader.py, harness.py and catalog.py sit above the families (a module name ends in ".py" here).
ALLOWED = {"core": {"core"}, "tasks": {"core", "tasks"}, **{f: {"core", "tasks", f, "models"} for f in FAMILIES},
           "recipes": {"core", "tasks", "recipes", "loader", *FAMILIES},
           "serve": {"core", "serve", "loader", "recipes", *FAMILIES},
           "loader.py": {"core"}, "harness.py": {"core"}}


def py_files(folder: Path = SRC) -> list[Path]:
    return sorted(p for p in folder.rglob("*.py") if "__pycache__" not in p.parts)


def lmlab_imports(path: Path) -> set[str]:
    """Top-level lmlab subpackages imported by a file (absolute and relative imports)."""
    tree = ast.parse(path.read_text())
    pkg = path.relative_to(SRC).parts
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[1] for a in node.names if a.name.startswith("lmlab.")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the file's package
                base = pkg[: len(pkg) - node.level]
                mod = list(base) + (node.module.split(".") if node.module else [])
                if mod:
                    out.add(mod[0])
            elif node.module and node.module.startswith("lmlab."):
                out.add(node.module.split(".")[1])
            elif node.module == "lmlab":
                out |= {a.name for a in node.names}
    return out


@pytest.mark.parametrize("path", py_files(), ids=lambda p: str(p.relative_to(SRC)))
def test_import_direction(path):
    top = path.relative_to(SRC).parts[0]
    if top not in ALLOWED:
        return
    bad = lmlab_imports(path) - ALLOWED[top] - {"__init__"}
    assert not bad, f"{path.relative_to(ROOT)} ({top}) imports {sorted(bad)}; allowed: {sorted(ALLOWED[top])}"


def test_file_size_budgets():
    too_big = []
    for p in py_files():
        n = len(p.read_text().splitlines())
        limit = 600 if p.relative_to(SRC).parts[0] in ("core", "cli") else 400
        if n > limit:
            too_big.append(f"{p.relative_to(ROOT)}: {n} > {limit} lines")
    assert not too_big, too_big
    core = sum(len(p.read_text().splitlines()) for p in py_files(SRC / "core"))
    # 3850: the wave-2 core (LM protocol, block context, device/aux/frozen-aware Trainer, scoring, chat clients:
    # OpenAI-compatible, SQLite response cache, scripted, the --llm factory); 4100: hybrid attention (sliding
    # window + cross-layer KV sharing) with its ring-buffer cache and KV planner, document packing
    assert core <= 4100, f"core/ has {core} lines > 4100"


def test_no_junk_drawers():
    junk = [p for p in ROOT.rglob("*.py") if p.stem in ("utils", "helpers", "misc") and ".venv" not in p.parts]
    assert not junk, junk


def entries():
    return [(fam, name, e) for fam, reg in lmlab.registries().items() for name, e in reg.items()]


@pytest.mark.parametrize("fam,name,e", entries(), ids=lambda x: x if isinstance(x, str) else "")
def test_registry_entry_resolves_and_is_tested(fam, name, e):
    from lmlab.core.registry import load_target

    assert load_target(e.target) is not None
    if e.config:
        assert load_target(e.config) is not None
    module = e.module
    parent, _, leaf = module.rpartition(".")
    imports = re.compile(rf"{re.escape(module)}\b|from {re.escape(parent)} import [^\n]*\b{leaf}\b")
    tests = [p for p in (ROOT / "tests").rglob("test_*.py") if imports.search(p.read_text())]
    assert tests, f"no test file under tests/ imports {module} (registry entry {fam}:{name})"


@pytest.mark.parametrize("fam,name,e", [x for x in entries() if x[0] != "tasks"],
                         ids=lambda x: x if isinstance(x, str) else "")
def test_every_method_has_a_reproduction(fam, name, e):
    folder = ROOT / "repro" / (e.repro or name)
    for f in ("README.md", "expected.toml", "config.toml", "run.py"):
        assert (folder / f).is_file(), f"{fam}:{name} needs {folder.relative_to(ROOT)}/{f}"


def test_every_reproduction_belongs_to_a_method():
    slugs = {e.repro or name for fam, name, e in entries()}
    for folder in (ROOT / "repro").glob("*/expected.toml"):
        assert folder.parent.name in slugs, f"repro/{folder.parent.name} matches no registry entry"


def test_index_lists_every_reproduction():
    index = (ROOT / "repro" / "INDEX.md").read_text()
    for folder in (ROOT / "repro").glob("*/expected.toml"):
        assert f"| {folder.parent.name} |" in index, f"repro/INDEX.md lacks {folder.parent.name}: run `make index`"


def test_only_the_console_entry_point_imports_the_cli():
    """Logic lives in the library; everything else reaches the CLI only as a user does (``cli.main.main``)."""
    entry = re.compile(r"^from lmlab\.cli\.main import main$")
    bad = []
    for folder in (SRC, ROOT / "repro", ROOT / "bench", ROOT / "tests"):
        for p in py_files(folder):
            if p.is_relative_to(SRC / "cli"):
                continue
            for i, line in enumerate(p.read_text().splitlines(), 1):
                stripped = line.strip()
                if ("lmlab.cli" in stripped or "from lmlab import cli" in stripped) and \
                        stripped.startswith(("import ", "from ")) and not entry.match(stripped):
                    bad.append(f"{p.relative_to(ROOT)}:{i}: {stripped}")
    assert not bad, bad
