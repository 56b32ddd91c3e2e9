"""Evaluation of a policy on fresh chains: greedy strict accuracy, temperature-1 sampled strict accuracy, and the
per-step error rate by error type on the sampled solutions (the paper's Fig. 3 analogue, exact on this substrate).

Each written step is judged given its inputs (``tasks.chains.step_errors``'s convention: the input is the previous
written result) and a wrong step is classified by the first pattern it matches, in this order:
``input`` (the left operand is not the previous result), ``symbol`` (operator flipped), ``operand`` (wrong right
operand), ``delete`` (right operator and operand, result == input), ``value`` (right operands, wrong result),
``format`` (malformed, missing or extra step). The first four of ``chains.ERROR_KINDS`` are the injected types.
Rates are percent of step slots (max(written steps, K) per sample).
"""

from __future__ import annotations

from typing import Any

from lmlab.harness import repro_module
from lmlab.recipes.tasks import accuracy
from lmlab.tasks import chains
from lmlab.tasks.base import Example

KINDS = ("input", *chains.ERROR_KINDS, "format")


def step_kinds(prompt: str, answer: str, cfg: chains.Config) -> list[str | None]:
    """One entry per step slot: None for a right step, else its error kind (module docstring)."""
    value: int | None
    value, ops = chains.parse_prompt(prompt, cfg)
    written = chains.parse_solution(answer)
    out: list[str | None] = []
    for k in range(max(len(written), len(ops))):
        step = written[k] if k < len(written) else None
        if step is None or k >= len(ops):
            out.append("format")
            value = None
            continue
        a, op, d, c = step
        right_op, right_d = ops[k]
        if value is not None and a != value:
            out.append("input")
        elif op != right_op:
            out.append("symbol")
        elif d != right_d:
            out.append("operand")
        elif c == chains.apply_mod(a, op, d, cfg.modulus):
            out.append(None)
        elif c == a:
            out.append("delete")
        else:
            out.append("value")
        value = c
    return out


def error_rates(prompts: list[str], answers: list[str], cfg: chains.Config) -> dict[str, float]:
    counts = dict.fromkeys(KINDS, 0)
    slots = 0
    for p, a in zip(prompts, answers):
        kinds = step_kinds(p, a, cfg)
        slots += len(kinds)
        for k in kinds:
            if k is not None:
                counts[k] += 1
    out = {f"err_{k}": 100 * n / max(1, slots) for k, n in counts.items()}
    out["err_injected"] = sum(out[f"err_{k}"] for k in chains.ERROR_KINDS)
    out["err_all"] = sum(out[f"err_{k}"] for k in KINDS)
    return out


def evaluate(model: Any, codec: Any, cfg: dict, prompts: list[str], seed: int) -> dict[str, float]:
    """Greedy and sampled strict accuracy (percent) and the sampled per-step error rates of ``model``."""
    ex = repro_module("implicit_prm", "experiment")
    task = ex.make_task(cfg)
    greedy = 100 * accuracy(model, task, codec, [Example(p, "", {}) for p in prompts])
    ro = ex.rollouts(model, codec, cfg, prompts, cfg["n_samples"], seed)
    rates = error_rates(ro.prompts, ro.answers, task.cfg)
    # every strict pass has no wrong step slot and vice versa (a cross-check of the classifier against the verifier)
    agree = all((not any(step_kinds(p, a, task.cfg))) == s for p, a, s in zip(ro.prompts, ro.answers, ro.strict))
    return {"acc": greedy, "sampled_acc": 100 * sum(ro.strict) / len(ro.strict), "classifier_agrees": float(agree),
            **rates}
