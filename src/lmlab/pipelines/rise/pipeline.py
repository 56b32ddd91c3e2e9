"""RISE's data stages: self-sample attempts, grade them, and have the model edit each step of a correct attempt
into a subtle error (the error taxonomy prompts). ``objectives.rise.pairs_from_records`` turns the output into
full and step preference pairs (with the giveaway / similarity filters) for DPO + NLL.

Records, one JSON object a line: ``id``, ``question``, ``answer`` (the gold final answer) ->
- ``sample`` adds ``attempts``: [{"text", "steps", "answer", "correct"}] (``samples`` completions);
- ``edit`` adds ``full`` ({"chosen", "rejected"}: attempt indices, or None when the problem has no correct or no
  wrong attempt) and ``edits``: one per step k of the chosen attempt (up to ``max_edit_steps``), {"k", "error",
  "step" (the rejected step: the chosen step with its edit region replaced; None when dropped), "dropped" (None,
  "unparsed": no ``` block, or "no_edit": the region unchanged), "raw" (the editor's answer)}.
Every request carries a seed derived from (``seed``, record id[, step]), so a re-run asks the same questions.
"""

from __future__ import annotations

import asyncio
import random
import re
import zlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from lmlab.core.chat import ChatClient, ChatParams, Completion
from lmlab.core.config import param
from lmlab.pipelines.base import Pipeline, Stage, prompt, prompts_version, record_text
from lmlab.pipelines.runner import Summary, run

STEP = re.compile(r"(?:^|\n)\s*(?=Step \d+:)")  # official split: "\nStep k:"
HEADER = re.compile(r"Step \d+:[ \t]*")
NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
BLOCK = re.compile(r"```[^\n]*\n?(.*?)```", re.S)
SELF_CORRECTION = ("a mistake", "let's correct", "let's reconsider", "python")  # official construct_dpo_samples
ERRORS = ("numbers", "number", "substitution", "delete", "symbol", "swap", "words")


