"""Arithmetic chains: generator <-> verifier round trip, exact first-error verdicts, error injection, SFT error rate."""

import math
import random

import pytest

from lmlab.tasks.base import format_steps
from lmlab.tasks.chains import ChainTask, Config, first_error, solve, step_errors


def test_generate_is_seeded_prefix_stable_and_self_verifying():
    task = ChainTask(Config(steps=4, ops="+-", modulus=10))
    a, b = task.generate(50, 3), task.generate(80, 3)
    assert [e.prompt for e in a] == [e.prompt for e in b[:50]] and a[0].target == b[0].target
    assert len({e.prompt for e in b}) > 40
    for e in b:
        assert task.verify(e.prompt, e.target) and task.first_error(e.prompt, e.target) is None
        assert e.meta == {"answer": int(e.target.split("=")[-1]), "first_error": None, "wrong_steps": 0}
        assert len(e.target.split(",")) == 4 and set(e.prompt + e.target) <= set(task.alphabet)


def test_solution_of_a_hand_made_chain():
    cfg = Config(steps=3, ops="+-", modulus=10)
    assert format_steps(solve("3+4+8-5", cfg)) == "3+4=7,7+8=5,5-5=0"
    assert format_steps(solve("2-7", cfg)) == "2-7=5"
    assert format_steps(solve("95+7", Config(modulus=100))) == "95+7=2"


@pytest.mark.parametrize("answer, want, errors", [
    ("3+4=7,7+8=5,5-5=0", None, [False, False, False]),
    ("3+4=8,8+8=6,6-5=1", 0, [True, False, False]),       # wrong result carried forward: one error
    ("3+4=7,7+8=6,6-5=1", 1, [False, True, False]),
    ("3+4=7,7+8=5,5-5=9", 2, [False, False, True]),
    ("3+4=8,7+8=5,5-5=0", 0, [True, True, False]),        # step 1 does not use step 0's written result
    ("3+4=7,7+8=5,5+5=0", 2, [False, False, True]),       # wrong operator
    ("3+4=7,7+9=6,6-5=1", 1, [False, True, False]),       # wrong operand, right arithmetic
    ("3+4=8,8+8=5,5-5=0", 0, [True, True, False]),        # two errors that cancel: final answer right
    ("3+4=7,7+8=5", 2, [False, False, True]),             # missing step
    ("3+4=7,7+8=5,5-5=0,0+0=0", 3, [False, False, False, True]),  # extra step
    ("3+4=7,7+8=x,5-5=0", 1, [False, True, False]),       # malformed step
    ("", 0, [True, True, True]),
])
def test_first_error_is_exact_on_hand_made_answers(answer, want, errors):
    cfg = Config(steps=3, ops="+-")
    assert first_error("3+4+8-5", answer, cfg) == want
    assert step_errors("3+4+8-5", answer, cfg) == errors
    assert ChainTask(cfg).verify("3+4+8-5", answer) is (want is None)


def test_final_correct_is_answer_matching_but_verify_is_strict():
    task = ChainTask(Config(steps=3, ops="+-"))
    assert task.final_correct("3+4+8-5", "3+4=8,8+8=5,5-5=0") and not task.verify("3+4+8-5", "3+4=8,8+8=5,5-5=0")
    assert not task.final_correct("3+4+8-5", "3+4=8,8+8=6,6-5=1")
    assert not task.verify("3+4+8-5", None) and not task.final_correct("3+4+8-5", "junk")


def test_bad_prompts_and_configs_are_named():
    task = ChainTask(Config())
    for bad in ("", "3+", "3*4", "03+4", "3+12", None):
        with pytest.raises(ValueError, match="chain prompt"):
            task.verify(bad, "3+4=7")
    for cfg, match in ((Config(steps=0), "steps"), (Config(ops="+*"), "ops"), (Config(modulus=1), "modulus"),
                       (Config(error_rate=1.5), "error_rate")):
        with pytest.raises(ValueError, match=match):
            ChainTask(cfg)


def test_injection_changes_exactly_one_step_and_first_error_finds_it():
    task = ChainTask(Config(steps=5, ops="+-"))
    rng = random.Random(1)
    seen = set()
    for e in task.generate(200, 0):
        edited, k = task.inject_error(e.prompt, e.target, rng=rng)
        seen.add(k)
        assert task.first_error(e.prompt, edited) == k
        assert task.step_errors(e.prompt, edited) == [i == k for i in range(5)]  # later steps right given inputs
        old, new = e.target.split(","), edited.split(",")
        assert old[:k] == new[:k] and old[k].split("=")[0] == new[k].split("=")[0] and old[k] != new[k]
        assert not task.final_correct(e.prompt, edited)  # '+'/'-' carry the offset to the answer
    assert seen == set(range(5))
    edited, k = task.inject_error("3+4+8-5", "3+4=7,7+8=5,5-5=0", index=1, rng=random.Random(0))
    assert k == 1 and edited.startswith("3+4=7,7+8=") and first_error("3+4+8-5", edited, task.cfg) == 1


def test_injection_refuses_a_wrong_solution_and_a_bad_index():
    task = ChainTask(Config(steps=3, ops="+-"))
    with pytest.raises(ValueError, match="needs a correct solution.*first error at step 1"):
        task.inject_error("3+4+8-5", "3+4=7,7+8=6,6-5=1")
    with pytest.raises(ValueError, match=r"index must be in 0\.\.2, got 3"):
        task.inject_error("3+4+8-5", "3+4=7,7+8=5,5-5=0", index=3)


def test_sft_error_rate_is_near_p():
    """8,000 steps at p = 0.2: the binomial standard error is sqrt(0.2 * 0.8 / 8000) = 0.0045, so a 4.5-sigma band
    (0.02) fails a correct generator with probability < 1e-5 and catches a rate off by 0.02 or more (seeded)."""
    p, n, k = 0.2, 2000, 4
    task = ChainTask(Config(steps=k, error_rate=p))
    examples = task.generate(n, 7)
    wrong = sum(e.meta["wrong_steps"] for e in examples)
    assert abs(wrong / (n * k) - p) < 4.5 * math.sqrt(p * (1 - p) / (n * k))
    clean = sum(e.meta["first_error"] is None for e in examples) / n
    assert abs(clean - (1 - p) ** k) < 4.5 * math.sqrt(0.41 * 0.59 / n)  # P(no error in 4 steps) = 0.41
    for e in examples[:200]:  # the recorded first error is the verifier's, and errors carry forward
        assert e.meta["first_error"] == task.first_error(e.prompt, e.target)
        assert sum(task.step_errors(e.prompt, e.target)) == e.meta["wrong_steps"]
        assert task.final_correct(e.prompt, e.target) == (e.meta["wrong_steps"] == 0 or e.meta["answer"] ==
                                                          int(e.target.split("=")[-1]))
