"""The decoding family's interface: how tokens are chosen, what a decoder returns, vLLM's speculative split.

Every decoder returns ``Generation(tokens, stats)``. A speculative decoder is a *proposer* plugged into the
one shared loop (``loop.speculative_generate``), which runs vLLM's three steps each round:

    propose(seq)  -> Proposals     draft tokens as a tree: tokens[i], parents[i] (-1 = child of the root)
    score(...)    -> logits        one target forward over [root] + tree (tree mask, explicit positions)
    verify(...)   -> path, token   accepted node indices + the target's next token (bonus or residual sample)

The *root* of a round is the last emitted token: the target has not processed it yet, so its logits come out
of the same forward pass that checks the draft tokens. A chain (classic speculative decoding) is a tree of
width 1; a merged draft graph (GSD) is unrolled into a tree before it is scored.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from lmlab.core.config import param
from lmlab.core.sampling import check_sampling_args


@dataclass(kw_only=True)
class SamplingParams:
    """The sampling distribution: ``core.sampling.probs(logits, temperature, top_k, top_p)``."""

    temperature: float = param(1.0, "softmax temperature when sampling; must be > 0")
    top_k: int | None = param(None, "when sampling, keep only the k most likely tokens")
    top_p: float | None = param(None, "when sampling, keep the smallest set of tokens with mass >= top_p")

    def __post_init__(self) -> None:
        check_sampling_args(self.temperature, self.top_k, self.top_p)


@dataclass(kw_only=True)
class Sampling(SamplingParams):
    """How the target's next token is chosen; plain sampling and every lossless decoder share it."""

    sample: bool = param(False, "draw tokens at random (else greedy argmax, token-identical to plain greedy)")

    def __post_init__(self) -> None:
        if self.sample:
            super().__post_init__()


@dataclass
class Stats:
    """What one ``generate`` call cost. Counts include the prompt's prefill pass."""

    new_tokens: int = 0  # tokens emitted after the prompt (after cutting at max_new_tokens / eos)
    rounds: int = 0  # target decode steps: one per token for plain decoding, one per draft-verify round
    target_calls: int = 0  # target forward passes (prefill included)
    target_tokens: int = 0  # token positions the target evaluated (prompt + roots + every scored draft node)
    draft_calls: int = 0  # draft forward passes
    draft_tokens: int = 0  # token positions the draft evaluated ("draft token-evaluations")
    proposed: int = 0  # draft tokens the target scored (tree / unrolled graph nodes)
    accepted: int = 0  # draft tokens the target accepted
    seconds: float = 0.0  # wall-clock time of the whole call (prefill, drafting, verification)

    @property
    def tau(self) -> float:
        """Mean accepted length: tokens emitted per round, the bonus token included (plain decoding: 1)."""
        return self.new_tokens / self.rounds if self.rounds else 0.0

    @property
    def target_calls_per_token(self) -> float:
        return self.target_calls / self.new_tokens if self.new_tokens else 0.0

    @property
    def draft_tokens_per_token(self) -> float:
        """Draft token-evaluations per emitted token (the compute GSD's merging saves)."""
        return self.draft_tokens / self.new_tokens if self.new_tokens else 0.0

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.seconds if self.seconds else 0.0

    def summary(self) -> dict[str, float]:
        """The fields plus the derived ratios, as a flat dict (for logs and result files)."""
        derived = {k: getattr(self, k) for k in ("tau", "target_calls_per_token", "draft_tokens_per_token",
                                                  "tokens_per_second")}
        return {**self.__dict__, **derived}


@dataclass
class Generation:
    tokens: list[int] | torch.Tensor  # the new tokens (prompt not repeated); masked decoding: the (B, L) rows
    stats: Any = field(default_factory=Stats)  # a stats dataclass (Stats, GraphStats, MaskedStats)


@dataclass
class Proposals:
    """Draft tokens as a tree over the round's root; parents come before their children."""

    tokens: list[int]  # N draft tokens
    parents: list[int]  # N parent indices among the nodes, -1 = child of the root
    q: torch.Tensor | None = None  # (N, V) distributions the tokens were sampled from, or None

    def __len__(self) -> int:
        return len(self.tokens)


class Proposer(Protocol):
    """A drafting strategy; it owns the draft model's cache and keeps it in step with the committed tokens."""

    draft_calls: int
    draft_tokens: int

    def begin(self, prompt: list[int], total: int, max_len: int) -> None:
        """Start a sequence of at most ``total`` tokens; ``max_len`` bounds the cache entries."""

    def propose(self, seq: list[int], max_depth: int, generator: torch.Generator | None) -> Proposals:
        """Draft at most ``max_depth`` tokens deep after ``seq`` (its last token is the round's root)."""

    def accept(self, path: list[int]) -> None:
        """The target accepted nodes ``path`` of the last proposals: roll the draft cache back accordingly."""
