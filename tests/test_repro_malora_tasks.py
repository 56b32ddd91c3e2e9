"""repro/malora's tagged string tasks: generators are seeded and fit the codec; verifiers recompute the answer."""

import pytest

from lmlab.harness import repo_root, repro_module

tasks = repro_module("malora", "tasks", repo_root())
ALL = {**tasks.FINETUNE, **tasks.PRETRAIN}


@pytest.mark.parametrize("name", sorted(ALL))
def test_generated_examples_verify_and_fit_the_codec(name):
    task = ALL[name]()
    examples = task.generate(200, seed=3)
    assert examples == task.generate(200, seed=3) and examples[:50] == task.generate(50, seed=3)
    for e in examples:
        assert task.verify(e.prompt, e.target)
        assert len(e.prompt) <= tasks.PROMPT_LEN and len(e.target) <= tasks.TARGET_LEN
        assert set(e.prompt + e.target) <= set(tasks.ALPHABET)


@pytest.mark.parametrize("prompt,right,wrong", [
    ("Rcafhbd", "dbhfac", "cafhbd"),
    ("S403918", "013489", "034918"),
    ("Ka3c5f1h7=c", "5", "3"),
    ("X403918", "9", "8"),
    ("M4729", "2", "22"),
    ("Cd7a2", "d7a2", "d7a"),
    ("Ld7a2", "7a2d", "2d7a"),
])
def test_verifiers_accept_only_the_answer(prompt, right, wrong):
    mix = tasks.Mixture(sorted(ALL))
    assert mix.verify(prompt, right)
    assert not mix.verify(prompt, wrong)
    assert not mix.verify(prompt, None) and not mix.verify(prompt, "")


@pytest.mark.parametrize("prompt", ["Rcafhb", "S40391x", "Ka3a5f1h7=a", "Ka3c5f1h7=d", "Qabc", "", None])
def test_malformed_prompts_raise(prompt):
    with pytest.raises(ValueError):
        tasks.Mixture(sorted(ALL)).verify(prompt, "1")


def test_mixture_cycles_tasks_and_split_holds_out_training_prompts():
    mix = tasks.Mixture(["reverse", "modsum"])
    ex = mix.generate(6, seed=0)
    assert [e.prompt[0] for e in ex] == ["R", "M"] * 3
    train, test = tasks.split(mix, 300, 300, seed=1)
    assert len(train) == 600 and test and not {e.prompt for e in test} & {e.prompt for e in train}
    with pytest.raises(ValueError, match="unknown task"):
        tasks.Mixture(["parity"])
