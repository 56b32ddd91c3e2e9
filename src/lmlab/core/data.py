"""Token streams, packing, batching and JSONL files.

The Trainer asks a data source for a batch by (step, micro-step, rank, world size). ``TokenWindows`` answers with
random windows of a packed token stream drawn from a generator seeded by exactly those numbers, so batches are a
pure function of the step: a resumed run sees the same batches as an uninterrupted one, and DDP ranks see
disjoint draws without any sampler state.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
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
