"""Tiny models for the speculative-decoding tests (float64, so tree attention never flips a greedy argmax)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lmlab.core.kv_cache import KVCache
from lmlab.core.transformer import Transformer, TransformerConfig


def tiny(vocab: int = 48, dim: int = 32, layers: int = 3, seed: int = 0, head_std: float = 0.5):
    """A random float64 model whose greedy continuations vary (untied, larger output head)."""
    torch.manual_seed(seed)
    m = Transformer(TransformerConfig(vocab_size=vocab, dim=dim, n_layers=layers, n_heads=4, n_kv_heads=2,
                                      max_seq_len=160, tie_embeddings=False))
    with torch.no_grad():
        m.lm_head.weight.normal_(0.0, head_std)
        m.tok_emb.weight.normal_(0.0, 1.0)
    return m.double().eval()


def noisy_copy(model: Transformer, scale: float, seed: int = 1) -> Transformer:
    """A separate draft: the target's weights plus noise (agrees often, not always)."""
    torch.manual_seed(seed)
    draft = Transformer(model.cfg).double().eval()
    with torch.no_grad():
        for p, q in zip(draft.parameters(), model.parameters()):
            p.copy_(q + scale * torch.randn_like(q) * q.std().clamp(min=1e-3))
    return draft


class Bigram(nn.Module):
    """A draft whose next-token logits depend on the current token only (so GSD merging loses nothing)."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.table = nn.Parameter(table, requires_grad=False)  # (V, V) logits
        self.vocab_size, self.max_seq_len, self.n_layers = table.shape[0], 512, 1  # the core.lm.LM surface

    @property
    def device(self) -> torch.device:
        return self.table.device

    def new_cache(self, batch: int = 1, max_len: int | None = None) -> KVCache:
        return KVCache(1, batch, 1, 1, max_len or 512, dtype=self.table.dtype)

    def forward(self, ids, *, cache=None, positions=None, mask=None):
        if cache is not None:
            cache.advance(ids.shape[1])
        return self.table[ids]  # (B, T, V)


@pytest.fixture
def target() -> Transformer:
    return tiny()


@pytest.fixture
def prompts() -> list[list[int]]:
    g = torch.Generator().manual_seed(123)
    lengths = torch.randint(1, 9, (8,), generator=g).tolist()
    return [torch.randint(0, 48, (n,), generator=g).tolist() for n in lengths]
