"""The controlled mechanism test's data: clean answers, k controlled corruptions (quality = -k), a template
paraphrase as the "human" reference, and a scripted reviser (a ChatClient) that undoes each corruption with
probability p, seeded by the response it revises."""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass
from pathlib import Path

from lmlab.core.chat import ChatResult, Completion, Messages, Usage, request_hash, run_sync

ANSWER = re.compile(r"\[The Start of Assistant's Answer\]\n(.*?)\n\[The End of Assistant's Answer\]", re.S)
ERRORS = ["not", "never", "in Egypt", "seven times", "no longer", "by night", "a thousand", "without fear"]
SYNONYMS = {"said": "declared", "made": "created", "great": "vast", "earth": "land", "man": "person",
            "men": "people", "good": "fine", "saw": "noticed", "called": "named", "went": "travelled",
            "came": "arrived", "gave": "handed", "took": "seized", "children": "offspring", "people": "folk",
            "heaven": "the sky", "heavens": "the skies", "water": "sea", "waters": "seas", "every": "each",
            "all": "the whole of", "house": "home", "land": "country", "shall": "will", "will": "shall",
            "spoke": "talked", "also": "too", "because": "since", "but": "yet", "very": "truly", "there": "over there",
            "day": "daytime", "word": "saying", "light": "brightness", "life": "existence", "know": "understand"}


@dataclass(frozen=True)
class Edit:
    kind: str  # "swap" (a fact / word replaced), "delete" (2 words dropped), "insert" (an error phrase added)
    pos: int  # index into the clean sentence's words
    words: tuple[str, ...] = ()  # the replacement or inserted words


def sentences(folder: Path, min_words: int = 15, max_words: int = 40) -> list[str]:
    """Real sentences of the text fixtures, ``min_words``..``max_words`` words (room for 4 corruptions), in order."""
    out: list[str] = []
    for path in sorted(folder.glob("*.txt")):
        text = path.read_text(encoding="utf-8").replace("\n", " ")
        out += [s for s in re.split(r"(?<=[.?!])\s+", text) if min_words <= len(s.split()) <= max_words]
    return list(dict.fromkeys(out))


def make_edits(words: list[str], k: int, vocab: list[str], rng: random.Random) -> list[Edit]:
    """``k`` corruptions at well-separated positions (at least 3 words apart, so they never overlap)."""
    slots = list(range(1, len(words) - 2, 3))
    if len(slots) < k:
        raise ValueError(f"a sentence of {len(words)} words has room for {len(slots)} corruptions, need {k}")
    edits = []
    for pos in sorted(rng.sample(slots, k)):
        kind = rng.choice(["swap", "delete", "insert"])
        if kind == "swap":
            new = rng.choice([w for w in vocab if w.lower() != words[pos].lower().strip(",.;:")])
            edits.append(Edit("swap", pos, (new,)))
        elif kind == "delete":
            edits.append(Edit("delete", pos))
        else:
            edits.append(Edit("insert", pos, tuple(rng.choice(ERRORS).split())))
    return edits


def apply_edits(words: list[str], edits: list[Edit]) -> str:
    """The sentence with ``edits`` applied (right to left, so clean positions stay valid)."""
    out = list(words)
    for e in sorted(edits, key=lambda e: -e.pos):
        if e.kind == "swap":
            out[e.pos] = e.words[0]
        elif e.kind == "delete":
            del out[e.pos:e.pos + 2]
        else:
            out[e.pos:e.pos] = list(e.words)
    return " ".join(out)


def paraphrase(sentence: str) -> str:
    """A template paraphrase (the stand-in for an independent human reference): synonyms for frequent words,
    clauses rotated at the first comma, and a framing phrase."""
    words = [SYNONYMS.get(w.lower(), w) if w.isalpha() else w for w in sentence.split()]
    text = " ".join(words).rstrip(".?!")
    head, sep, tail = text.partition(", ")
    if sep and len(tail.split()) >= 3:
        text = f"{tail}, while {head}"
    return f"Put differently: {text}."


class ScriptedReviser:
    """A reviser that knows how each response was corrupted and undoes each corruption with probability
    ``p_fix`` (seeded by ``seed`` and the response text, so a response always gets the same revision)."""

    model, capabilities = "scripted-reviser", frozenset({"seed"})

    def __init__(self, known: dict[str, tuple[list[str], list[Edit]]], p_fix: float = 0.8, seed: int = 0):
        if not 0 <= p_fix <= 1:
            raise ValueError(f"p_fix must be in [0, 1], got {p_fix}")
        self.known, self.p_fix, self.seed = known, p_fix, seed

    def revise(self, response: str) -> str:
        if response not in self.known:
            raise ValueError(f"the scripted reviser does not know the response {response[:80]!r}")
        words, edits = self.known[response]
        rng = random.Random(hashlib.sha256(f"{self.seed}\0{response}".encode()).hexdigest())
        return apply_edits(words, [e for e in edits if rng.random() >= self.p_fix])

    async def achat(self, messages: Messages, params) -> ChatResult:
        user = messages[-1]["content"]
        found = ANSWER.search(user)
        if found is None:
            raise ValueError("the scripted reviser found no [The Start of Assistant's Answer] block")
        text = self.revise(found.group(1))
        return ChatResult([Completion(text, "stop")], Usage(len(user.split()), len(text.split())), self.model,
                          request_hash(self.model, messages, params))

    def chat(self, messages: Messages, **params) -> ChatResult:
        return run_sync(self, messages, **params)
