"""Draft trees and draft graphs: growing them with a draft model and flattening them for verification.

Shared by token-tree speculative decoding (``tree.py``) and GSD (``gsd.py``); GSD passes a merge index, the
tree decoder passes none. Growth follows the official GSD code (gzhch/gsd, ``graph_speculative_generation``):

1. The root is the last emitted token. Each draft step feeds the whole frontier to the draft in ONE forward
   pass; a tree mask lets a node see the committed prefix, its ancestors and itself; position = root + depth.
2. Each frontier node proposes its draft top-k tokens; sibling pruning keeps candidate j only if
   q_j >= beta * q_max.
3. Merge test (GSD only): if some node already in the graph has the candidate's key (token + the m tokens
   before it), the candidate is not added; the parent gets a merge edge to that node instead, and the node is
   not drafted again. A parent may hold several merge edges (a list, unlike the official single slot).
4. Otherwise the node is added (at most ``budget`` nodes per graph); it is a *leaf* if its parent is a leaf or
   q_j < gamma. Leaves are still expanded; drafting stops when a step adds no non-leaf node, or at max depth.

Candidates of one step are processed best-first by cumulative draft probability, so the node cap keeps the
likeliest ones; ``width`` > 0 keeps only the ``width`` likeliest candidates of each step (merged ones count),
an EAGLE-2-style beam (arXiv:2406.16858) that reaches the depth cap within a small budget (the official code
expands every candidate, width 0).

``flatten`` unrolls the graph into a tree (a node reached through a merge edge is copied with its subtree;
cycles are allowed and cut by the depth cap), keeping the ``budget`` copies with the highest
cumulative draft probability (EAGLE-2-style re-ranking; the official code takes the first 100 in BFS order).
Parents always precede children because a child's cumulative probability never exceeds its parent's.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from .base import Generation, Proposals, Stats
from .drafts import DraftRunner
from .loop import speculative_generate


@dataclass
class Node:
    token: int
    parent: int  # graph id of the parent through a real edge; -1 for the root
    depth: int  # root = 0
    cum: float  # product of the draft probabilities along the real path
    leaf: bool  # low-confidence path (official ``is_leaf``): expanded, but does not keep drafting alive
    edges: list[tuple[int, float]] = field(default_factory=list)  # (child id, draft prob), candidate order
    slot: int = -1  # draft-cache slot once the node has been fed to the draft


class MergeIndex(Protocol):
    """GSD's merge test: a key per candidate, an O(1) lookup of an existing node with the same key."""

    def key(self, graph: DraftGraph, parent: int, token: int) -> Any: ...

    def lookup(self, key: Any) -> int | None: ...

    def insert(self, key: Any, node: int) -> None: ...


class DraftGraph:
    """Nodes of one round's draft; node 0 is the root (the last committed token)."""

    def __init__(self, seq: list[int]):
        self.seq = seq  # committed tokens, seq[-1] is the root
        self.nodes = [Node(seq[-1], -1, 0, 1.0, False)]

    def __len__(self) -> int:
        return len(self.nodes)

    def add(self, parent: int, token: int, q: float, leaf: bool) -> int:
        p = self.nodes[parent]
        self.nodes.append(Node(token, parent, p.depth + 1, p.cum * q, leaf))
        p.edges.append((len(self.nodes) - 1, q))
        return len(self.nodes) - 1

    def context(self, v: int, m: int) -> tuple[int, ...]:
        """The m tokens ending at node v (its real path, then the committed tokens before the root)."""
        out: list[int] = []
        while v >= 0 and len(out) < m:
            out.append(self.nodes[v].token)
            v = self.nodes[v].parent
        i = len(self.seq) - 2
        while len(out) < m and i >= 0:
            out.append(self.seq[i])
            i -= 1
        return tuple(reversed(out))

    def ancestor_slots(self, v: int) -> list[int]:
        """Draft-cache slots of v's real ancestors below the root (the root is in the committed prefix)."""
        out = []
        v = self.nodes[v].parent
        while v > 0:
            out.append(self.nodes[v].slot)
            v = self.nodes[v].parent
        return out[::-1]


def grow(runner: DraftRunner, seq: list[int], max_depth: int, shape: Any,
         merge: MergeIndex | None = None) -> DraftGraph:
    """Draft a graph below seq[-1], at most ``max_depth`` deep (module doc).

    ``shape`` holds ``top_k``, ``sibling_threshold`` (beta), ``leaf_threshold`` (gamma), ``budget`` and
    ``width``: the fields of ``tree.Config`` and ``gsd.Config``.
    """
    k, beta, gamma, budget = shape.top_k, shape.sibling_threshold, shape.leaf_threshold, shape.budget
    g = DraftGraph(seq)
    if max_depth == 0:
        return g
    if merge is not None:
        merge.insert(merge.key(g, g.nodes[0].parent, g.nodes[0].token), 0)
    logits = runner.feed_pending(seq)[None]  # (1, V) draft logits at the root
    frontier = [0]
    for step in range(max_depth):
        q = torch.softmax(logits.float(), dim=-1)  # (F, V)
        top_q, top_i = (t.tolist() for t in q.topk(min(k, q.shape[-1]), dim=-1))  # (F, k) each
        cands = []
        for f, v in enumerate(frontier):
            for qj, tok in zip(top_q[f], top_i[f]):
                if qj < beta * top_q[f][0]:
                    break
                cands.append((g.nodes[v].cum * qj, v, tok, qj))
        cands.sort(key=lambda c: -c[0])  # best-first; sort is stable, so ties keep proposal order
        if shape.width:
            cands = cands[: shape.width]
        new = []
        for _, v, tok, qj in cands:
            key = merge.key(g, v, tok) if merge is not None else None
            u = merge.lookup(key) if merge is not None else None
            if u is not None:
                g.nodes[v].edges.append((u, qj))  # merge edge into an existing node
                continue
            if len(g) - 1 >= budget:
                continue
            w = g.add(v, tok, qj, leaf=g.nodes[v].leaf or qj < gamma)
            new.append(w)
            if merge is not None:
                merge.insert(key, w)
        if step + 1 == max_depth or all(g.nodes[w].leaf for w in new):  # also stops when nothing was added
            return g
        tokens = [g.nodes[w].token for w in new]
        ancestors = [g.ancestor_slots(w) for w in new]
        depths = [g.nodes[w].depth for w in new]
        logits, slots = runner.feed_tree(tokens, ancestors, depths)  # (F, V)
        for w, s in zip(new, slots):
            g.nodes[w].slot = s
        frontier = new
    return g


