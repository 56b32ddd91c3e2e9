"""RISE's preference data: full-solution pairs plus error-injected step pairs, trained with DPO + NLL.

Paper: Xu et al., "Subtle Errors Matter: Preference Learning via Error-injected Self-editing" (RISE, arXiv:2410.06638,
ACL 2025); official code github.com/kaishxu/RISE (a fork of Step-DPO). The model's own sampled attempts give, per
problem with at least one correct and one wrong attempt, one **full pair** (a correct attempt chosen, a wrong one
rejected, drawn at random). Then ``edited_per_problem`` steps of the chosen solution are **edited into subtle
errors** (the paper: by the model itself, prompted with an error taxonomy; REPLACE / SWAP / DELETE edits of numbers,
symbols and terms), giving **step pairs**: prompt = the problem, prefix = the solution's steps before step k,
chosen = step k, rejected = the edited step k. Both kinds train one sigmoid DPO loss with an NLL term on the chosen
response (``objectives.dpo.DPO`` with ``nll_coef``; training.md 2.2).

Filters (training.md 2.2, step 6): an edit that contains a giveaway word ("incorrect", "wrong", ...) is dropped, and
so is one whose similarity to the original step is below ``min_similarity`` (the paper's Levenshtein filter, whose
threshold it does not report; here difflib's ratio, 0 = off). A no-op edit is dropped too.

The editor is any callable ``editor(problem, steps, k, rng) -> (edited step, error kind) | None``: ``chain_editor``
is the rule-based editor of the arithmetic-chains substrate (``tasks.chains.edit_step``: value, symbol, operand,
delete), which stands in for self-editing at the scale where the policy cannot follow editing instructions; an
LLM editor plugs in the same way, or the ``rise_pairs`` pipeline (``pipelines.rise``: the model edits its own
steps through any ``ChatClient``) whose output records ``pairs_from_records`` turns into pairs. Deviation:
``build_pairs`` does not filter self-correction phrases in correct attempts (the chains substrate has none; the
pipeline does filter them).
"""

from __future__ import annotations

import difflib
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from lmlab.core.config import param
from lmlab.objectives.preference import response_batch
from lmlab.tasks import chains

GIVEAWAY = ["incorrect", "wrong", "mistake", "mistakenly", "error", "let's correct"]  # official filter (2.2 step 6)
Editor = Callable[[str, list[str], int, random.Random], "tuple[str, str] | None"]


@dataclass
class Config:
    edited_per_problem: int = param(1, "step pairs per problem with a full pair (N)",
                                    source="official code: N = 1 (Qwen2-7B); paper: 3 for Llama-3.1-8B")
    min_similarity: float = param(0.0, "drop an edit less similar than this to the original step (difflib ratio; "
                                       "0 = off)", source="paper's Levenshtein filter; its threshold is unreported")
    giveaway: list[str] = param(GIVEAWAY, "an edit containing any of these words (case-insensitive) is dropped")
    seed: int = param(0, "seed of the pair and step choices")

    def __post_init__(self) -> None:
        if self.edited_per_problem < 0:
            raise ValueError(f"edited_per_problem must be >= 0, got {self.edited_per_problem}")
        if not 0.0 <= self.min_similarity <= 1.0:
            raise ValueError(f"min_similarity must be in [0, 1], got {self.min_similarity}")


@dataclass(frozen=True)
class Attempt:
    problem: str  # the prompt
    steps: list[str]  # the solution, one string per step
    correct: bool  # graded by the final answer (or strictly, as the caller decides)


@dataclass(frozen=True)
class Pair:
    problem: str
    prefix: list[str]  # steps before the chosen part (empty for a full pair)
    chosen: list[str]  # the chosen steps (the whole correct solution, or step k)
    rejected: list[str]  # the rejected steps (a wrong solution, or the edited step k)
    kind: str  # "full" | "step"
    step: int | None = None  # k of a step pair
    error: str | None = None  # the editor's error kind of a step pair


@dataclass
class PairCounts:
    problems: int = 0
    with_both: int = 0  # problems with a correct and a wrong attempt (they give a full pair)
    full: int = 0
    step: int = 0
    dropped: dict[str, int] = field(default_factory=lambda: {"no_edit": 0, "giveaway": 0, "similarity": 0,
                                                             "unparsed": 0})


def keep_edit(chosen: str, rejected: str, cfg: Config) -> str | None:
    """None when an edit passes the filters, else the filter that drops it."""
    if rejected == chosen:
        return "no_edit"
    low = rejected.lower()
    if any(w in low for w in cfg.giveaway):
        return "giveaway"
    if cfg.min_similarity and difflib.SequenceMatcher(None, chosen, rejected).ratio() < cfg.min_similarity:
        return "similarity"
    return None


