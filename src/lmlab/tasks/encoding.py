"""Task examples -> fixed-length token tensors: ``prompt <sep> target <eos> <pad>...`` (MGDM's data layout).

One layout serves every objective, so an autoregressive baseline and a diffusion model see identical tensors:

    ids       (N, L)  prompt, <sep>, target, <eos>, then <pad> up to L = prompt_len + 1 + target_len + 1
    src_mask  (N, L)  True on the prompt and <sep>: the givens a diffusion model never masks or re-predicts
    targets   (N, L)  next-token targets for causal LM: targets[i] = ids[i+1] on the target and its <eos>,
                      -100 elsewhere (prompt, <sep> and padding carry no autoregressive loss)

Characters use a :class:`~lmlab.core.tokenizer.CharTokenizer` over the task's alphabet with the specials
``<pad> <sep> <eos> <mask>`` after it (MGDM's custom tokenizer has the same symbols at ids 0-4; the ids
differ, the roles do not). ``prompt_len`` / ``target_len`` are the longest prompt and target the context must
hold; a longer example is a ValueError naming its length. ``encode_prompts`` builds the decoding input: the
target region is all ``<mask>`` and ``maskable`` marks it.

Inpainting layout (``blank``, for diffusion models on tasks whose prompt is the target with some positions
blanked, e.g. Sudoku): target position j with ``prompt[j] != blank`` is a given. It is written into the target
region, counted in ``src_mask`` (never masked, no diffusion loss) and left out of ``maskable`` when decoding, so
the model only learns and fills the blanks. The method notes for MGDM suggest this layout for Sudoku; the
paper's layout keeps the whole target maskable. ``causal_lm`` targets are unchanged by it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from lmlab.core.tokenizer import CharTokenizer
from lmlab.tasks.base import Example

SPECIALS = ("<pad>", "<sep>", "<eos>", "<mask>")
IGNORE = -100  # causal-LM target id that carries no loss


class TaskCodec:
    """Char tokenizer + fixed layout for one task. ``seq_len = prompt_len + target_len + 2``."""

    def __init__(self, alphabet: str, prompt_len: int, target_len: int, blank: str | None = None):
        for name, v in (("prompt_len", prompt_len), ("target_len", target_len)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"TaskCodec {name} must be an int >= 1, got {v!r}")
        if blank is not None and (not isinstance(blank, str) or len(blank) != 1 or blank not in alphabet):
            raise ValueError(f"TaskCodec blank must be one character of the alphabet {alphabet!r}, got {blank!r}")
        self.tok = CharTokenizer(alphabet, SPECIALS)
        self.alphabet, self.prompt_len, self.target_len, self.blank = alphabet, prompt_len, target_len, blank
        self.pad_id, self.sep_id, self.eos_id, self.mask_id = (self.tok.token_id(s) for s in SPECIALS)

    @classmethod
    def fit(cls, alphabet: str, examples: Sequence[Example], slack: int = 0, blank: str | None = None) -> TaskCodec:
        """A codec just long enough for ``examples`` (plus ``slack`` positions on each part)."""
        if not examples:
            raise ValueError("TaskCodec.fit needs at least one example to size the context")
        return cls(alphabet, max(len(e.prompt) for e in examples) + slack,
                   max(len(e.target) for e in examples) + slack, blank)

    @property
    def vocab_size(self) -> int:
        return self.tok.vocab_size

    @property
    def seq_len(self) -> int:
        return self.prompt_len + self.target_len + 2

    def _check(self, text: str, limit: int, what: str) -> None:
        if len(text) > limit:
            raise ValueError(f"{what} of length {len(text)} is longer than the context allows "
                             f"({what}_len={limit}): {text[:60]!r}")

    def givens(self, prompt: str) -> list[int]:
        """Target positions fixed by the prompt in the inpainting layout ([] without ``blank``)."""
        if self.blank is None:
            return []
        if len(prompt) > self.target_len:
            raise ValueError(f"inpainting prompt of length {len(prompt)} is longer than the target "
                             f"(target_len={self.target_len}): {prompt[:60]!r}")
        return [j for j, c in enumerate(prompt) if c != self.blank]

    def encode(self, examples: Sequence[Example]) -> dict[str, torch.Tensor]:
        """Training tensors ``ids``, ``src_mask``, ``targets`` (see the module docstring)."""
        N, L = len(examples), self.seq_len
        ids = torch.full((N, L), self.pad_id, dtype=torch.long)
        src = torch.zeros(N, L, dtype=torch.bool)
        targets = torch.full((N, L), IGNORE, dtype=torch.long)
        for i, ex in enumerate(examples):
            self._check(ex.prompt, self.prompt_len, "prompt")
            self._check(ex.target, self.target_len, "target")
            p = len(ex.prompt) + 1  # prompt and <sep>
            row = self.tok.encode(ex.prompt) + [self.sep_id] + self.tok.encode(ex.target) + [self.eos_id]
            ids[i, : len(row)] = torch.tensor(row)
            src[i, :p] = True
            for j in self.givens(ex.prompt):
                if j >= len(ex.target) or ex.target[j] != ex.prompt[j]:
                    raise ValueError(f"inpainting layout: target {ex.target!r} does not keep the given "
                                     f"{ex.prompt[j]!r} of prompt {ex.prompt!r} at position {j}")
                src[i, p + j] = True
            targets[i, p - 1 : len(row) - 1] = ids[i, p : len(row)]  # predict target and <eos> from the left
        return {"ids": ids, "src_mask": src, "targets": targets}

    def encode_prompts(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Decoding input: ``ids`` (N, L) with the target region all ``<mask>``, and ``maskable`` (N, L)."""
        N, L = len(prompts), self.seq_len
        ids = torch.full((N, L), self.mask_id, dtype=torch.long)
        maskable = torch.ones(N, L, dtype=torch.bool)
        for i, prompt in enumerate(prompts):
            self._check(prompt, self.prompt_len, "prompt")
            row = self.tok.encode(prompt) + [self.sep_id]
            ids[i, : len(row)] = torch.tensor(row)
            maskable[i, : len(row)] = False
            for j in self.givens(prompt):  # inpainting: givens sit in the target region, fixed
                ids[i, len(row) + j] = ids[i, j]
                maskable[i, len(row) + j] = False
        return ids, maskable

    def answer_starts(self, ids: torch.Tensor) -> list[int]:
        """First target position of each row (just after <sep>)."""
        return ((ids == self.sep_id).int().argmax(-1) + 1).tolist()

    def answer(self, row: Sequence[int], start: int) -> str:
        """The answer text of one decoded row: tokens from ``start`` up to the first <eos>/<pad>.

        A stray special (<sep>, <mask>) inside the answer yields a string no verifier accepts ("?" marks it).
        """
        out = []
        for t in (int(x) for x in row[start:]):
            if t in (self.eos_id, self.pad_id):
                break
            out.append(self.tok.alphabet[t] if t < len(self.tok.alphabet) else "?")
        return "".join(out)

    def to_dict(self) -> dict[str, Any]:
        return {"alphabet": self.alphabet, "prompt_len": self.prompt_len, "target_len": self.target_len,
                "blank": self.blank}

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=1))
        return path

    @classmethod
    def load(cls, path: str | Path) -> TaskCodec:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no task codec file at {path}")
        return cls.from_dict(json.loads(path.read_text()))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TaskCodec:
        return cls(d["alphabet"], d["prompt_len"], d["target_len"], d.get("blank"))
