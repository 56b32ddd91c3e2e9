"""Token-tree speculative decoding: the draft proposes a tree of continuations, checked in one target pass.

Papers: "SpecInfer: Accelerating Large Language Model Serving with Tree-based Speculative Inference and
Verification" (Miao et al., ASPLOS 2024, arXiv:2305.09781); the tree shape follows the token-tree baseline of
GSD (Gong et al., arXiv:2407.16207; official code gzhch/gsd with merging off, ``repeat_threshold = -1``).
Idea: instead of one guess per position, each draft node proposes its top-k tokens (pruned by sibling ratio
beta, marked low-confidence below gamma); the whole tree is scored by one target forward pass with a tree
attention mask and position ids root + depth; the longest path the target agrees with is kept, plus one
token of the target's own. Sampling uses the deterministic-proposal rule with residual renormalisation
(``verify.verify_point_proposals``), which preserves the target's sampling distribution exactly.

Deviations: SpecInfer merges trees from several draft models and verifies with multi-step speculative
sampling; here one draft grows the tree and verification uses point proposals (so no draft probabilities
are needed). The node cap keeps the likeliest nodes (cumulative draft probability), not the first in BFS.
Defaults: k, beta, gamma from the official GSD code; the verify budget is sized for a CPU, where scoring
cost grows with the node count (the official code uses 100 nodes on GPU).

    dec = TreeSpeculative(Config(depth=6, budget=24), draft=small_model)
    gen = dec.generate(target, prompt_ids, max_new_tokens=64)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from lmlab.core.config import param

from .base import Generation, Sampling
from .graph import GraphProposer, graph_generate
from .loop import DraftDecoder, check_draft, check_positive


@dataclass
class Config:
    depth: int = param(8, "maximum draft depth (draft steps per round)", source=None)
    budget: int = param(32, "maximum draft nodes scored by the target per round (verify budget)",
                        source="official code max_token=100 on GPU; 16-32 suits a CPU")
    top_k: int = param(4, "candidate tokens per draft node", source="official code tree_decoding=4")
    sibling_threshold: float = param(0.2, "keep a candidate only if q >= beta * q_max among its siblings",
                                     source="official code sibling_threshold (swept 0.1-0.4)")
    leaf_threshold: float = param(0.4, "a candidate with q < gamma starts a low-confidence (leaf) path",
                                  source="official code prob_threshold 0.3/0.4")
    width: int = param(0, "keep only the most probable candidates of each draft step (0 = all)",
                       source="official code: all")
    sampling: Sampling = param(Sampling(), "greedy (default) or sampling settings of the target")

    def __post_init__(self) -> None:
        who = f"{type(self).__module__.rsplit('.', 1)[-1]} Config"  # "tree Config" / "gsd Config"
        check_positive(who, depth=self.depth, budget=self.budget, top_k=self.top_k)
        if self.width < 0:
            raise ValueError(f"{who}.width must be >= 0 (0 = no limit), got {self.width}")
        for name in ("sibling_threshold", "leaf_threshold"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{who}.{name} must be in [0, 1], got {getattr(self, name)}")


class TreeSpeculative(DraftDecoder):
    """Speculative decoding with a draft token tree per round."""

    config_class = Config

    def generate(self, model: Any, prompt: list[int] | torch.Tensor, max_new_tokens: int,
                 seed: int | None = None, eos_id: int | None = None) -> Generation:
        check_draft(model, self.draft)
        return graph_generate(model, GraphProposer(self.draft, self.cfg), prompt, max_new_tokens, self.cfg, seed,
                              eos_id)
