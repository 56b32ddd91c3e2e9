"""RevisEval's stages (revise, judge), the strict verdict parsers, and classic-metric scoring of the output.

Records, one JSON object a line (``id`` plus):

- pointwise: ``instruction``, ``response`` -> adds ``reference`` (the response-adapted reference r*) and, with
  the judge, ``judge_score`` (1-10) and ``judgements`` (the judge's raw answers);
- pairwise: ``instruction``, ``response_a``, ``response_b`` (optional ``label`` "A" / "B") -> adds
  ``references`` ({"B": r*} as the official notebook, or {"A": .., "B": ..} with both-order revision) and, with
  the judge, ``judge_votes`` (one winner per reference and order), ``judge_pref_a`` (their mean vote for A)
  and ``judge_winner`` ("A" / "B" / "tie").

``RevisEval.score`` adds the classic metrics between each response and the adapted reference(s).
"""

from __future__ import annotations

import asyncio
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from lmlab.core.chat import ChatClient, ChatParams
from lmlab.core.config import param
from lmlab.pipelines.base import Pipeline, Stage, prompt, prompts_version, record_text
from lmlab.pipelines.runner import Summary, run

from .metrics import METRICS, majority_vote, metric_fn, prefer

Form = Literal["pointwise", "pairwise"]


@dataclass
class Config:
    form: Form = param("pairwise", "pointwise (score one response) or pairwise (pick the better of two)",
                       choices=("pointwise", "pairwise"))
    reviser_temperature: float = param(0.3, "reviser sampling temperature", source="official main.ipynb")
    judge_temperature: float = param(0.1, "judge sampling temperature", source="official main.ipynb")
    reviser_max_tokens: int = param(1024, "longest revision in tokens")
    judge_max_tokens: int = param(512, "longest judge answer (explanation + verdict) in tokens")
    both_orders: bool = param(False, "pairwise: revise each response informed by the other (2 references) "
                                     "instead of response B only (official)")
    position_swap: bool = param(False, "pairwise judge: judge in both orders and average the votes")
    judge: bool = param(True, "run the LLM judge after revision (off: revision only, for classic metrics)")
    metrics: list[str] = param(["bleu", "chrf", "rougeL", "bertscore"], "classic metrics computed by score()",
                               source="methods spec 6.6(a): the majority-vote set")
    bertscore_model: str = param("", "local model folder for BERTScore ('' = the packaged all-MiniLM-L6-v2)")
    bertscore_layers: int = param(6, "BERTScore layer (MiniLM has 6)")
    concurrency: int = param(4, "records in flight (the official notebook uses 50 threads on an API)")

    def __post_init__(self) -> None:
        if self.form not in ("pointwise", "pairwise"):
            raise ValueError(f"form must be 'pointwise' or 'pairwise', got {self.form!r}")
        unknown = [m for m in self.metrics if m not in METRICS]
        if unknown:
            raise ValueError(f"unknown metrics {unknown}; known: {', '.join(METRICS)}")
        if self.concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {self.concurrency}")


VERDICT = re.compile(r"\[\[([^\[\]]*)\]\]")


def parse_verdict(text: str) -> str:
    """The pairwise judge's verdict: exactly one distinct ``[[A]]`` / ``[[B]]`` in the answer, else ValueError."""
    found = {v.strip() for v in VERDICT.findall(text)}
    if found not in ({"A"}, {"B"}):
        raise ValueError(f"judge verdict must contain exactly one of [[A]] / [[B]]; found {sorted(found) or 'none'}"
                         f" in {text[-200:]!r}")
    return found.pop()


def parse_rating(text: str) -> int:
    """The pointwise judge's rating: exactly one distinct ``[[k]]`` with k an integer 1-10, else ValueError."""
    found = {v.strip() for v in VERDICT.findall(text)}
    if len(found) != 1 or not next(iter(found)).isdigit() or not 1 <= int(next(iter(found))) <= 10:
        raise ValueError(f"judge rating must be exactly one [[k]] with k in 1..10; found {sorted(found) or 'none'}"
                         f" in {text[-200:]!r}")
    return int(found.pop())


async def _ask(llm: ChatClient, user: str, params: ChatParams, system: str | None = None) -> str:
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
    text = (await llm.achat(messages, params)).text.strip()
    if not text:
        raise ValueError("the model returned an empty answer")
    return text


def revise_stage(cfg: Config) -> Stage:
    """Stage 1: the response-adapted reference(s) r* = reviser(x, y [, the other response])."""
    params = ChatParams(temperature=cfg.reviser_temperature, max_tokens=cfg.reviser_max_tokens)

    async def revise(record: dict[str, Any], llm: ChatClient) -> dict[str, Any]:
        x = record_text(record, "instruction")
        if cfg.form == "pointwise":
            text = prompt("reviseval/revise_pointwise", instruction=x, response=record_text(record, "response"))
            return record | {"reference": await _ask(llm, text, params)}
        ys = {"A": record_text(record, "response_a"), "B": record_text(record, "response_b")}
        targets = ("A", "B") if cfg.both_orders else ("B",)
        texts = [prompt("reviseval/revise_pairwise", instruction=x, response=ys[t], other=ys["B" if t == "A" else "A"])
                 for t in targets]
        refs = await asyncio.gather(*(_ask(llm, t, params) for t in texts))
        return record | {"references": dict(zip(targets, refs))}

    return revise


