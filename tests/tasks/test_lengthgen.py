"""Length-generalisation tasks: determinism, exact verifiers, disjoint train/test lengths, bad input, CLI training."""

import dataclasses
import random

import pytest

from lmlab.tasks import REGISTRY
from lmlab.tasks.base import Task
from lmlab.tasks.lengthgen import BinaryAdditionTask, Config, DuplicateTask, ParityTask, ReverseTask, StringConfig

NAMES = ["reverse", "duplicate", "parity", "binary_addition"]


def make(name, **kw):
    return REGISTRY.get(name)(REGISTRY.config(name)(**kw))


@pytest.mark.parametrize("name", NAMES)
def test_registry_entries_build_the_tasks(name):
    task = make(name)
    assert isinstance(task, Task) and task.name == name
    assert "|" not in task.alphabet and len(set(task.alphabet)) == len(task.alphabet)


@pytest.mark.parametrize("name", NAMES)
def test_generate_is_deterministic_prefix_stable_and_self_verifying(name):
    task = make(name, train_max=12, test_min=13, test_max=20)
    a, b = task.generate(10, seed=7), task.generate(10, seed=7)
    assert [dataclasses.astuple(e) for e in a] == [dataclasses.astuple(e) for e in b]
    assert [e.prompt for e in task.generate(4, seed=7)] == [e.prompt for e in a[:4]]
    assert [e.prompt for e in task.generate(10, seed=8)] != [e.prompt for e in a]
    for e in a:
        assert set(e.prompt + e.target) <= set(task.alphabet)
        assert task.verify(e.prompt, e.target)


@pytest.mark.parametrize("name", NAMES)
def test_train_and_test_lengths_are_disjoint_as_configured(name):
    kw = {"train_min": 3, "train_max": 9, "test_min": 10, "test_max": 16}
    train = make(name, split="train", **kw).generate(300, seed=0)
    test = make(name, split="test", **kw).generate(300, seed=0)
    operand = (lambda p: p.split("+")[0]) if name == "binary_addition" else (lambda p: p)
    train_lengths = {len(operand(e.prompt)) for e in train}
    test_lengths = {len(operand(e.prompt)) for e in test}
    assert train_lengths == set(range(3, 10)) and test_lengths == set(range(10, 17))  # every length is drawn
    assert all(e.meta["length"] == len(operand(e.prompt)) for e in train + test)


def test_answers_are_computed_exactly():
    rev, dup = ReverseTask(), DuplicateTask()
    assert rev.solve("0011") == "1100" and dup.solve("01") == "0101"
    assert ParityTask().solve("1011") == "1" and ParityTask().solve("1001") == "0"
    add = BinaryAdditionTask()
    assert add.solve("0110+1011") == "10001" and add.solve("000+000") == "0" and add.solve("1+1") == "10"
    for e in add.generate(50, seed=1):  # against Python's integers
        a, b = e.prompt.split("+")
        assert int(e.target, 2) == int(a, 2) + int(b, 2) and (e.target == "0" or e.target[0] == "1")
    letters = ReverseTask(StringConfig(symbols="abc"))
    assert letters.alphabet == "abc" and letters.verify("abcc", "ccba")


@pytest.mark.parametrize("task,prompt,right,wrongs", [
    (ReverseTask(), "0011", "1100", ["0011", "110", "11000", "", None, 1100]),
    (DuplicateTask(), "01", "0101", ["01", "010", "1010", "01010", None]),
    (ParityTask(), "1011", "1", ["0", "01", "11", "", None, 1]),
    (BinaryAdditionTask(), "0110+1011", "10001", ["010001", "1001", "10000", "17", "", None]),
])
def test_verifiers_accept_the_answer_and_reject_wrong_ones(task, prompt, right, wrongs):
    assert task.verify(prompt, right)
    for wrong in wrongs:
        assert task.verify(prompt, wrong) is False


@pytest.mark.parametrize("task,prompt", [(ReverseTask(), ""), (ReverseTask(), "012"), (DuplicateTask(), None),
                                         (ParityTask(), "1a"), (BinaryAdditionTask(), "101"),
                                         (BinaryAdditionTask(), "1+2"), (BinaryAdditionTask(), "+1")])
def test_malformed_prompts_raise(task, prompt):
    with pytest.raises(ValueError, match="prompt"):
        task.verify(prompt, "1")


@pytest.mark.parametrize("kw,match", [
    ({"train_max": 40, "test_min": 40}, "test_min=40 <= train_max=40"),
    ({"train_max": 50, "test_min": 41}, "test_min=41 <= train_max=50"),
    ({"train_min": 0}, "train_min must be an int >= 1, got 0"),
    ({"train_min": 5, "train_max": 4, "test_min": 6}, "train_max=4 is below train_min=5"),
    ({"test_min": 50, "test_max": 45}, "test_max=45 is below test_min=50"),
    ({"split": "val"}, "split must be one of"),
])
@pytest.mark.parametrize("name", NAMES)
def test_bad_lengths_raise_naming_the_values(name, kw, match):
    with pytest.raises(ValueError, match=match):
        make(name, **kw)


@pytest.mark.parametrize("symbols", ["", "aa", "a|b"])
def test_bad_symbols_raise(symbols):
    with pytest.raises(ValueError, match="symbols"):
        ReverseTask(StringConfig(symbols=symbols))


def test_string_tasks_refuse_a_config_without_symbols():
    with pytest.raises(ValueError, match="duplicate needs a lengthgen StringConfig"):
        DuplicateTask(Config())


def test_verify_never_raises_on_random_answers():
    rng = random.Random(0)
    for task in (ReverseTask(), DuplicateTask(), ParityTask(), BinaryAdditionTask()):
        e = task.generate(1, seed=0)[0]
        for _ in range(100):
            junk = "".join(rng.choice(task.alphabet + "|x") for _ in range(rng.randint(0, 8)))
            assert task.verify(e.prompt, junk) == (junk == e.target)


def test_length_range_reports_both_splits():
    task = ParityTask(Config(train_min=2, train_max=5, test_min=8, test_max=9))
    assert task.length_range() == (2, 5) and task.length_range("test") == (8, 9)
    with pytest.raises(ValueError, match="split"):
        task.length_range("dev")


def test_lmlab_train_task_runs_on_a_length_task(tmp_path, capsys):
    from lmlab.cli.main import main

    code = main(["train", "task", "--task", "reverse:train_max=6,test_min=7,test_max=8", "--objective", "causal_lm",
                 "--model.dim", "16", "--model.n-heads", "2", "--model.n-layers", "1", "--train.steps", "2",
                 "--train.warmup-steps", "1", "--train.progress", "false", "--train.run-dir", str(tmp_path / "run"),
                 "--task-data.n-train", "64", "--task-data.n-test", "64", "--task-data.batch-size", "8"])
    out = capsys.readouterr().out
    assert code == 0 and "accuracy" in out and "steps: 2" in out
    assert (tmp_path / "run" / "task.json").is_file()
