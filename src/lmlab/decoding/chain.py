"""Chain speculative decoding: a draft proposes one sequence of k tokens, the target checks them in one pass.

Papers: "Fast Inference from Transformers via Speculative Decoding" (Leviathan, Kalman, Matias; ICML 2023,
arXiv:2211.17192) and "Accelerating Large Language Model Decoding with Speculative Sampling" (Chen et al.,
arXiv:2302.01318). Idea: a cheap draft model guesses the next k tokens one at a time; the target scores all
k + 1 positions in one forward pass and keeps the longest prefix it agrees with, plus one token of its own.
Greedy: keep drafts equal to the target argmax. Sampling: drafts are drawn from the draft distribution q
(warped like the target), accepted with probability min(1, p/q), and a rejection is replaced by a sample of
norm(max(p - q, 0)); the output then follows the target's sampling distribution exactly.

Deviations: a fixed draft length k (no adaptive schedule such as HF's ``num_assistant_tokens`` heuristic);
batch size 1. Defaults are ours (no paper default applies to every draft/target pair).

    dec = ChainSpeculative(Config(depth=4), draft=small_model)
    gen = dec.generate(target, prompt_ids, max_new_tokens=64)      # gen.stats.tau, gen.stats.draft_tokens
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from lmlab.core.config import param
from lmlab.core.sampling import probs, sample

from .base import Generation, Proposals, Sampling
from .drafts import DraftRunner
from .loop import DraftDecoder, check_draft, check_positive, speculative_generate


@dataclass
class Config:
    depth: int = param(4, "draft tokens per round (k)")
    sampling: Sampling = param(Sampling(), "greedy (default) or sampling settings of the target")

    def __post_init__(self) -> None:
        check_positive("chain Config", depth=self.depth)


class ChainProposer:
    """Draft k tokens one at a time (argmax, or a sample of q when the target samples)."""

    def __init__(self, draft: Any, sampling: Sampling):
        self.runner, self.sampling = DraftRunner(draft), sampling
        self.slots: list[int] = []

    @property
    def draft_calls(self) -> int:
        return self.runner.calls

    @property
    def draft_tokens(self) -> int:
        return self.runner.tokens

    def begin(self, prompt: list[int], total: int, max_len: int) -> None:
        self.runner.begin(max_len, total)
        self.slots = []

    def _pick(self, logits: torch.Tensor, gen: torch.Generator | None) -> tuple[int, torch.Tensor | None]:
        s = self.sampling
        if not s.sample:
            return int(logits.argmax()), None
        q = probs(logits, s.temperature, s.top_k, s.top_p)  # (V,)
        return int(sample(q, gen)), q

    def propose(self, seq: list[int], max_depth: int, generator: torch.Generator | None) -> Proposals:
        self.slots = []
        if max_depth == 0:
            return Proposals([], [])
        logits = self.runner.feed_pending(seq)  # (V,) at the root
        tokens, qs = [], []
        for d in range(max_depth):
            x, q = self._pick(logits, generator)
            tokens.append(x)
            qs.append(q)
            if d + 1 < max_depth:  # the last draft token is never fed: the target scores it
                logits, slot = self.runner.feed_next(x)
                self.slots.append(slot)
        parents = list(range(-1, max_depth - 1))
        return Proposals(tokens, parents, torch.stack(qs) if self.sampling.sample else None)

    def accept(self, path: list[int]) -> None:
        self.runner.commit(self.slots[: len(path)])


class ChainSpeculative(DraftDecoder):
    """Speculative decoding with one draft chain per round."""

    config_class = Config

    def generate(self, model: Any, prompt: list[int] | torch.Tensor, max_new_tokens: int,
                 seed: int | None = None, eos_id: int | None = None) -> Generation:
        check_draft(model, self.draft)
        proposer = ChainProposer(self.draft, self.cfg.sampling)
        return speculative_generate(model, proposer, prompt, max_new_tokens, self.cfg.depth, self.cfg.depth,
                                    self.cfg.sampling, seed, eos_id)
