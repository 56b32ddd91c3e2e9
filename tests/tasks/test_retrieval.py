"""Retrieval probe: determinism, exact verifier, exact depth control, the U-shaped density (chi-square), bad input."""

import dataclasses
import random

import pytest
from scipy.stats import chisquare

from lmlab.core.config import ConfigError
from lmlab.recipes.tasks import build_task
from lmlab.tasks import REGISTRY
from lmlab.tasks.base import Task
from lmlab.tasks.retrieval import Config, RetrievalTask, depth_sweep, depth_weights, parse_prompt


def test_registry_entry_builds_the_task():
    task = REGISTRY.get("retrieval")(REGISTRY.config("retrieval")())
    assert isinstance(task, Task) and task.name == "retrieval"
    assert "|" not in task.alphabet and len(set(task.alphabet)) == len(task.alphabet)


def test_generate_is_deterministic_prefix_stable_and_self_verifying():
    task = RetrievalTask(Config(n_pairs=12, distribution="u_shaped"))
    a, b = task.generate(20, seed=3), task.generate(20, seed=3)
    assert [dataclasses.astuple(e) for e in a] == [dataclasses.astuple(e) for e in b]
    assert [e.prompt for e in task.generate(5, seed=3)] == [e.prompt for e in a[:5]]
    assert [e.prompt for e in task.generate(20, seed=4)] != [e.prompt for e in a]
    for e in a:
        pairs, query = parse_prompt(e.prompt)
        assert len(pairs) == 12 and len({k for k, _ in pairs}) == 12
        assert pairs[e.meta["index"]] == (query, e.target)
        assert set(e.prompt + e.target) <= set(task.alphabet)
        assert task.verify(e.prompt, e.target)


def test_verifier_accepts_only_the_queried_value():
    task = RetrievalTask()
    assert task.verify("ab:31,zz:90?ab", "31")
    assert task.verify("ab:31,zz:90?zz", "90")
    for wrong in ("90", "3", "310", " 31", "", None, 31, ["31"]):
        assert task.verify("ab:31,zz:90?ab", wrong) is False
    for e in task.generate(30, seed=0):  # every other value of the context is rejected
        pairs, query = parse_prompt(e.prompt)
        for k, v in pairs:
            assert task.verify(e.prompt, v) == (k == query or v == e.target)


@pytest.mark.parametrize("prompt", ["ab:31,zz:90", "?ab", "ab:31,zz:90?cd", "ab:31,ab:90?ab", "ab31?ab",
                                    "ab:31,,zz:90?ab", "ab:1?ab?ab", 7])
def test_malformed_prompts_raise(prompt):
    with pytest.raises(ValueError, match="retrieval prompt"):
        RetrievalTask().verify(prompt, "31")


@pytest.mark.parametrize("n_pairs,depth,index", [(11, 0.0, 0), (11, 0.5, 5), (11, 1.0, 10), (11, 0.3, 3),
                                                 (5, 0.25, 1), (5, 0.75, 3), (1, 0.5, 0), (4, 0.5, 2)])
def test_fixed_depth_puts_the_queried_pair_at_that_fraction(n_pairs, depth, index):
    task = RetrievalTask(Config(n_pairs=n_pairs, depth=depth))
    for e in task.generate(15, seed=1):
        pairs, query = parse_prompt(e.prompt)
        assert [k for k, _ in pairs].index(query) == index == e.meta["index"]
        if n_pairs > 1 and (depth * (n_pairs - 1)).is_integer():
            assert e.meta["depth"] == depth  # exactly the requested fraction when a pair sits there


def test_depth_sweep_shares_contexts_and_moves_only_the_needle():
    sets = depth_sweep(Config(n_pairs=9), [0.0, 0.5, 1.0], n=10, seed=2)
    assert list(sets) == [0.0, 0.5, 1.0]
    contexts = {d: [e.prompt.split("?")[0] for e in examples] for d, examples in sets.items()}
    assert contexts[0.0] == contexts[0.5] == contexts[1.0]
    for d, examples in sets.items():
        assert len(examples) == 10 and all(e.meta["index"] == round(d * 8) for e in examples)
    task = RetrievalTask(Config(n_pairs=9))
    assert [e.prompt for e in depth_sweep(task, [0.5], 10, seed=2)[0.5]] == [e.prompt for e in sets[0.5]]


