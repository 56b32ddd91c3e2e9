"""``lmlab info``: reproduction slugs as aliases, and the gates of the last full reproduction, read not invented."""

from __future__ import annotations

import json

import pytest

import lmlab
import lmlab.harness
from lmlab.catalog import resolve
from lmlab.cli.main import main
from lmlab.core.registry import Entry, Registry


def info(capsys, name: str) -> tuple[int, str, str]:
    rc = main(["info", name])
    out, err = capsys.readouterr()
    return rc, out, err


def fake_checkout(tmp_path, monkeypatch, slug: str, record: dict | None) -> None:
    """A checkout (pyproject.toml + repro/) in the working directory, where ``repo_root`` looks first."""
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    results = tmp_path / "repro" / slug / "results"
    results.mkdir(parents=True)
    if record is not None:
        (results / "latest.json").write_text(json.dumps(record))
    monkeypatch.chdir(tmp_path)


def test_a_reproduction_slug_shows_the_one_entry_it_reproduces(capsys):
    rc, out, _ = info(capsys, "densing_law")
    assert rc == 0
    assert out.splitlines()[0] == "densing_law is the reproduction of laws:capacity_density"
    assert out.splitlines()[1].startswith("capacity_density  [laws, ")
    assert "repro:   repro/densing_law/" in out and "Densing Law of LLMs" in out


def test_a_slug_shared_by_several_entries_shows_the_entry_named_like_it(capsys):
    rc, out, _ = info(capsys, "gsd")
    assert rc == 0 and out.startswith("gsd  [decoding, ") and "is the reproduction of" not in out
    assert "(also the reproduction of decoding:greedy, decoding:sample, decoding:chain_sd, decoding:tree_sd)" in out


def test_a_shared_slug_named_like_no_entry_lists_the_candidates():
    e = Entry("lmlab.decoding.gsd:GraphSpeculative", "p", "s", repro="spec")
    regs = {"decoding": Registry("decoding", {"chain": e, "tree": e}), "laws": Registry("laws", {"law": e})}
    with pytest.raises(KeyError, match=r"'spec' is the reproduction \(repro/spec/\) of several methods: "
                                       r"decoding:chain, decoding:tree, laws:law; ask for one of them by name"):
        resolve("spec", regs)
    assert resolve("tree", regs).name == "tree"  # a registry name is never an alias
    lone = {"laws": Registry("laws", {"law": e})}
    assert resolve("spec", lone).note == "spec is the reproduction of laws:law"


def test_an_unknown_name_lists_names_and_slugs(capsys):
    rc, out, err = info(capsys, "densing")
    assert rc == 2 and not out
    assert err.startswith("lmlab info: error: unknown method 'densing'; known methods: ")
    assert "capacity_density" in err and "reproduction slugs: densing_law" in err


def test_the_last_reproduction_gates_are_printed_as_recorded(capsys):
    rc, out, _ = info(capsys, "mgdm")
    assert rc == 0
    record = json.loads((lmlab.harness.repo_root() / "repro/mgdm/results/latest.json").read_text())
    block = out.split("last full reproduction (repro/mgdm/results/latest.json):\n")[1].split("\n\n")[0]
    rows = block.splitlines()
    assert rows[0] == f"  date:    {record['date']}" and rows[1] == f"  machine: {record['machine']}"
    passed = sum(g["passed"] for g in record["gates"])
    verdict = "PASS" if passed == len(record["gates"]) else "FAIL"
    assert rows[2] == f"  result:  {verdict} ({passed} of {len(record['gates'])} gates passed)"
    for row, g in zip(rows[3:], record["gates"], strict=True):
        assert row.split() == [g["name"], f"{g['value']:.4g}", g["op"], f"{g['threshold']:.4g}",
                               "ok" if g["passed"] else "FAIL"]


def test_gates_come_from_latest_json_of_the_checkout(tmp_path, monkeypatch, capsys):
    record = {"slug": "densing_law", "date": "2031-01-02T03:04:05Z", "machine": "a test machine",
              "gates": [{"name": "densing_A", "value": 0.0065, "op": ">=", "threshold": 0.006, "passed": True},
                        {"name": "doubling_days", "value": None, "op": "<=", "threshold": 112.0, "passed": False}]}
    fake_checkout(tmp_path, monkeypatch, "densing_law", record)
    rc, out, _ = info(capsys, "capacity_density")
    assert rc == 0
    block = out.split("last full reproduction (repro/densing_law/results/latest.json):\n")[1].split("\n\n")[0]
    assert [r.split() for r in block.splitlines()] == [
        ["date:", "2031-01-02T03:04:05Z"], ["machine:", "a", "test", "machine"],
        ["result:", "FAIL", "(1", "of", "2", "gates", "passed)"],
        ["densing_A", "0.0065", ">=", "0.006", "ok"], ["doubling_days", "missing", "<=", "112", "FAIL"]]


def test_no_latest_json_is_not_run_yet(tmp_path, monkeypatch, capsys):
    fake_checkout(tmp_path, monkeypatch, "densing_law", None)
    rc, out, _ = info(capsys, "densing_law")
    assert rc == 0
    assert "last full reproduction (repro/densing_law/results/latest.json): not run yet" in out
    assert "result:" not in out and "date:" not in out


def test_without_a_checkout_there_are_no_results_here(monkeypatch, capsys):
    def no_checkout():
        raise FileNotFoundError("no repro/ folder found: run from an lmlab checkout")

    monkeypatch.setattr(lmlab.harness, "repo_root", no_checkout)  # lmlab installed as a package only
    rc, out, _ = info(capsys, "mgdm")
    assert rc == 0
    assert "last full reproduction (repro/mgdm/results/latest.json): no reproduction results here" in out
    assert "result:" not in out
