"""Scorers for the best-of-N decoders from a spec string (``lmlab generate --decoder best_of_n --scorer ...``).

    scorer = load_scorer("implicit:runs/prm-adapter", tok)             # an adapter folder: (adapted, its base)
    scorer = load_scorer("implicit:runs/dpo,smollm2-135m", tok)        # a policy and its reference
    scorer = load_scorer("likelihood", tok, target=model)              # the generating model's own log-prob

Specs:
- ``implicit:POLICY[,REFERENCE]``: the implicit PRM of arXiv 2412.01981 (``objectives.implicit_prm``) with the
  policy and reference loaded by ``lmlab.load``. Without REFERENCE, POLICY must be an adapter folder: the
  reference is then its base model with the adapter switched off (``AdaptedModel.base_view``, no second copy).
- ``likelihood``: ``beta * log p(candidate)`` under the generating model (the paper's "w/o ref" variant; with the
  default ``aggregation=sum`` best-of-N returns the most likely candidate).
``overrides`` set fields of ``objectives.implicit_prm.Config`` (``beta=0.05``, ``aggregation=sum``); beta defaults
to the official scoring coefficient 0.001 (``EVAL_COEF``: it changes no best-of-N pick, only the weighted vote's
``sigmoid(score)``, which is then majority vote with reward tie-breaking as in the official evaluation);
``step_sep`` is the text ending a step (one token of the tokenizer, e.g. ``"\\n"``); none: one step per response.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any

from lmlab.adapters.tuner import AdaptedModel
from lmlab.core.config import apply_overrides
from lmlab.core.tokenizer import fingerprint
from lmlab.loader import load
from lmlab.objectives.implicit_prm import EVAL_COEF, Config, ImplicitPRM, as_scorer

Scorer = Callable[[list[int], list[list[int]]], list[float]]
KINDS = ("implicit", "likelihood")


def load_scorer(spec: str, tok: Any, *, target: Any = None, overrides: list[str] | None = None,
                step_sep: str | None = None) -> Scorer:
    """The scorer ``spec`` names (see the module docstring); ``tok`` is the generating model's tokenizer."""
    kind, _, arg = spec.partition(":")
    if kind not in KINDS:
        raise ValueError(f"scorer spec {spec!r}: expected 'implicit:POLICY[,REFERENCE]' or 'likelihood'")
    cfg = Config(beta=EVAL_COEF, aggregation="sum", use_reference=False) if kind == "likelihood" else \
        Config(beta=EVAL_COEF)
    cfg = apply_overrides(cfg, list(overrides or []))
    if kind == "likelihood":
        if arg:
            raise ValueError(f"scorer spec {spec!r}: 'likelihood' scores with the generating model; it takes no path")
        if target is None:
            raise ValueError("the 'likelihood' scorer needs the generating model (target=)")
        if cfg.use_reference:
            raise ValueError("the 'likelihood' scorer has no reference model; use implicit:POLICY,REFERENCE")
        policy, reference = target, None
    else:
        policy, reference = policy_and_reference(spec, arg, tok)
        if target is not None and policy.vocab_size != target.vocab_size:
            raise ValueError(f"scorer model vocab_size {policy.vocab_size} != the generating model's "
                             f"{target.vocab_size}: the scorer reads the candidates' token ids")
    return as_scorer(ImplicitPRM(policy, reference, cfg), sep_ids=separator_ids(step_sep, tok),
                     pad_id=getattr(tok, "pad_id", None) or 0)


def policy_and_reference(spec: str, arg: str, tok: Any) -> tuple[Any, Any]:
    paths = [p for p in arg.split(",") if p]
    if len(paths) not in (1, 2):
        raise ValueError(f"scorer spec {spec!r}: expected 'implicit:POLICY' (an adapter folder) or "
                         "'implicit:POLICY,REFERENCE'")
    models = []
    for path in paths:
        model, mtok, _ = load(path)
        if mtok is not None and tok is not None and fingerprint(mtok) != fingerprint(tok):
            raise ValueError(f"scorer model {path!r} uses another tokenizer than the generating model; the scorer "
                             "reads the candidates' token ids, so both must share one tokenizer")
        models.append(model.eval())
    if len(models) == 2:
        return models[0], models[1]
    if not isinstance(models[0], AdaptedModel):
        raise ValueError(f"scorer spec {spec!r}: {paths[0]!r} is not an adapter folder, so it has no base to use as "
                         "the reference; give one: implicit:POLICY,REFERENCE")
    return models[0], models[0].base_view()


def separator_ids(step_sep: str | None, tok: Any) -> list[int]:
    """The token id of the step separator text (it must encode to exactly one token)."""
    if step_sep is None:
        return []
    ids = tok.encode(step_sep)
    if len(ids) != 1:
        raise ValueError(f"step separator {step_sep!r} encodes to {len(ids)} tokens {ids}; give a text that is "
                         "one token of this tokenizer (e.g. a newline or a comma)")
    return ids


def answer_extractor(pattern: str | None, tok: Any) -> Callable[[list[int]], Hashable] | None:
    """``answer_of`` for ``weighted_vote``: the last match of ``pattern`` in the decoded candidate (its first
    group, if it has one; a final end-of-text token is not decoded); a candidate without a match gives None,
    which ``WeightedVote`` leaves out of the vote. No pattern: None (whole continuations vote)."""
    if pattern is None:
        return None
    import re

    try:
        rx = re.compile(pattern)
    except re.error as e:
        raise ValueError(f"answer pattern {pattern!r} is not a regular expression: {e}") from None

    eos = getattr(tok, "eos_id", None)

    def answer_of(tokens: list[int]) -> Hashable:
        tokens = tokens[:-1] if tokens and eos is not None and tokens[-1] == eos else tokens
        found = list(rx.finditer(tok.decode(tokens)))
        if not found:
            return None
        m = found[-1]
        return m.group(1) if rx.groups else m.group(0)

    return answer_of
