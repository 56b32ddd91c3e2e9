"""Modular arithmetic chains with verifiable steps: the substrate of the implicit-PRM and RISE reproductions.

A chain ``x0 op1 d1 op2 d2 ... opK dK`` is evaluated strictly left to right modulo ``modulus``; the solution
writes one step per operation, in the step format shared with countdown and arithmetic (``tasks.base``):

    prompt = "3+4+8+5"            target = "3+4=7,7+8=5,5+5=0"      (modulus 10, K = 3, ops '+')

Every step is verifiable on its own, so besides the final answer the *first erroneous step* is defined exactly,
which is what process-reward (ProcessBench-style localisation) and error-injection (RISE) claims need. A step is
correct **given its inputs**: its left operand is the previous step's written result (x0 for the first step),
its operator and right operand are the prompt's, and its result is ``(a op d) mod modulus``. A wrong result that
the next step then uses as its input is one error, not two ("carried forward consistently").

Why a task of its own rather than a mode of ``tasks.arithmetic``: arithmetic verifies exact integer arithmetic of
a parenthesised tree in *any* dependency-respecting order (commutative operands swapped, steps reordered), which
is the right verifier there and leaves "the first wrong step" undefined; chains need modular results, a fixed
left-to-right order and per-step verdicts with carried-forward errors. Both share ``tasks.base``'s step format.

Sources: the substrate is the one described for the CPU reproductions of Yuan et al. (arXiv:2412.01981, implicit
PRM) and Xu et al. (arXiv:2410.06638, RISE): digits mod 10, ops '+' (a d=64/L=2 model learns '+' chains in ~500
steps; with '+' and '-' it had not after 350), K = 3-4, SFT data with a per-step error rate p (a wrong result,
carried forward). ``inject_error`` is RISE's self-editor at this scale: a rule-based stand-in for its "wrong
calculation" edit type (the tiny policy cannot follow editing instructions).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from lmlab.core.config import param
from lmlab.tasks.base import Example, Step, check_generate_args, format_steps, parse_int

_STEP_RE = re.compile(r"([0-9]+)([-+])([0-9]+)=([0-9]+)")


@dataclass
class Config:
    steps: int = param(4, "operations per chain (K)", source="training.md 1.6: K = 3-4")
    ops: str = param("+", "allowed operators, a non-empty subset of '+-'",
                     source="training.md 1.8: '+' only is learnable by a d=64/L=2 model")
    modulus: int = param(10, "every value is taken modulo this (>= 2); operands are 0..modulus-1")
    error_rate: float = param(0.0, "per-step probability that a generated target's result is wrong (carried "
                                   "forward); 0 = clean solutions", source="training.md 1.8: SFT data with p = 0.2")


def parse_prompt(prompt: str, cfg: Config) -> tuple[int, list[tuple[str, int]]]:
    """``"3+4-2"`` -> ``(3, [("+", 4), ("-", 2)])``; ValueError on anything else (a malformed prompt is a bug)."""
    if not isinstance(prompt, str) or not prompt:
        raise ValueError(f"chain prompt must be a non-empty string, got {prompt!r}")
    parts = re.fullmatch(r"([0-9]+)((?:[-+][0-9]+)+)", prompt)
    if parts is None:
        raise ValueError(f"chain prompt {prompt!r} is not of the form 'x0 op1 d1 ... opK dK' (ops + or -)")
    values = [parse_int(v) for v in [parts.group(1), *re.findall(r"[0-9]+", parts.group(2))]]
    if any(v is None or v >= cfg.modulus for v in values):
        raise ValueError(f"chain prompt {prompt!r}: operands must be canonical integers in 0..{cfg.modulus - 1}")
    return values[0], list(zip(re.findall(r"[-+]", parts.group(2)), values[1:]))


def apply_mod(a: int, op: str, d: int, modulus: int) -> int:
    return (a + d) % modulus if op == "+" else (a - d) % modulus


def solve(prompt: str, cfg: Config) -> list[Step]:
    """The correct steps of ``prompt``."""
    value, ops = parse_prompt(prompt, cfg)
    steps = []
    for op, d in ops:
        steps.append((value, op, d, apply_mod(value, op, d, cfg.modulus)))
        value = steps[-1][3]
    return steps


def parse_solution(answer: str | list[Step]) -> list[Step | None]:
    """Steps of an answer; a malformed step is None (so a verdict can point at it). Lists of steps pass through."""
    if isinstance(answer, list):
        return list(answer)
    if not isinstance(answer, str) or not answer:
        return []
    out: list[Step | None] = []
    for part in answer.split(","):
        m = _STEP_RE.fullmatch(part)
        nums = [parse_int(m.group(i)) for i in (1, 3, 4)] if m else [None]
        out.append(None if None in nums else (nums[0], m.group(2), nums[1], nums[2]))
    return out


def step_errors(prompt: str, answer: str | list[Step], cfg: Config) -> list[bool]:
    """One verdict per written step, True = wrong given its inputs (module docstring); a missing, malformed or
    extra (beyond the K-th) step is wrong, and the step after a malformed one is judged from its own input.
    Never raises on a malformed answer."""
    value: int | None
    value, ops = parse_prompt(prompt, cfg)
    written = parse_solution(answer)
    verdicts = []
    for k in range(max(len(written), len(ops))):
        step = written[k] if k < len(written) else None
        if step is None or k >= len(ops):
            verdicts.append(True)
            value = None  # no written result: the next step's input is taken as given
            continue
        a, op, d, c = step
        expected = (a if value is None else value, *ops[k])
        verdicts.append((a, op, d) != expected or c != apply_mod(a, op, d, cfg.modulus))
        value = c  # the next step takes the written result, right or wrong
    return verdicts


def first_error(prompt: str, answer: str | list[Step], cfg: Config) -> int | None:
    """Index of the first step that is wrong given its inputs (or missing, or extra); None if every step is right."""
    return next((k for k, bad in enumerate(step_errors(prompt, answer, cfg)) if bad), None)


def final_answer(answer: str | list[Step]) -> int | None:
    """The last written step's result (the chain's answer), None when that step is malformed or absent."""
    written = parse_solution(answer)
    return written[-1][3] if written and written[-1] is not None else None


def final_correct(prompt: str, answer: str | list[Step], cfg: Config) -> bool:
    """Answer matching only (as an outcome grader does): a lucky chain with wrong steps can pass this."""
    return final_answer(answer) == solve(prompt, cfg)[-1][3]


def noisy_steps(prompt: str, cfg: Config, rate: float, rng: random.Random) -> list[Step]:
    """A solution whose every step's result is wrong with probability ``rate`` (a uniformly drawn wrong value),
    each later step computing correctly from the written (possibly wrong) result before it."""
    value, ops = parse_prompt(prompt, cfg)
    steps = []
    for op, d in ops:
        c = apply_mod(value, op, d, cfg.modulus)
        if rng.random() < rate:
            c = (c + rng.randint(1, cfg.modulus - 1)) % cfg.modulus  # any of the modulus - 1 wrong values
        steps.append((value, op, d, c))
        value = c
    return steps


def inject_error(prompt: str, answer: str | list[Step], cfg: Config, index: int | None = None,
                 rng: random.Random | None = None) -> tuple[str, int]:
    """RISE's edit at this scale: make step ``index`` (drawn by ``rng`` when None) compute a wrong result, carry it
    forward through the later steps, and return ``(edited solution, index)``. ``answer`` must be correct."""
    steps = parse_solution(answer)
    if first_error(prompt, steps, cfg) is not None:
        raise ValueError(f"inject_error needs a correct solution of {prompt!r}; got {answer!r} (first error at "
                         f"step {first_error(prompt, steps, cfg)})")
    rng = rng if rng is not None else random.Random(0)
    index = rng.randrange(len(steps)) if index is None else index
    if not 0 <= index < len(steps):
        raise ValueError(f"inject_error index must be in 0..{len(steps) - 1}, got {index}")
    edited = list(steps[:index])
    value = steps[index][0]
    for k, (_, op, d, _) in enumerate(steps[index:], start=index):
        c = apply_mod(value, op, d, cfg.modulus)
        if k == index:
            c = (c + rng.randint(1, cfg.modulus - 1)) % cfg.modulus
        edited.append((value, op, d, c))
        value = c
    return format_steps(edited), index


# RISE's error taxonomy on this substrate (training.md 2.6: value error, symbol flip, wrong operand, deleted term)
ERROR_KINDS = ("value", "symbol", "operand", "delete")


def edit_step(step: Step, kind: str, cfg: Config, rng: random.Random) -> Step:
    """Step ``a op d = c`` turned into a subtle error of ``kind``, wrong given its inputs; every kind but "value"
    keeps the written arithmetic self-consistent (the error is in what was computed, not how):

        value    a op d = c'           a wrong result (c' != c)
        symbol   a op' d = (a op' d)   the other operator ('+' <-> '-'), computed correctly
        operand  a op d' = (a op d')   another right operand (a wrong substitution), computed correctly
        delete   a op d = a            the term dropped: the input carried through unchanged (needs a op d != a)

    Raises ValueError when the kind cannot make this step wrong (e.g. "delete" on ``a + 0``)."""
    a, op, d, c = step
    m = cfg.modulus
    if kind == "value":
        return a, op, d, (c + rng.randint(1, m - 1)) % m
    if kind == "symbol":
        flipped = "-" if op == "+" else "+"
        return a, flipped, d, apply_mod(a, flipped, d, m)
    if kind == "operand":
        d2 = (d + rng.randint(1, m - 1)) % m
        return a, op, d2, apply_mod(a, op, d2, m)
    if kind == "delete":
        if a == c:
            raise ValueError(f"a deleted term leaves step {format_steps([step])} unchanged (its operation is a no-op)")
        return a, op, d, a
    raise ValueError(f"error kind {kind!r} is unknown; expected one of {', '.join(ERROR_KINDS)}")


class ChainTask:
    """Seeded chains (``generate``), strict verifier (every step right) and the per-step tools above."""

    name = "chains"
    alphabet = "0123456789+-=,"

    def __init__(self, cfg: Config | None = None):
        self.cfg = cfg = cfg if cfg is not None else Config()
        if cfg.steps < 1:
            raise ValueError(f"chains steps must be >= 1, got {cfg.steps}")
        if not cfg.ops or any(o not in "+-" for o in cfg.ops) or len(set(cfg.ops)) != len(cfg.ops):
            raise ValueError(f"chains ops must be a non-empty subset of '+-', got {cfg.ops!r}")
        if cfg.modulus < 2:
            raise ValueError(f"chains modulus must be >= 2, got {cfg.modulus}")
        if not 0.0 <= cfg.error_rate <= 1.0:
            raise ValueError(f"chains error_rate must be in [0, 1], got {cfg.error_rate}")

    def sample(self, rng: random.Random) -> Example:
        m = self.cfg.modulus
        prompt = str(rng.randrange(m)) + "".join(f"{rng.choice(self.cfg.ops)}{rng.randrange(m)}"
                                                 for _ in range(self.cfg.steps))
        steps = noisy_steps(prompt, self.cfg, self.cfg.error_rate, rng) if self.cfg.error_rate else \
            solve(prompt, self.cfg)
        errors = step_errors(prompt, steps, self.cfg)
        return Example(prompt, format_steps(steps), {"answer": solve(prompt, self.cfg)[-1][3],
                                                     "first_error": first_error(prompt, steps, self.cfg),
                                                     "wrong_steps": sum(errors)})

    def generate(self, n: int, seed: int) -> list[Example]:
        check_generate_args(n, seed)
        rng = random.Random(seed)
        return [self.sample(rng) for _ in range(n)]

    def verify(self, prompt: str, answer: str) -> bool:
        """True iff every step is right given its inputs (strict: a lucky wrong-process chain fails)."""
        return isinstance(answer, str) and first_error(prompt, answer, self.cfg) is None

    def first_error(self, prompt: str, answer: str | list[Step]) -> int | None:
        return first_error(prompt, answer, self.cfg)

    def step_errors(self, prompt: str, answer: str | list[Step]) -> list[bool]:
        return step_errors(prompt, answer, self.cfg)

    def final_correct(self, prompt: str, answer: str | list[Step]) -> bool:
        return final_correct(prompt, answer, self.cfg)

    def inject_error(self, prompt: str, answer: str | list[Step], index: int | None = None,
                     rng: random.Random | None = None) -> tuple[str, int]:
        return inject_error(prompt, answer, self.cfg, index, rng)
