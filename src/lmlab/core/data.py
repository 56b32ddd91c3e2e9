"""Token streams, packing, batching and JSONL files.

The Trainer asks a data source for a batch by (step, micro-step, rank, world size). ``TokenWindows`` answers with
random windows of a packed token stream drawn from a generator seeded by exactly those numbers, so batches are a
pure function of the step: a resumed run sees the same batches as an uninterrupted one, and DDP ranks see
disjoint draws without any sampler state.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from .runtime import atomic_open


class BatchSource(Protocol):
    def get_batch(self, step: int, micro: int = 0, rank: int = 0, world: int = 1) -> dict[str, torch.Tensor]: ...


def pack(docs: Iterable[list[int]], eos_id: int | None = None) -> np.ndarray:
    """Concatenate token lists (with an optional separator after each) into one int32/int64 stream."""
    parts = []
    for d in docs:
        parts.append(np.asarray(d, dtype=np.int64))
        if eos_id is not None:
            parts.append(np.asarray([eos_id], dtype=np.int64))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


class TokenWindows:
    """Random (batch, seq_len + 1) windows of a token stream; ``ids`` = window[:, :-1], ``targets`` = window[:, 1:]."""

    def __init__(self, tokens: np.ndarray | torch.Tensor, batch_size: int, seq_len: int, seed: int = 0):
        tokens = torch.as_tensor(np.asarray(tokens), dtype=torch.long)
        if tokens.ndim != 1:
            raise ValueError(f"token stream must be 1-D, got shape {tuple(tokens.shape)}")
        if tokens.numel() < seq_len + 2:
            raise ValueError(f"token stream of {tokens.numel()} tokens is shorter than seq_len + 2 = {seq_len + 2}")
        if batch_size < 1 or seq_len < 1:
            raise ValueError(f"batch_size and seq_len must be >= 1, got {batch_size}, {seq_len}")
        self.tokens, self.batch_size, self.seq_len, self.seed = tokens, batch_size, seq_len, seed

    def get_batch(self, step: int, micro: int = 0, rank: int = 0, world: int = 1) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(hash((self.seed, step, micro, rank, world)) & 0x7FFFFFFF)
        starts = torch.randint(0, self.tokens.numel() - self.seq_len - 1, (self.batch_size,), generator=g)
        w = torch.stack([self.tokens[s:s + self.seq_len + 1] for s in starts.tolist()])  # (B, T+1)
        return {"ids": w[:, :-1], "targets": w[:, 1:]}

    def sequential(self, max_batches: int | None = None) -> Iterator[dict[str, torch.Tensor]]:
        """Non-overlapping windows in order (evaluation): every token is predicted once."""
        T, n = self.seq_len, (self.tokens.numel() - 1) // self.seq_len
        n = n if max_batches is None else min(n, max_batches * self.batch_size)
        for b in range(0, n, self.batch_size):
            idx = range(b, min(b + self.batch_size, n))
            w = torch.stack([self.tokens[i * T:i * T + T + 1] for i in idx])
            yield {"ids": w[:, :-1], "targets": w[:, 1:]}


class ExampleBatches:
    """Batches drawn from a fixed list of equal-length tensors (e.g. tokenized task examples), step-seeded."""

    def __init__(self, tensors: dict[str, torch.Tensor], batch_size: int, seed: int = 0):
        n = {v.shape[0] for v in tensors.values()}
        if len(n) != 1:
            raise ValueError(f"all tensors need the same first dimension, got {sorted(n)}")
        self.tensors, self.n, self.batch_size, self.seed = tensors, n.pop(), batch_size, seed

    def get_batch(self, step: int, micro: int = 0, rank: int = 0, world: int = 1) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(hash((self.seed, step, micro, rank, world)) & 0x7FFFFFFF)
        idx = torch.randint(0, self.n, (self.batch_size,), generator=g)
        return {k: v[idx] for k, v in self.tensors.items()}


class PackedDocs:
    """Whole samples packed into rows for block-causal training with per-sample loss equalisation (Yi-Lightning
    SFT packing, arXiv 2412.01253 §4).

    A document of at most ``seq_len`` tokens is one sample. A longer one is cut into pieces of ``seq_len`` tokens
    overlapping by one (piece k starts at k * (seq_len - 1)), so each of its next-token targets is predicted once;
    every piece is a sample of its own (positions restart, weights as below), so a document cut into k pieces
    counts k times. Samples fill rows greedily in order; a row's rest is padding (doc id -1, token 0, no target).
    Batch: ``ids``, ``targets`` (ignore_index at each sample's last token and at padding), ``doc_ids`` (sample
    index), ``positions`` (0 at each sample's start), all (B, T) long, and ``weights`` (B, T) float = 1 / the
    sample's target count on its targets (0 elsewhere): each sample's weights sum to 1, so ``weights.sum()`` is
    the number of samples in the batch. Rows are drawn by step like ``TokenWindows``.
    """

    def __init__(self, docs: Sequence[Sequence[int]], batch_size: int, seq_len: int, seed: int = 0,
                 ignore_index: int = -100):
        if batch_size < 1 or seq_len < 2:
            raise ValueError(f"PackedDocs needs batch_size >= 1 and seq_len >= 2 (a sample needs two tokens for one "
                             f"target), got batch_size={batch_size}, seq_len={seq_len}")
        short = [i for i, d in enumerate(docs) if len(d) < 2]
        if not len(docs) or short:
            raise ValueError(f"PackedDocs needs documents of >= 2 tokens, got {len(docs)} documents"
                             + (f"; document {short[0]} has {len(docs[short[0]])} tokens" if short else ""))
        pieces = [list(d[a:a + seq_len]) for d in docs for a in range(0, len(d) - 1, seq_len - 1)]
        rows: list[list[int]] = []  # sample indices per row, greedy in order
        used = seq_len
        for s, p in enumerate(pieces):
            if used + len(p) > seq_len:
                rows.append([])
                used = 0
            rows[-1].append(s)
            used += len(p)
        self.ids = torch.zeros(len(rows), seq_len, dtype=torch.long)  # (R, T)
        self.doc_ids = torch.full((len(rows), seq_len), -1, dtype=torch.long)  # (R, T)
        for r, samples in enumerate(rows):
            row = [t for s in samples for t in pieces[s]]
            self.ids[r, :len(row)] = torch.tensor(row)
            self.doc_ids[r, :len(row)] = torch.tensor([s for s in samples for _ in pieces[s]])
        self.batch_size, self.seq_len, self.seed, self.ignore_index = batch_size, seq_len, seed, ignore_index

    def rows(self, idx: torch.Tensor, weights: bool = True) -> dict[str, torch.Tensor]:
        """The batch made of rows ``idx`` (B,)."""
        ids, doc = self.ids[idx], self.doc_ids[idx]  # (B, T)
        same = (doc[:, 1:] == doc[:, :-1]) & (doc[:, 1:] >= 0)  # (B, T-1): token t+1 continues t's sample
        targets = torch.full_like(ids, self.ignore_index)
        targets[:, :-1] = torch.where(same, ids[:, 1:], self.ignore_index)
        pos = torch.arange(self.seq_len).expand_as(ids)  # (B, T)
        new = torch.cat([torch.ones_like(same[:, :1]), doc[:, 1:] != doc[:, :-1]], dim=1)  # (B, T) sample starts
        start = torch.where(new, pos, 0).cummax(dim=1).values  # (B, T) index of each token's sample start
        out = {"ids": ids, "targets": targets, "doc_ids": doc, "positions": pos - start}
        if weights:
            has = (targets != self.ignore_index).float()  # (B, T)
            count = torch.zeros_like(has).scatter_add_(1, start, has).gather(1, start)  # targets of the sample
            out["weights"] = has / count.clamp(min=1)
        return out

    def get_batch(self, step: int, micro: int = 0, rank: int = 0, world: int = 1) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(hash((self.seed, step, micro, rank, world)) & 0x7FFFFFFF)
        return self.rows(torch.randint(0, self.ids.shape[0], (self.batch_size,), generator=g))

    def sequential(self, max_batches: int | None = None, weights: bool = False) -> Iterator[dict[str, torch.Tensor]]:
        """All rows in order (evaluation). Without ``weights`` the loss is per predicted token (bits per byte)."""
        n = self.ids.shape[0] if max_batches is None else min(self.ids.shape[0], max_batches * self.batch_size)
        for b in range(0, n, self.batch_size):
            yield self.rows(torch.arange(b, min(b + self.batch_size, n)), weights)


def read_jsonl(path: str | Path) -> Iterator[dict[str, Any]]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"JSONL file not found: {path}")
    with path.open() as f:
        for i, line in enumerate(f, 1):
            if line.strip():
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{i}: not valid JSON ({e.msg})") from None


def write_jsonl(path: str | Path, records: Iterable[dict[str, Any]]) -> Path:
    """Atomic JSONL write, one record a line, streamed (``runtime.atomic_open``): a failing record leaves ``path``
    as it was."""
    with atomic_open(path) as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    return Path(path)