def judge_stage(cfg: Config) -> Stage:
    """Stage 2: the reference-guided LLM judge (pairwise: one vote per reference and order, averaged)."""
    params = ChatParams(temperature=cfg.judge_temperature, max_tokens=cfg.judge_max_tokens)

    async def judge(record: dict[str, Any], llm: ChatClient) -> dict[str, Any]:
        x = record_text(record, "instruction")
        if cfg.form == "pointwise":
            user = prompt("reviseval/judge_pointwise", instruction=x, reference=record["reference"],
                          response=record["response"])
            answer = await _ask(llm, user, params, prompt("reviseval/judge_pointwise_system"))
            return record | {"judge_score": parse_rating(answer), "judgements": [answer]}
        ys = {"A": record["response_a"], "B": record["response_b"]}
        orders = [("A", "B"), ("B", "A")] if cfg.position_swap else [("A", "B")]
        jobs = [(ref, order) for ref in record["references"].values() for order in orders]
        system = prompt("reviseval/judge_pairwise_system")
        answers = await asyncio.gather(*(
            _ask(llm, prompt("reviseval/judge_pairwise", instruction=x, reference=ref, answer_a=ys[first],
                             answer_b=ys[second]), params, system) for ref, (first, second) in jobs))
        # a verdict names a position; map it back to the record's response
        votes = [order[0] if parse_verdict(a) == "A" else order[1] for a, (_, order) in zip(answers, jobs)]
        pref_a = votes.count("A") / len(votes)
        winner = "A" if pref_a > 0.5 else "B" if pref_a < 0.5 else "tie"
        return record | {"judge_votes": votes, "judge_pref_a": pref_a, "judge_winner": winner, "judgements": answers}

    return judge


def shuffle_pairs(records: Sequence[dict[str, Any]], seed: int = 0) -> list[dict[str, Any]]:
    """Swap A and B (and the label) with p = 0.5, as the official notebook randomises which response is B."""
    rng, out = random.Random(seed), []
    for r in records:
        if rng.random() < 0.5:
            r = r | {"response_a": r["response_b"], "response_b": r["response_a"]}
            if r.get("label") in ("A", "B"):
                r["label"] = "B" if r["label"] == "A" else "A"
        out.append(r)
    return out


class RevisEval:
    """Revise-then-evaluate: ``pipeline()`` for ``runner.run``, ``score()`` for the classic metrics."""

    def __init__(self, cfg: Config | None = None):
        self.cfg = cfg or Config()

    def pipeline(self) -> Pipeline:
        stages = [revise_stage(self.cfg)] + ([judge_stage(self.cfg)] if self.cfg.judge else [])
        return Pipeline(f"reviseval-{self.cfg.form}", stages, prompt_version=prompts_version("reviseval"))

    def run(self, in_path: str | Path, out_path: str | Path, llm: ChatClient) -> Summary:
        """Run the pipeline over a JSONL file with the one runner (resumable; failures to the errors file)."""
        return run(self.pipeline(), in_path, out_path, llm, concurrency=self.cfg.concurrency)

    def score(self, records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """The records with classic metrics against their adapted references: pointwise ``metrics`` {name: score};
        pairwise ``metrics`` {name: {"A", "B"}} (mean over references), ``metric_votes`` and ``majority``."""
        if self.cfg.form == "pointwise":
            hyps = [record_text(r, "response") for r in records]
            refs = [record_text(r, "reference") for r in records]
            table = {m: self._metric(m)(hyps, refs) for m in self.cfg.metrics}
            return [r | {"metrics": {m: table[m][i] for m in table}} for i, r in enumerate(records)]
        # one (response, reference) pair per record x side x reference
        keys = [(i, side, ref) for i, r in enumerate(records) for side in ("A", "B") for ref in r["references"]]
        hyps = [records[i][f"response_{side.lower()}"] for i, side, _ in keys]
        refs = [records[i]["references"][ref] for i, _, ref in keys]
        out = [r | {"metrics": {}} for r in records]
        for m in self.cfg.metrics:
            sums: dict[tuple[int, str], list[float]] = {}
            for (i, side, _), s in zip(keys, self._metric(m)(hyps, refs)):
                sums.setdefault((i, side), []).append(s)
            for i, r in enumerate(out):
                r["metrics"][m] = {side: sum(sums[i, side]) / len(sums[i, side]) for side in ("A", "B")}
        for r in out:
            r["metric_votes"] = {m: prefer(s["A"], s["B"]) for m, s in r["metrics"].items()}
            r["majority"] = majority_vote(list(r["metric_votes"].values()))
        return out

    def _metric(self, name: str):
        return metric_fn(name, self.cfg.bertscore_model, self.cfg.bertscore_layers)
