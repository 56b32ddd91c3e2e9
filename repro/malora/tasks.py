"""Small tagged string tasks for the MALoRA multi-task benchmark (training.md Sec. 3.6(a)); repro-local.

Every example is ``<tag><body>`` -> a fixed-length answer over one character alphabet, so one frozen base and one
``TaskCodec`` serve the pre-training mixture and all fine-tuning tasks:

    fine-tuning (the multi-task mix)          pre-training (the generic mixture of the frozen base)
    R reverse   Rcafhbd   -> dbhfac           C copy     Cd7a2   -> d7a2      (random strings, length 3-8)
    S sort      S403918   -> 013489           L rotate   Ld7a2   -> 7a2d      (first character moved to the end)
    K lookup    Ka3c5f1h7=c -> 5
    X max       X403918   -> 9
    M mod sum   M4729     -> 2                ((4+7+2+9) mod 10)

Each task follows ``lmlab.tasks.base.Task`` (seeded ``generate``, exact ``verify`` that recomputes the answer from
the prompt; a malformed prompt raises ValueError, a wrong or malformed answer returns False). ``Mixture`` cycles
through its tasks (example i comes from task i mod T) and dispatches ``verify`` by the tag.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from lmlab.tasks.base import Example, check_generate_args

LETTERS = "abcdefgh"
DIGITS = "0123456789"
TAGS = "RSKXMCL"
ALPHABET = DIGITS + LETTERS + TAGS + "="
PROMPT_LEN, TARGET_LEN = 11, 8  # the longest prompt (lookup) and answer (copy / rotate) of any task here


class StringTask:
    """One tagged task: ``make(rng) -> body`` draws a prompt body, ``answer(body) -> str`` solves it."""

    def __init__(self, name: str, tag: str, make: Callable[[random.Random], str], answer: Callable[[str], str],
                 valid: Callable[[str], bool]):
        self.name, self.tag, self.alphabet = name, tag, ALPHABET
        self._make, self._answer, self._valid = make, answer, valid

    def body(self, prompt: str) -> str:
        if not isinstance(prompt, str) or not prompt.startswith(self.tag) or not self._valid(prompt[1:]):
            raise ValueError(f"{prompt!r} is not a {self.name} prompt (tag {self.tag!r})")
        return prompt[1:]

    def generate(self, n: int, seed: int) -> list[Example]:
        check_generate_args(n, seed)
        rng = random.Random(seed)
        out = []
        for _ in range(n):
            body = self._make(rng)
            out.append(Example(self.tag + body, self._answer(body), {"task": self.name}))
        return out

    def verify(self, prompt: str, answer: str) -> bool:
        return isinstance(answer, str) and answer == self._answer(self.body(prompt))


def _string(chars: str, lo: int, hi: int) -> Callable[[random.Random], str]:
    return lambda rng: "".join(rng.choice(chars) for _ in range(rng.randint(lo, hi)))


def _all_in(chars: str, lo: int, hi: int) -> Callable[[str], bool]:
    return lambda s: lo <= len(s) <= hi and set(s) <= set(chars)


def _lookup_body(rng: random.Random) -> str:
    keys = rng.sample(LETTERS, 4)
    pairs = "".join(k + rng.choice(DIGITS) for k in keys)
    return pairs + "=" + rng.choice(keys)


def _lookup_answer(body: str) -> str:
    pairs, query = body[:8], body[9]
    return pairs[pairs.index(query) + 1]


def _lookup_valid(body: str) -> bool:
    if len(body) != 10 or body[8] != "=":
        return False
    keys, values = body[0:8:2], body[1:8:2]
    return (set(keys) <= set(LETTERS) and len(set(keys)) == 4 and set(values) <= set(DIGITS)
            and body[9] in keys)


def reverse() -> StringTask:
    return StringTask("reverse", "R", _string(LETTERS, 6, 6), lambda s: s[::-1], _all_in(LETTERS, 6, 6))


def sort() -> StringTask:
    return StringTask("sort", "S", _string(DIGITS, 6, 6), lambda s: "".join(sorted(s)), _all_in(DIGITS, 6, 6))


def lookup() -> StringTask:
    return StringTask("lookup", "K", _lookup_body, _lookup_answer, _lookup_valid)


def maximum() -> StringTask:
    return StringTask("max", "X", _string(DIGITS, 6, 6), max, _all_in(DIGITS, 6, 6))


def modsum() -> StringTask:
    return StringTask("modsum", "M", _string(DIGITS, 4, 4), lambda s: str(sum(map(int, s)) % 10),
                      _all_in(DIGITS, 4, 4))


def copy() -> StringTask:
    return StringTask("copy", "C", _string(DIGITS + LETTERS, 3, 8), lambda s: s, _all_in(DIGITS + LETTERS, 3, 8))


def rotate() -> StringTask:
    return StringTask("rotate", "L", _string(DIGITS + LETTERS, 3, 8), lambda s: s[1:] + s[0],
                      _all_in(DIGITS + LETTERS, 3, 8))


FINETUNE = {"reverse": reverse, "sort": sort, "lookup": lookup, "max": maximum, "modsum": modsum}
PRETRAIN = {"copy": copy, "rotate": rotate}


class Mixture:
    """Several tagged tasks as one task: example i of ``generate`` comes from task i mod T (its own seed stream)."""

    def __init__(self, names: list[str], table: dict[str, Callable[[], StringTask]] | None = None):
        table = {**FINETUNE, **PRETRAIN} if table is None else table
        unknown = [n for n in names if n not in table]
        if unknown or not names:
            raise ValueError(f"unknown task(s) {unknown or names}; expected names from {', '.join(table)}")
        self.tasks = [table[n]() for n in names]
        self.by_tag = {t.tag: t for t in self.tasks}
        self.name, self.alphabet = "+".join(names), ALPHABET

    def generate(self, n: int, seed: int) -> list[Example]:
        check_generate_args(n, seed)
        T = len(self.tasks)
        parts = [t.generate(len(range(i, n, T)), seed * 7919 + i) for i, t in enumerate(self.tasks)]
        return [parts[i % T][i // T] for i in range(n)]

    def verify(self, prompt: str, answer: str) -> bool:
        task = self.by_tag.get(prompt[:1]) if isinstance(prompt, str) else None
        if task is None:
            raise ValueError(f"prompt {prompt!r} has no tag of {sorted(self.by_tag)}")
        return task.verify(prompt, answer)


def split(task: Mixture, n_train_per_task: int, n_test_per_task: int, seed: int) -> tuple[list, list]:
    """(train, test) examples; test prompts that also occur in the training set are dropped (held out)."""
    T = len(task.tasks)
    train = task.generate(n_train_per_task * T, seed=seed)
    seen = {e.prompt for e in train}
    test = [e for e in task.generate(n_test_per_task * T, seed=seed + 1_000_003) if e.prompt not in seen]
    return train, test
