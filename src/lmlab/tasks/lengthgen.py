"""Length-generalisation substrates: reverse, duplicate, parity and binary addition (train short, test long).

The algorithmic tasks of Deletang et al. (arXiv:2207.02098, "Neural Networks and the Chomsky Hierarchy", CHE) that
DAPE v1 (arXiv:2405.14722) and DAPE v2 (arXiv:2410.04798) reuse to measure length extrapolation: a model trains on
inputs of length <= L and is tested on longer ones, so a position encoding that only fits the trained range fails.
Each task has one correct answer, and the verifier computes it from the prompt:

    reverse          prompt = "abba0"... a string over ``symbols``   target = the string reversed
    duplicate        prompt = a string over ``symbols``             target = the string written twice
    parity           prompt = a bit string                          target = "1" if it holds an odd number of 1s
    binary_addition  prompt = "0110+1011" (two n-bit operands,      target = the sum in binary, most significant
                     most significant bit first, zeros allowed)              bit first, no leading zeros ("0" for 0)

The *length* of an example is the input string's length (reverse, duplicate, parity) or the bits per operand
(binary addition). ``Config.split`` picks the range ``generate`` draws from: ``train`` = train_min..train_max,
``test`` = test_min..test_max, drawn uniformly per example; the ranges must be disjoint with every test length
longer than every train length. Defaults: train on <= 40, test on 41-256 (methods notes training.md 5.6(a); CHE
and DAPE test up to 500). Deviations: CHE's parity and addition targets are single classification tokens or
fixed-width outputs; here every target is plain text so one causal-LM trainer and exact verifier serve all four.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from lmlab.core.config import param
from lmlab.tasks.base import SEP, Example, check_generate_args

SPLITS = ("train", "test")


@dataclass
class Config:
    split: str = param("train", "length range generate() draws from: train | test", choices=SPLITS)
    train_min: int = param(1, "shortest training length (>= 1)")
    train_max: int = param(40, "longest training length L", source="training.md 5.6(a); CHE / DAPE train length 40")
    test_min: int = param(41, "shortest test length (> train_max)", source="training.md 5.6(a): test on 41-256")
    test_max: int = param(256, "longest test length", source="training.md 5.6(a): test on 41-256")


@dataclass
class StringConfig(Config):
    symbols: str = param("01", "characters the input strings are drawn from (reverse, duplicate)",
                         source="CHE's binary strings")


def check_lengths(cfg: Config, name: str) -> None:
    """ValueError naming the bad value unless 1 <= train_min <= train_max < test_min <= test_max."""
    if cfg.split not in SPLITS:
        raise ValueError(f"{name} split must be one of {SPLITS}, got {cfg.split!r}")
    for key in ("train_min", "train_max", "test_min", "test_max"):
        value = getattr(cfg, key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} {key} must be an int >= 1, got {value!r}")
    if cfg.train_max < cfg.train_min:
        raise ValueError(f"{name} train_max={cfg.train_max} is below train_min={cfg.train_min}")
    if cfg.test_min <= cfg.train_max:
        raise ValueError(f"{name} test lengths must be longer than every train length: test_min={cfg.test_min} "
                         f"<= train_max={cfg.train_max}")
    if cfg.test_max < cfg.test_min:
        raise ValueError(f"{name} test_max={cfg.test_max} is below test_min={cfg.test_min}")


def check_symbols(symbols: str, name: str, reserved: str = "") -> None:
    """ValueError unless ``symbols`` is a non-empty string of distinct characters outside SEP and ``reserved``."""
    if not isinstance(symbols, str) or not symbols or len(set(symbols)) != len(symbols):
        raise ValueError(f"{name} symbols must be a non-empty string of distinct characters, got {symbols!r}")
    bad = sorted(set(symbols) & set(SEP + reserved))
    if bad:
        raise ValueError(f"{name} symbols {symbols!r} contain reserved character(s) {''.join(bad)!r}")


def _string_prompt(prompt: str, symbols: str, name: str) -> str:
    if not isinstance(prompt, str) or not prompt or any(c not in symbols for c in prompt):
        raise ValueError(f"{name} prompt must be a non-empty string over {symbols!r}, got {prompt!r}")
    return prompt


class _LengthTask:
    """Shared generator and verifier; a task supplies ``name``, ``alphabet``, ``make`` and ``solve``."""

    name = ""
    alphabet = ""

    def __init__(self, cfg: Config | None = None):
        self.cfg = cfg if cfg is not None else self.default_config()
        check_lengths(self.cfg, self.name)

    @staticmethod
    def default_config() -> Config:
        return Config()

    def length_range(self, split: str | None = None) -> tuple[int, int]:
        """(shortest, longest) length of ``split`` (the config's split when None)."""
        split = self.cfg.split if split is None else split
        if split not in SPLITS:
            raise ValueError(f"{self.name} split must be one of {SPLITS}, got {split!r}")
        cfg = self.cfg
        return (cfg.train_min, cfg.train_max) if split == "train" else (cfg.test_min, cfg.test_max)

    def make(self, rng: random.Random, length: int) -> str:  # the prompt of one example of this length
        raise NotImplementedError

    def solve(self, prompt: str) -> str:  # the one correct answer; ValueError on a malformed prompt
        raise NotImplementedError

    def generate(self, n: int, seed: int) -> list[Example]:
        check_generate_args(n, seed)
        rng = random.Random(seed)
        lo, hi = self.length_range()
        out = []
        for _ in range(n):
            length = rng.randint(lo, hi)
            prompt = self.make(rng, length)
            out.append(Example(prompt, self.solve(prompt), {"length": length, "split": self.cfg.split}))
        return out

    def verify(self, prompt: str, answer: str) -> bool:
        """True iff ``answer`` is exactly the correct output (every task here has a unique answer)."""
        expected = self.solve(prompt)
        return isinstance(answer, str) and answer == expected


class _StringTask(_LengthTask):
    cfg: StringConfig

    def __init__(self, cfg: StringConfig | None = None):
        if cfg is not None and not isinstance(cfg, StringConfig):
            raise ValueError(f"{self.name} needs a lengthgen StringConfig (lengths + symbols), "
                             f"got {type(cfg).__name__}")
        super().__init__(cfg)
        check_symbols(self.cfg.symbols, self.name)
        self.alphabet = self.cfg.symbols

    @staticmethod
    def default_config() -> StringConfig:
        return StringConfig()

    def make(self, rng: random.Random, length: int) -> str:
        return "".join(rng.choice(self.cfg.symbols) for _ in range(length))


class ReverseTask(_StringTask):
    name = "reverse"

    def solve(self, prompt: str) -> str:
        return _string_prompt(prompt, self.cfg.symbols, self.name)[::-1]


class DuplicateTask(_StringTask):
    name = "duplicate"

    def solve(self, prompt: str) -> str:
        return _string_prompt(prompt, self.cfg.symbols, self.name) * 2


class ParityTask(_LengthTask):
    name = "parity"
    alphabet = "01"

    def make(self, rng: random.Random, length: int) -> str:
        return "".join(rng.choice("01") for _ in range(length))

    def solve(self, prompt: str) -> str:
        return str(_string_prompt(prompt, "01", self.name).count("1") % 2)


_ADDITION_RE = re.compile(r"([01]+)\+([01]+)")


class BinaryAdditionTask(_LengthTask):
    name = "binary_addition"
    alphabet = "01+"

    def make(self, rng: random.Random, length: int) -> str:
        a, b = ("".join(rng.choice("01") for _ in range(length)) for _ in range(2))
        return f"{a}+{b}"

    def solve(self, prompt: str) -> str:
        m = _ADDITION_RE.fullmatch(prompt) if isinstance(prompt, str) else None
        if m is None:
            raise ValueError(f"binary_addition prompt must be 'a+b' with binary operands, got {prompt!r}")
        return format(int(m.group(1), 2) + int(m.group(2), 2), "b")
