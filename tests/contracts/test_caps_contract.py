"""Capability tags: every tag used by a registry line is documented in ``core.registry.CAPS``; unknown refused."""

from __future__ import annotations

import pytest

import lmlab
from lmlab.core.registry import CAPS, Entry

USED = sorted({(f, n, c) for f, r in lmlab.registries().items() for n, e in r.items() for c in e.caps})


@pytest.mark.parametrize("fam,name,cap", USED, ids=[f"{f}:{n}:{c}" for f, n, c in USED])
def test_every_cap_in_a_registry_is_documented(fam, name, cap):
    assert cap in CAPS, f"{fam}:{name} uses cap {cap!r}, which lmlab.core.registry.CAPS does not document"


def test_every_cap_has_a_one_line_meaning():
    for cap, meaning in CAPS.items():
        assert cap == cap.strip().lower() and " " not in cap, f"cap {cap!r}: lower case, no spaces"
        assert isinstance(meaning, str) and 10 < len(meaning) <= 120 and "\n" not in meaning, cap


def test_entry_refuses_an_unknown_cap():
    with pytest.raises(ValueError, match=r"caps \['kv-cache'\] of 'pkg.mod:X' are unknown; known caps: hf"):
        Entry("pkg.mod:X", paper="p", summary="s", caps=("hf", "kv-cache"))


def test_entry_refuses_caps_that_are_not_a_tuple():
    with pytest.raises(ValueError, match="must be a tuple of tags, got 'hf'"):
        Entry("pkg.mod:X", paper="p", summary="s", caps=("hf"))  # a string, not a one-tag tuple


def test_entry_accepts_known_caps():
    assert Entry("pkg.mod:X", paper="p", summary="s", caps=("hf", "save")).caps == ("hf", "save")
