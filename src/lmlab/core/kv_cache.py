"""Preallocated key/value cache with append, truncate (speculative rollback) and gather (tree compaction).

Layout per slot (one slot per layer, or fewer with cross-layer KV sharing, see ``blocks.kv_layout``): keys and
values of shape (B, H_kv, capacity, D). ``length`` is the number of positions seen, shared by all slots. A forward
pass over T new tokens writes positions [length, length + T) in every slot (``write``), and the model calls
``advance(T)`` once at the end.

A sliding-window slot of window W keeps only ``W + rollback`` positions, as a ring (position p at index
p % capacity; ``start[s]`` is the oldest position it still holds); ``write`` then returns the W - 1 previous keys
plus the new ones. ``truncate`` and ``gather`` need the W - 1 positions before the new length to be still held
(``rollback`` sizes that margin; speculative decoders pass their round size).
``kv_bytes(cfg, seq_len, batch)`` is what ``Transformer.new_cache`` allocates, computed without allocating.
"""

from __future__ import annotations

from typing import Any

import torch

from .blocks import kv_layout


class KVCache:
    def __init__(self, n_layers: int, batch: int, n_kv_heads: int, head_dim: int, max_len: int,
                 dtype: torch.dtype = torch.float32, device: torch.device | str | None = None,
                 windows: list[int | None] | None = None, rollback: int = 0):
        if max_len < 1:
            raise ValueError(f"KV cache max_len must be >= 1, got {max_len}")
        if rollback < 0:
            raise ValueError(f"KV cache rollback must be >= 0 positions, got {rollback}")
        self.windows = list(windows) if windows is not None else [None] * n_layers
        if len(self.windows) != n_layers or any(w is not None and w < 1 for w in self.windows):
            raise ValueError(f"KV cache windows must be {n_layers} entries of None or >= 1, got {windows}")
        self.caps = [max_len if w is None else min(max_len, w + rollback) for w in self.windows]
        shapes = [(batch, n_kv_heads, cap, head_dim) for cap in self.caps]
        self.k = [torch.zeros(s, dtype=dtype, device=device) for s in shapes]
        self.v = [torch.zeros(s, dtype=dtype, device=device) for s in shapes]
        self.start = [0] * n_layers  # per slot: the oldest position still held (rings drop older ones)
        self.max_len = max_len
        self.length = 0

    @property
    def batch(self) -> int:
        return self.k[0].shape[0]

    @property
    def nbytes(self) -> int:
        """Bytes the cache's key and value tensors hold (what ``kv_bytes`` predicts)."""
        return sum(t.numel() * t.element_size() for t in self.k + self.v)

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v (B, H_kv, T, D) at [length, length+T) and return the keys/values to attend over:
        all positions (B, H_kv, length+T, D), or for a wrapped window slot the last W-1 cached ones plus the T new."""
        T = k.shape[2]
        end = self.length + T
        if end > self.max_len:
            raise ValueError(f"KV cache overflow: {self.length} cached + {T} new > max_len {self.max_len}")
        cap, K, V = self.caps[layer], self.k[layer], self.v[layer]
        if end <= cap and not self.start[layer]:  # never wrapped: index = position
            K[:, :, self.length:end] = k
            V[:, :, self.length:end] = v
            return K[:, :, :end], V[:, :, :end]
        self.start[layer] = max(self.start[layer], end - cap)
        n = min(self.length, self.windows[layer] - 1)
        old = torch.arange(self.length - n, self.length, device=K.device) % cap  # (n,) oldest first
        k_all, v_all = torch.cat([K.index_select(2, old), k], 2), torch.cat([V.index_select(2, old), v], 2)
        keep = min(T, cap)
        at = torch.arange(end - keep, end, device=K.device) % cap
        K.index_copy_(2, at, k[:, :, T - keep:])
        V.index_copy_(2, at, v[:, :, T - keep:])
        return k_all, v_all

    def advance(self, T: int) -> None:
        self.length += T

    def append(self, layer_ks: list[torch.Tensor], layer_vs: list[torch.Tensor]) -> None:
        """Append T positions to every layer at once (for callers that computed K/V themselves)."""
        for i, (k, v) in enumerate(zip(layer_ks, layer_vs)):
            self.write(i, k, v)
        self.advance(layer_ks[0].shape[2])

    def _check_kept(self, n: int, what: str, index: torch.Tensor | None = None) -> None:
        """Going back to length n needs, in every window slot, the positions [n - W + 1, n) (after a gather: the
        positions ``index`` maps there) to be still held."""
        for s, w in enumerate(self.windows):
            lo = n if w is None else max(0, n - w + 1)  # the oldest new position a window slot must still hold
            if lo < n and (int(index[lo]) if index is not None else lo) < self.start[s]:  # index increases
                raise ValueError(f"cannot {what} to length {n}: sliding-window slot {s} (window {w}) holds only "
                                 f"positions >= {self.start[s]}; make the cache with a larger rollback (it keeps "
                                 f"{self.caps[s] - w} positions beyond the window)")

    def truncate(self, n: int) -> None:
        """Keep the first n positions (rollback after rejected speculative tokens)."""
        if not 0 <= n <= self.length:
            raise ValueError(f"cannot truncate a cache of length {self.length} to {n}")
        self._check_kept(n, "truncate")
        self.length = n

    def gather(self, index: torch.Tensor) -> None:
        """Keep positions ``index`` (1-D, increasing, < length) in that order, compacted to the front.

        Used after tree verification: the prefix plus the accepted path's nodes become contiguous. A window slot
        moves only the positions it can hold (the last ``capacity``), each from where its source sits in the ring.
        """
        index = index.to(self.k[0].device, torch.long)
        if index.ndim != 1 or (index.numel() and int(index.max()) >= self.length):
            raise ValueError(f"gather index must be 1-D with values < cache length {self.length}")
        n = index.numel()
        self._check_kept(n, "gather", index)
        for s in range(len(self.k)):
            if self.windows[s] is None:  # a full slot: index = position
                self.k[s][:, :, :n] = self.k[s].index_select(2, index)
                self.v[s][:, :, :n] = self.v[s].index_select(2, index)
                continue
            cap, lo = self.caps[s], max(0, n - self.caps[s])
            valid = (index[lo:] >= self.start[s]).nonzero()  # sources still held (index increases)
            lo = lo + (int(valid[0]) if valid.numel() else n - lo)
            src, dst = index[lo:] % cap, torch.arange(lo, n, device=index.device) % cap  # (n - lo,)
            self.k[s].index_copy_(2, dst, self.k[s].index_select(2, src))
            self.v[s].index_copy_(2, dst, self.v[s].index_select(2, src))
            self.start[s] = lo
        self.length = n

    def select_batch(self, rows: torch.Tensor) -> None:
        """Keep batch rows ``rows`` (e.g. beams), in that order."""
        rows = rows.to(self.k[0].device, torch.long)
        self.k = [k.index_select(0, rows) for k in self.k]
        self.v = [v.index_select(0, rows) for v in self.v]


def kv_bytes(cfg: Any, seq_len: int, batch: int = 1, dtype: torch.dtype = torch.float32, rollback: int = 0) -> int:
    """Bytes of the KV cache a ``Transformer(cfg)`` allocates for ``seq_len`` positions (``new_cache``), from the
    config alone: 2 (K and V) x batch x kv heads x head dim x element size x positions, summed over cache slots,
    where a window slot holds min(seq_len, W + rollback) positions and a full slot seq_len."""
    if seq_len < 1 or batch < 1:
        raise ValueError(f"kv_bytes needs seq_len >= 1 and batch >= 1, got {seq_len}, {batch}")
    per_position = 2 * batch * cfg.n_kv_heads * cfg.head_dim * torch.empty(0, dtype=dtype).element_size()
    return sum(per_position * (seq_len if w is None else min(seq_len, w + rollback))
               for w in kv_layout(cfg).windows)
