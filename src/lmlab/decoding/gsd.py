"""GSD: Graph-structured Speculative Decoding (Gong, Liu, Xu, Wang, Zhu, Zhou; Findings of ACL 2024,
arXiv:2407.16207; official code github.com/gzhch/gsd).

Idea: the hypotheses of a draft token tree often repeat the same token sequences ("of the", "the end").
GSD drafts a tree (top-k per node, sibling pruning, low-confidence leaves) but, before adding a candidate,
looks for a node already in the graph with the same token and the same m preceding tokens; if one exists
the candidate becomes a merge edge into it and that subtree is not drafted again. The graph (a DAG, or a
graph with cycles cut by the depth cap) saves draft computation; it is unrolled into a tree for the target,
which verifies it exactly like token-tree speculative decoding. Paper: 1.73x-1.96x over autoregressive
decoding on LLaMA-2-70B (arXiv v1; the ACL Anthology abstract says 1.70x-1.94x), beyond token-tree SD.

Our implementation (what differs from the official code):
- merge index: a hash map keyed by (token, last m tokens), O(1) per candidate instead of a scan;
- a list of merge edges per node (the official single ``pseudo_child`` slot overwrote earlier merges);
- cycles are allowed and cut by the depth cap when the graph is unrolled (the official code relied on its
  100-node BFS cap only);
- the node budget keeps the likeliest drafted nodes and unrolled copies (cumulative draft probability),
  not the first 100 in BFS order (``graph.py``);
- the draft cache is rolled back to the longest accepted prefix whose keys/values were computed under that
  very prefix; tokens reached through a merge edge are fed to the draft again next round;
- sampling is exact: deterministic-proposal verification with residual renormalisation
  (``verify.verify_point_proposals``). The official sampling mode is NOT distribution-preserving (warped
  samples against unwarped q, independent per-child acceptance with longest-path choice, no residual,
  fresh target samples emitted instead of the accepted tokens); it is not reproduced.
- batch size 1, like the official code; any device (no hard-coded CUDA).
Defaults: k=4, beta=0.2, gamma=0.4 (official code), m=1; m=0 merges on the token alone, m=-1 turns
merging off (then GSD is token-tree speculative decoding).

    dec = GraphSpeculative(Config(depth=6, budget=24, merge_context=1), draft=layer_skip(target, [1, 3]))
    gen = dec.generate(target, prompt_ids, max_new_tokens=64)     # gen.stats.tau, gen.stats.draft_tokens
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from lmlab.core.config import param

from .base import Generation
from .graph import DraftGraph, GraphProposer, graph_generate
from .loop import DraftDecoder, check_draft
from .tree import Config as TreeConfig


@dataclass
class Config(TreeConfig):
    """The token-tree shape (``tree.Config``) plus the merge rule."""

    budget: int = param(32, "maximum draft nodes per round: drafted, and scored by the target once unrolled",
                        source="official code max_token=100 on GPU; 16-32 suits a CPU")
    merge_context: int = param(1, "m: tokens before a candidate that must match for a merge (0 = token only, "
                               "-1 = no merging)", source="official code repeat_threshold")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.merge_context < -1:
            raise ValueError(f"gsd Config.merge_context must be >= -1 (-1 = off), got {self.merge_context}")


class ContextMergeIndex:
    """Nodes keyed by (token, the m tokens before it); the first node with a key is the merge target."""

    def __init__(self, m: int):
        self.m = m
        self.table: dict[tuple[int, tuple[int, ...]], int] = {}

    def key(self, graph: DraftGraph, parent: int, token: int) -> tuple[int, tuple[int, ...]]:
        return token, graph.context(parent, self.m)

    def lookup(self, key: tuple[int, tuple[int, ...]]) -> int | None:
        return self.table.get(key)

    def insert(self, key: tuple[int, tuple[int, ...]], node: int) -> None:
        self.table.setdefault(key, node)


class GraphSpeculative(DraftDecoder):
    """Graph-structured speculative decoding: a merged draft graph per round, verified as unrolled tree."""

    config_class = Config

    def generate(self, model: Any, prompt: list[int] | torch.Tensor, max_new_tokens: int,
                 seed: int | None = None, eos_id: int | None = None) -> Generation:
        check_draft(model, self.draft)
        c = self.cfg
        merge = (lambda: ContextMergeIndex(c.merge_context)) if c.merge_context >= 0 else None
        return graph_generate(model, GraphProposer(self.draft, c, merge), prompt, max_new_tokens, c, seed, eos_id)