def build_pairs(attempts: Sequence[Attempt], editor: Editor, cfg: Config | None = None
                ) -> tuple[list[Pair], PairCounts]:
    """Full pairs and edited step pairs from sampled ``attempts`` (module docstring), problems in first-seen order."""
    cfg = cfg or Config()
    rng = random.Random(cfg.seed)
    groups: dict[str, list[Attempt]] = {}
    for a in attempts:
        if not a.steps:
            raise ValueError(f"an attempt at {a.problem!r} has no steps")
        groups.setdefault(a.problem, []).append(a)
    pairs, counts = [], PairCounts(problems=len(groups))
    for problem, group in groups.items():
        good, bad = [a for a in group if a.correct], [a for a in group if not a.correct]
        if not good or not bad:
            continue
        counts.with_both += 1
        chosen, rejected = rng.choice(good), rng.choice(bad)
        pairs.append(Pair(problem, [], list(chosen.steps), list(rejected.steps), "full"))
        counts.full += 1
        n = min(cfg.edited_per_problem, len(chosen.steps))
        for k in sorted(rng.sample(range(len(chosen.steps)), n)):
            edit = editor(problem, list(chosen.steps), k, rng)
            why = "no_edit" if edit is None else keep_edit(chosen.steps[k], edit[0], cfg)
            if why:
                counts.dropped[why] += 1
                continue
            pairs.append(Pair(problem, list(chosen.steps[:k]), [chosen.steps[k]], [edit[0]], "step", k, edit[1]))
            counts.step += 1
    return pairs, counts


def pairs_from_records(records: Sequence[dict[str, Any]], cfg: Config | None = None
                       ) -> tuple[list[Pair], PairCounts]:
    """Full and step pairs from the output records of the ``rise_pairs`` pipeline (``pipelines.rise``): its
    ``full`` attempt indices give the full pair; its ``edits`` (every step of the chosen attempt, edited by the
    model) are filtered (the pipeline's ``dropped``: unparsed or no-op; then ``keep_edit``) and
    ``edited_per_problem`` of the survivors, drawn with a per-record seed, give step pairs (official: edit all
    steps, then sample N). The pairs do not depend on the order of the records."""
    cfg = cfg or Config()
    pairs, counts = [], PairCounts(problems=len(records))
    for r in records:
        missing = [k for k in ("question", "attempts", "full", "edits") if k not in r]
        if missing:
            raise ValueError(f"record {r.get('id')!r} lacks {missing}: give the rise_pairs pipeline's output")
        if r["full"] is None:
            continue
        rng = random.Random(f"{cfg.seed}:{r.get('id', r['question'])}")  # per record: any record order, same pairs
        counts.with_both += 1
        steps = r["attempts"][r["full"]["chosen"]]["steps"]
        pairs.append(Pair(r["question"], [], list(steps), list(r["attempts"][r["full"]["rejected"]]["steps"]), "full"))
        counts.full += 1
        kept = []
        for e in r["edits"]:
            why = e.get("dropped") or ("unparsed" if e["step"] is None else keep_edit(steps[e["k"]], e["step"], cfg))
            if why:
                counts.dropped[why] += 1
            else:
                kept.append(e)
        for e in sorted(rng.sample(kept, min(cfg.edited_per_problem, len(kept))), key=lambda e: e["k"]):
            k = e["k"]
            pairs.append(Pair(r["question"], list(steps[:k]), [steps[k]], [e["step"]], "step", k, e["error"]))
            counts.step += 1
    return pairs, counts


def chain_editor(cfg: chains.Config, kinds: Sequence[str] = chains.ERROR_KINDS) -> Editor:
    """The rule-based editor of the chains substrate: one error kind drawn uniformly among those that can make
    step k wrong (``tasks.chains.edit_step``)."""
    bad = [k for k in kinds if k not in chains.ERROR_KINDS]
    if bad or not kinds:
        raise ValueError(f"error kinds {bad or list(kinds)} are not among {', '.join(chains.ERROR_KINDS)}")

    def edit(problem: str, steps: list[str], k: int, rng: random.Random) -> tuple[str, str] | None:
        step = chains.parse_solution(steps[k])[0]
        if step is None:
            return None
        options = list(kinds)
        rng.shuffle(options)
        for kind in options:
            try:
                return chains.format_steps([chains.edit_step(step, kind, cfg, rng)]), kind
            except ValueError:  # this kind cannot make this step wrong (e.g. deleting "+0")
                continue
        return None

    return edit


def encode_pairs(pairs: Sequence[Pair], encode: Callable[[str], list[int]], sep: str = ",",
                 prompt_end: str = "") -> dict[str, torch.Tensor]:
    """A DPO batch (``objectives.dpo.DPO``'s keys) of right-padded token ids with response masks. A sequence is
    ``encode(problem + prompt_end + prefix + chosen|rejected)`` with steps joined by ``sep`` (a step pair's prefix
    ends with ``sep``); the mask covers the chosen / rejected part only. No EOS is added (step pairs are partial
    continuations, as in the official code)."""
    def side(p: Pair, part: list[str]) -> tuple[list[int], int]:
        head = p.problem + prompt_end + (sep.join(p.prefix) + sep if p.prefix else "")
        head_ids = encode(head)
        ids = encode(head + sep.join(part))
        if ids[: len(head_ids)] != head_ids:
            raise ValueError(f"encode splits {head!r} differently once the response follows; use a tokenizer whose "
                             "tokens do not cross the prompt / response boundary (e.g. characters)")
        return ids, len(head_ids)

    out = {}
    for name in ("chosen", "rejected"):
        rows = [side(p, getattr(p, name)) for p in pairs]
        out[f"{name}_ids"], out[f"{name}_mask"] = response_batch([(ids[:start], ids[start:]) for ids, start in rows])
    return out