def test_u_shaped_index_histogram_matches_its_density():
    n_pairs, a, draws = 11, 0.9, 20_000
    f = [(1 - a) + 3 * a * (2 * (i / 10) - 1) ** 2 for i in range(n_pairs)]  # the documented density
    expected = [v / sum(f) for v in f]
    assert depth_weights(n_pairs, "u_shaped", a) == pytest.approx(expected)
    assert f[0] / f[5] == pytest.approx(28.0)
    task = RetrievalTask(Config(n_pairs=n_pairs, distribution="u_shaped", edge_weight=a))
    counts = [0] * n_pairs
    for e in task.generate(draws, seed=0):
        counts[e.meta["index"]] += 1
    assert chisquare(counts, [p * draws for p in expected]).pvalue > 1e-3
    uniform = [draws / n_pairs] * n_pairs  # the test has power: the same counts are far from uniform
    assert chisquare(counts, uniform).pvalue < 1e-12


def test_uniform_index_histogram_is_flat():
    task = RetrievalTask(Config(n_pairs=7))
    counts = [0] * 7
    for e in task.generate(7_000, seed=5):
        counts[e.meta["index"]] += 1
    assert chisquare(counts).pvalue > 1e-3


def test_context_length_in_characters():
    task = RetrievalTask(Config(context_chars=29))  # "ab:12" is 5 characters, pairs joined by ','
    e = task.generate(1, seed=0)[0]
    assert task.n_pairs == 5 and len(e.prompt.split("?")[0]) == 29
    assert RetrievalTask(Config(context_chars=28)).n_pairs == 4


def test_build_task_accepts_overrides():
    task = build_task('retrieval:n_pairs=6,depth=0.2,distribution="u_shaped"')
    assert task.cfg.n_pairs == 6 and task.cfg.depth == 0.2 and task.generate(1, 0)[0].meta["index"] == 1
    with pytest.raises(ConfigError, match="distribution"):
        build_task('retrieval:distribution="middle"')


@pytest.mark.parametrize("cfg,match", [
    (Config(n_pairs=0), "context is empty: n_pairs=0"),
    (Config(context_chars=4), "context is empty: context_chars=4"),
    (Config(depth=1.5), r"depth must be a number in \[0, 1\], got 1.5"),
    (Config(depth=-0.1), r"got -0.1"),
    (Config(n_pairs=30, key_len=1, key_chars="abc"), "needs 30 distinct keys"),
    (Config(key_chars="ab:"), "key_chars"),
    (Config(value_chars=""), "value_chars"),
    (Config(key_len=0), "key_len must be >= 1, got 0"),
    (Config(distribution="middle"), "distribution must be one of"),
    (Config(edge_weight=1.5), "edge_weight must be in"),
])
def test_bad_config_raises_naming_the_value(cfg, match):
    with pytest.raises(ValueError, match=match):
        RetrievalTask(cfg)


def test_bad_sweep_input_raises():
    with pytest.raises(ValueError, match=r"depth_sweep depth must be a number in \[0, 1\], got 2"):
        depth_sweep(Config(), [0.5, 2], n=1)
    with pytest.raises(ValueError, match="at least one depth"):
        depth_sweep(Config(), [], n=1)
    with pytest.raises(ValueError, match="n must be"):
        RetrievalTask().generate(-1, seed=0)


def test_verify_never_raises_on_random_answers():
    task = RetrievalTask(Config(n_pairs=4))
    rng = random.Random(0)
    e = task.generate(1, seed=0)[0]
    for _ in range(200):
        junk = "".join(rng.choice(task.alphabet + "|") for _ in range(rng.randint(0, 6)))
        assert task.verify(e.prompt, junk) == (junk == e.target)