@dataclass
class Config:
    samples: int = param(5, "attempts sampled per question (K)", source="arXiv 2410.06638 (K = 5)")
    temperature: float = param(0.2, "sampling temperature of the attempts", source="official scripts/sampling.sh")
    top_p: float = param(0.9, "nucleus mass of the attempts", source="official scripts/sampling.sh")
    max_tokens: int = param(1024, "longest attempt in tokens")
    edit_temperature: float = param(0.2, "sampling temperature of the edits (not stated by the paper: the "
                                         "attempts' temperature)")
    edit_max_tokens: int = param(256, "longest edit answer in tokens")
    max_edit_steps: int = param(12, "edit at most the first this many steps of the chosen attempt")
    region_sentences: int = param(4, "the edit region is the last this many sentences of a step",
                                  source="official construct_self_editing_prompts.py")
    seed: int = param(0, "seed of the chosen / rejected attempt and of the error prompt per step")
    concurrency: int = param(4, "records in flight")

    def __post_init__(self) -> None:
        for name in ("samples", "max_tokens", "edit_max_tokens", "max_edit_steps", "region_sentences", "concurrency"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


# ---------------------------------------------------------------- parsing and grading


def split_steps(text: str) -> list[str]:
    """The ``Step k:`` steps of a solution (each keeps its header); text before Step 1 is dropped unless there is
    no header at all (then the whole text is one step)."""
    parts = [p.strip() for p in STEP.split(text.strip())]
    steps = [p for p in parts if p.startswith("Step ")]
    return steps or ([text.strip()] if text.strip() else [])


def _last_boxed(text: str) -> tuple[int, int] | None:
    """(start of the last ``\\boxed{``, index of its closing brace), or None (absent or unclosed)."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth = 0
    for j in range(start + len("\\boxed"), len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return start, j
    return None


def boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` (nested braces allowed), or None."""
    span = _last_boxed(text)
    return None if span is None else text[span[0] + len("\\boxed{"):span[1]].strip()


def strip_boxed(text: str) -> str:
    """``\\boxed{x}`` -> ``x`` everywhere (the official code strips the wrappers from the rejected text)."""
    while (span := _last_boxed(text)) is not None:
        start, end = span
        text = text[:start] + text[start + len("\\boxed{"):end] + text[end + 1:]
    return text


def normalise(answer: str) -> str:
    """Answer text for matching: no spaces, ``$``, thousands commas, trailing ``.``; 2.50 == 2.5 == 5/2 is not
    attempted beyond plain decimals (exact match of the normalised strings otherwise)."""
    a = answer.strip().strip("$").replace(" ", "").rstrip(".")
    a = re.sub(r"(?<=\d),(?=\d{3}\b)", "", a)
    try:
        return repr(float(a))
    except ValueError:
        return a


def is_correct(answer: str | None, gold: str) -> bool:
    return answer is not None and normalise(answer) == normalise(gold)


def edit_region(step: str, sentences: int) -> tuple[str, str]:
    """(head, region) with head + region == step: the region is the last ``sentences`` sentences (split on
    newlines and ". ") of the step's body; the ``Step k:`` header is always in the head, never edited."""
    header = HEADER.match(step)
    h = header.end() if header else 0
    body = step[h:]
    cuts = [m.end() for m in re.finditer(r"\n|\. ", body) if m.end() < len(body)]
    at = cuts[-sentences] if len(cuts) >= sentences else 0
    return step[:h + at], body[at:]


def rejected_step(head: str, region: str, edited: str | None) -> tuple[str | None, str | None]:
    """(the rejected step, None) or (None, why it is dropped: "unparsed" / "no_edit"). A header the editor
    repeated is removed; ``\\boxed{}`` wrappers the editor added are stripped (official), those of the region
    kept, so that chosen and rejected differ in the edit only; an edit equal to the region up to whitespace and
    wrappers is a no-op."""
    if edited is None:
        return None, "unparsed"
    if HEADER.match(edited) and not HEADER.match(region):
        edited = HEADER.sub("", edited, count=1)
    if "\\boxed{" not in region:
        edited = strip_boxed(edited)
    if strip_boxed(edited).split() == strip_boxed(region).split():
        return None, "no_edit"
    return head + edited, None


def stable_seed(*parts: Any) -> int:
    """A request seed from the config seed, record id and step (the same on every run and machine)."""
    return zlib.crc32(":".join(map(str, parts)).encode())


def error_kinds(region: str) -> list[str]:
    """The error prompts that fit a region (official feature rules): numbers -> value edits, "=" -> substitution,
    delete, symbol and swap edits, neither -> a misunderstanding of the question."""
    n = len(NUMBER.findall(region))
    kinds = ["numbers"] if n > 1 else ["number"] if n == 1 else []
    if "=" in region:
        kinds += ["substitution", "delete", "symbol", "swap"]
    return kinds or ["words"]


def parse_edit(answer: str) -> str | None:
    """The text inside the first ``` block of the editor's answer (stripped), or None."""
    m = BLOCK.search(answer)
    return m.group(1).strip() if m and m.group(1).strip() else None


# ---------------------------------------------------------------- stages


async def _completions(llm: ChatClient, messages: list[dict[str, str]], params: ChatParams, n: int,
                       seed: int) -> list[Completion]:
    """n completions: one request with ``n`` when the client can, else n requests with seeds seed .. seed+n-1."""
    if "n" in llm.capabilities:
        return (await llm.achat(messages, replace(params, n=n, seed=seed))).completions
    results = await asyncio.gather(*(llm.achat(messages, replace(params, seed=seed + i)) for i in range(n)))
    return [r.completions[0] for r in results]


def sample_stage(cfg: Config) -> Stage:
    """Stage 1: ``samples`` attempts per question, split into steps and graded by the boxed final answer."""
    params = ChatParams(temperature=cfg.temperature, top_p=cfg.top_p, max_tokens=cfg.max_tokens)

    async def sample(record: dict[str, Any], llm: ChatClient) -> dict[str, Any]:
        question, gold = record_text(record, "question", numbers=True), record_text(record, "answer", numbers=True)
        messages = [{"role": "user", "content": prompt("rise/solve", question=question)}]
        attempts = []
        for c in await _completions(llm, messages, params, cfg.samples, stable_seed(cfg.seed, record.get("id"))):
            answer = boxed(c.text)
            attempts.append({"text": c.text, "steps": split_steps(c.text), "answer": answer,
                             "correct": is_correct(answer, gold)})
        return record | {"attempts": attempts}

    return sample


def choose_full_pair(record: dict[str, Any], seed: int) -> dict[str, int] | None:
    """A correct attempt without self-correction phrases and a wrong one, drawn with a per-record seed."""
    attempts = record["attempts"]
    good = [i for i, a in enumerate(attempts) if a["correct"] and a["steps"]
            and not any(p in a["text"].lower() for p in SELF_CORRECTION)]
    bad = [i for i, a in enumerate(attempts) if not a["correct"] and a["steps"]]
    if not good or not bad:
        return None
    rng = random.Random(f"{seed}:{record.get('id')}")
    return {"chosen": rng.choice(good), "rejected": rng.choice(bad)}


def edit_stage(cfg: Config) -> Stage:
    """Stage 2: the full pair's indices, and an error-injected edit of each step of the chosen attempt."""
    params = ChatParams(temperature=cfg.edit_temperature, max_tokens=cfg.edit_max_tokens)

    async def edit(record: dict[str, Any], llm: ChatClient) -> dict[str, Any]:
        if "attempts" not in record:
            raise ValueError(f"record {record.get('id')!r} has no attempts: run the sample stage first")
        full = choose_full_pair(record, cfg.seed)
        if full is None:
            return record | {"full": None, "edits": []}
        question = record_text(record, "question", numbers=True)
        steps = record["attempts"][full["chosen"]]["steps"]
        rng = random.Random(f"{cfg.seed}:{record.get('id')}:edit")

        async def one(k: int, error: str) -> dict[str, Any]:
            head, region = edit_region(steps[k], cfg.region_sentences)
            previous = "\n".join(steps[:k] + ([head.strip()] if head.strip() else [])) or "(none)"
            user = prompt(f"rise/edit_{error}", question=question, previous=previous, step=region)
            seeded = replace(params, seed=stable_seed(cfg.seed, record.get("id"), k))
            raw = (await llm.achat([{"role": "user", "content": user}], seeded)).text
            step, dropped = rejected_step(head, region, parse_edit(raw))
            return {"k": k, "error": error, "step": step, "dropped": dropped, "raw": raw}

        ks = range(min(len(steps), cfg.max_edit_steps))
        errors = [rng.choice(error_kinds(edit_region(steps[k], cfg.region_sentences)[1])) for k in ks]
        return record | {"full": full, "edits": list(await asyncio.gather(*(one(k, e) for k, e in zip(ks, errors))))}

    return edit


class RisePairs:
    """RISE's pair data: ``pipeline()`` (sample, edit) for ``runner.run``; pairs via
    ``objectives.rise.pairs_from_records``."""

    def __init__(self, cfg: Config | None = None):
        self.cfg = cfg or Config()

    def pipeline(self) -> Pipeline:
        return Pipeline("rise_pairs", [sample_stage(self.cfg), edit_stage(self.cfg)],
                        prompt_version=prompts_version("rise"))

    def run(self, in_path: str | Path, out_path: str | Path, llm: ChatClient) -> Summary:
        """Run over a JSONL file with the one runner (resumable; failures to the errors file)."""
        return run(self.pipeline(), in_path, out_path, llm, concurrency=self.cfg.concurrency)
