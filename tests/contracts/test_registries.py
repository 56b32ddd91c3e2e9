"""Contract tests generated from every registry: a new method inherits them by adding its registry line."""

from __future__ import annotations

import dataclasses

import pytest

import lmlab
from lmlab.catalog import info_text
from lmlab.core.registry import load_target

ENTRIES = [(f, n, e) for f, r in lmlab.registries().items() for n, e in r.items()]


@pytest.mark.parametrize("fam,name,e", ENTRIES, ids=[f"{f}:{n}" for f, n, _ in ENTRIES])
def test_config_is_documented(fam, name, e):
    if not e.config:
        pytest.skip("method has no config")
    cls = load_target(e.config)
    assert dataclasses.is_dataclass(cls)
    cls()  # defaults build
    for f in dataclasses.fields(cls):
        assert f.metadata.get("help"), f"{e.config}.{f.name} has no help text (use lmlab.core.config.param)"


@pytest.mark.parametrize("fam,name,e", ENTRIES, ids=[f"{f}:{n}" for f, n, _ in ENTRIES])
def test_info_renders(fam, name, e):
    text = info_text(name)
    assert e.paper in text and e.target in text
    module_doc = __import__(e.module, fromlist=["_"]).__doc__
    assert module_doc and len(module_doc.strip()) > 40, f"{e.module} needs a module docstring"


def test_names_are_unique_across_families():
    names = [n for _, n, _ in ENTRIES]
    assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)
