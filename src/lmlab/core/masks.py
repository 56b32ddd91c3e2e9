"""Attention masks as pure functions returning boolean tensors where True means "may attend".

Shapes: a mask for T queries over S keys is (T, S); batched masks are (B, 1, T, S) as SDPA expects.
Queries are the last T positions of the S keys when a cache holds S - T earlier entries (``offset = S - T``).
"""

from __future__ import annotations

import torch


def causal(T: int, S: int | None = None, device: torch.device | str | None = None) -> torch.Tensor:
    """(T, S) lower-triangular mask; query i (absolute position S-T+i) sees keys 0..S-T+i."""
    S = T if S is None else S
    if S < T:
        raise ValueError(f"causal mask needs S >= T, got T={T}, S={S}")
    q = torch.arange(S - T, S, device=device)[:, None]
    k = torch.arange(S, device=device)[None, :]
    return k <= q


def bidirectional(T: int, S: int | None = None, device: torch.device | str | None = None) -> torch.Tensor:
    """(T, S) all-True mask."""
    return torch.ones(T, T if S is None else S, dtype=torch.bool, device=device)


def sliding_window(T: int, window: int, S: int | None = None, device: torch.device | str | None = None) -> torch.Tensor:
    """(T, S) causal mask restricted to the last ``window`` keys (the query itself included)."""
    if window < 1:
        raise ValueError(f"sliding window must be >= 1, got {window}")
    S = T if S is None else S
    q = torch.arange(S - T, S, device=device)[:, None]
    k = torch.arange(S, device=device)[None, :]
    return (k <= q) & (k > q - window)


def block_causal(T: int, block: int, device: torch.device | str | None = None) -> torch.Tensor:
    """(T, T) mask: token i sees token j iff block(j) <= block(i) (full attention inside a block)."""
    if block < 1 or T % block:
        raise ValueError(f"block size {block} must be >= 1 and divide the sequence length {T}")
    b = torch.arange(T, device=device) // block
    return b[None, :] <= b[:, None]


def skip_causal(n_blocks: int, block: int, device: torch.device | str | None = None) -> torch.Tensor:
    """ACDiT's Skip-Causal Attention Mask over ``[clean blocks ; noised blocks]`` (2*N*B tokens).

    Clean block i sees clean blocks <= i (block-causal). Noised block i sees clean blocks < i and itself.
    """
    if n_blocks < 1 or block < 1:
        raise ValueError(f"skip_causal needs n_blocks >= 1 and block >= 1, got {n_blocks}, {block}")
    L = n_blocks * block
    b = torch.arange(L, device=device) // block
    clean_clean = b[None, :] <= b[:, None]  # (L, L)
    noisy_clean = b[None, :] < b[:, None]
    noisy_noisy = b[None, :] == b[:, None]
    top = torch.cat([clean_clean, torch.zeros(L, L, dtype=torch.bool, device=device)], dim=1)
    bottom = torch.cat([noisy_clean, noisy_noisy], dim=1)
    return torch.cat([top, bottom], dim=0)


def tree(parents: list[int], prefix_len: int = 0, device: torch.device | str | None = None) -> torch.Tensor:
    """(N, prefix_len + N) mask for N tree nodes: each node sees the prefix, its ancestors and itself.

    ``parents[i]`` is the index of node i's parent among the nodes, or -1 for a child of the prefix.
    Parents must come before their children.
    """
    N = len(parents)
    m = torch.zeros(N, prefix_len + N, dtype=torch.bool, device=device)
    m[:, :prefix_len] = True
    for i, p in enumerate(parents):
        if p >= i:
            raise ValueError(f"tree node {i} has parent {p}; parents must precede children")
        m[i, prefix_len + i] = True
        if p >= 0:
            m[i, prefix_len:] |= m[p, prefix_len:]
    return m


def padding(lengths: torch.Tensor, S: int) -> torch.Tensor:
    """(B, S) key mask: True for the first ``lengths[b]`` keys of row b."""
    return torch.arange(S, device=lengths.device)[None, :] < lengths[:, None]


def document(doc_ids: torch.Tensor) -> torch.Tensor:
    """(B, 1, T, T) block-causal mask of packed rows: token i sees token j iff j <= i and both share a document id.

    ``doc_ids`` (B, T) labels each token with its document; equal ids must be contiguous within a row.
    """
    if doc_ids.ndim != 2:
        raise ValueError(f"document mask needs doc_ids of shape (B, T), got shape {tuple(doc_ids.shape)}")
    same = doc_ids[:, :, None] == doc_ids[:, None, :]  # (B, T, T)
    return (same & causal(doc_ids.shape[1], device=doc_ids.device))[:, None]