def flatten(g: DraftGraph, budget: int, max_depth: int) -> tuple[Proposals, list[int], list[bool]]:
    """Unroll the graph into at most ``budget`` tree nodes.

    Also returns, per tree node, its valid draft-cache slot (-1: not fed, or a copy) and whether it is a copy
    reached through a merge edge.
    """
    tokens: list[int] = []
    parents: list[int] = []
    slots: list[int] = []
    copies: list[bool] = []
    heap: list[tuple[float, int, int, int, int, bool]] = []  # (-cum, order, node, flat parent, depth, real)
    order = 0
    for w, q in g.nodes[0].edges:
        heap.append((-q, order, w, -1, 1, g.nodes[w].parent == 0))
        order += 1
    heapq.heapify(heap)
    while heap and len(tokens) < budget:
        neg_cum, _, w, fp, d, real = heapq.heappop(heap)
        node = g.nodes[w]
        idx = len(tokens)
        tokens.append(node.token)
        parents.append(fp)
        slots.append(node.slot if real else -1)  # a copy's cached keys belong to another prefix
        copies.append(not real)
        if d < max_depth:
            for x, q in node.edges:
                heapq.heappush(heap, (neg_cum * q, order, x, idx, d + 1, real and g.nodes[x].parent == w))
                order += 1
    return Proposals(tokens, parents), slots, copies


@dataclass
class GraphStats(Stats):
    """``Stats`` plus what a draft graph did over one sequence (tree and GSD decoders)."""

    graph_nodes: int = 0  # draft nodes grown, summed over rounds
    merge_edges: int = 0  # edges into an existing node (GSD merges), summed over rounds
    merged_accepts: int = 0  # rounds whose accepted path went through a merge edge (official "graph_success")


def graph_generate(target: Any, proposer: GraphProposer, prompt: Any, max_new_tokens: int, shape: Any,
                   seed: int | None, eos_id: int | None) -> Generation:
    """``speculative_generate`` with a graph proposer; the stats gain the graph counts (``GraphStats``)."""
    gen = speculative_generate(target, proposer, prompt, max_new_tokens, shape.depth, shape.budget, shape.sampling,
                               seed, eos_id)
    gen.stats = GraphStats(**vars(gen.stats), graph_nodes=proposer.graph_nodes, merge_edges=proposer.merge_edges,
                           merged_accepts=proposer.merged_accepts)
    return gen


class GraphProposer:
    """Proposer for the shared loop: grow a draft graph, flatten it, roll the draft cache back on accept."""

    def __init__(self, draft: Any, shape: Any, merge_factory: Any = None):
        self.runner = DraftRunner(draft)
        self.shape = shape  # tree.Config or gsd.Config
        self.merge_factory = merge_factory  # () -> MergeIndex, a fresh index per round; None = plain tree
        self.slots: list[int] = []
        self.copies: list[bool] = []
        # totals over one sequence, for reports: drafted nodes, merge edges, rounds whose accepted path went
        # through a merge edge (the official code's "graph_success")
        self.graph_nodes = self.merge_edges = self.merged_accepts = 0

    @property
    def draft_calls(self) -> int:
        return self.runner.calls

    @property
    def draft_tokens(self) -> int:
        return self.runner.tokens

    def begin(self, prompt: list[int], total: int, max_len: int) -> None:
        self.runner.begin(max_len, total)
        self.slots, self.copies = [], []
        self.graph_nodes = self.merge_edges = self.merged_accepts = 0

    def propose(self, seq: list[int], max_depth: int, generator: torch.Generator | None) -> Proposals:
        merge = self.merge_factory() if self.merge_factory is not None else None
        g = grow(self.runner, seq, max_depth, self.shape, merge)
        self.graph_nodes += len(g) - 1
        self.merge_edges += sum(1 for v, node in enumerate(g.nodes) for w, _ in node.edges
                                if g.nodes[w].parent != v)
        props, self.slots, self.copies = flatten(g, self.shape.budget, max_depth)
        return props

    def accept(self, path: list[int]) -> None:
        self.merged_accepts += any(self.copies[i] for i in path)
        keep = []
        for i in path:  # the accepted prefix whose draft keys/values are valid
            if self.slots[i] < 0:
                break
            keep.append(self.slots[i])
        self.runner.commit(keep)
