"""Contract tests generated from every registry: a new method inherits them by adding its registry line."""

from __future__ import annotations

import dataclasses

import pytest

import lmlab
from lmlab.catalog import info_text, repro_users, resolve
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


SLUGS = sorted({e.repro or n for _, n, e in ENTRIES})


@pytest.mark.parametrize("slug", SLUGS)
def test_every_reproduction_slug_leads_to_a_method_it_reproduces(slug):
    regs = lmlab.registries()
    users = {(f, n) for f, n, _ in repro_users(slug, regs)}
    try:
        m = resolve(slug, regs)
    except KeyError as err:  # allowed only for a slug shared by several entries and named like none of them
        assert len(users) > 1 and all(f"{f}:{n}" in str(err) for f, n in users), err
        return
    assert (m.family, m.name) in users
