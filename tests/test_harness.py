"""The one A/B measurement loop of the benchmarks: alternation, warm-up, thread counts, summaries and fields."""

import statistics

import pytest
import torch

from lmlab.core.results import bench_record
from lmlab.harness import ABCase, ab_cases, map_jobs, measure_alternately


def recording_arms(calls: list, values: dict[str, list[float]]) -> dict:
    """Arms that log (name, round, torch threads) and return the next scripted value with an output."""
    def arm(name):
        def measure(r):
            calls.append((name, r, torch.get_num_threads()))
            return values[name].pop(0), f"{name}{r}"
        return measure

    return {name: arm(name) for name in values}


def test_arms_alternate_round_by_round_after_one_warm_up_call_each():
    calls = []
    arms = recording_arms(calls, {"a": [9.0, 1.0, 2.0, 3.0], "b": [9.0, 4.0, 6.0, 8.0]})
    runs = measure_alternately(ABCase("x", arms, rounds=3))
    assert [(n, r) for n, r, _ in calls] == [("a", 0), ("b", 0), ("a", 0), ("b", 0), ("a", 1), ("b", 1),
                                             ("a", 2), ("b", 2)]
    assert runs.values == {"a": [1.0, 2.0, 3.0], "b": [4.0, 6.0, 8.0]}  # the warm-up values are dropped
    assert runs.outputs["b"] == ["b0", "b1", "b2"] and runs.value("b") == 6.0


def test_cases_run_under_each_thread_count_and_the_old_count_comes_back():
    torch.set_num_threads(1)
    calls, built_under = [], []

    def build(n):
        built_under.append((n, torch.get_num_threads()))
        arms = recording_arms(calls, {"a": [1.0, 3.0, 5.0], "b": [2.0, 2.0, 2.0]})
        yield ABCase("L=4", arms, rounds=2, warmup=False, fields=lambda runs: {"first_a": runs.values["a"][0]})
        yield ABCase("", recording_arms(calls, {"m": [1.0], "base": [4.0]}), rounds=1, warmup=False,
                     summary=statistics.mean, fields={"extra": 7}, record_runs=False)

    cases = ab_cases(build, thread_counts=(2, 1))
    assert torch.get_num_threads() == 1 and built_under == [(2, 2), (1, 1)]
    assert [t for *_, t in calls] == [2] * 6 + [1] * 6  # every arm call ran under its case's thread count
    assert [c["label"] for c in cases] == ["L=4 threads=2", "threads=2", "L=4 threads=1", "threads=1"]
    first = cases[0]
    assert first["threads"] == 2 and first["a_value"] == 2.0 and first["b_value"] == 2.0
    assert first["a_runs"] == [1.0, 3.0] and first["first_a"] == 1.0
    assert cases[1] == {"label": "threads=2", "threads": 2, "a_value": 1.0, "b_value": 4.0, "extra": 7}
    rec = bench_record("toy", "m", "base", "x/s", cases, runs=2)
    assert rec["ratio"] == 1.0 and cases[1]["ratio"] == 0.25


def test_the_old_thread_count_comes_back_when_an_arm_fails():
    torch.set_num_threads(1)

    def boom(r):
        raise RuntimeError("arm failed")

    with pytest.raises(RuntimeError, match="arm failed"):
        ab_cases(lambda n: [ABCase("", {"a": boom, "b": boom}, rounds=1)], thread_counts=(2,))
    assert torch.get_num_threads() == 1


@pytest.mark.parametrize("arms, rounds, match", [({"a": abs}, 1, "needs arms A and B"),
                                                 ({"a": abs, "b": abs}, 0, "rounds must be >= 1, got 0")])
def test_a_bad_case_is_refused_with_its_label(arms, rounds, match):
    with pytest.raises(ValueError, match=f"case 'bad': {match}"):
        ABCase("bad", arms, rounds)


def power_and_pid(base: int, exp: int) -> tuple[int, int]:
    import os

    return base ** exp, os.getpid()


@pytest.mark.parametrize("workers", [1, 2])
def test_map_jobs_keeps_the_order_in_process_or_forked(workers):
    import os

    out = map_jobs(power_and_pid, [(2, 3), (3, 2), (5, 1)], workers)
    assert [v for v, _ in out] == [8, 9, 5]
    assert all((pid == os.getpid()) == (workers == 1) for _, pid in out)  # forked workers run elsewhere
