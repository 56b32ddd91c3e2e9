"""Response log-probs: batched, padded and prompt-masked == one forward per token over the exact prefix."""

import pytest
import torch

from lmlab.core.transformer import Transformer
from lmlab.objectives.preference import naive_sequence_logprob, sequence_logprobs, token_logprobs


def batch(rows: list[tuple[list[int], list[int]]], pad: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    T = max(len(p) + len(r) for p, r in rows)
    ids = torch.full((len(rows), T), pad)
    mask = torch.zeros(len(rows), T, dtype=torch.bool)
    for i, (p, r) in enumerate(rows):
        ids[i, : len(p) + len(r)] = torch.tensor(p + r)
        mask[i, len(p): len(p) + len(r)] = True
    return ids, mask


def test_sequence_logprobs_equal_the_naive_per_token_reference(tiny_cfg):
    torch.manual_seed(0)
    model = Transformer(tiny_cfg).double().eval()
    rows = [([1, 2, 3], [4, 5]), ([7], [8, 9, 10, 11]), ([5, 5, 5, 5], [6])]
    ids, mask = batch(rows)
    with torch.no_grad():
        got = sequence_logprobs(model, ids, mask)
        want = torch.tensor([naive_sequence_logprob(model, p, r) for p, r in rows], dtype=got.dtype)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    per_token = token_logprobs(model, ids, mask)
    assert per_token.shape == (3, ids.shape[1] - 1) and (per_token[~mask[:, 1:]] == 0).all()


def test_bad_masks_are_named(tiny_cfg):
    model = Transformer(tiny_cfg)
    ids, mask = batch([([1, 2], [3]), ([4], [5, 6])])
    mask[1] = False
    with pytest.raises(ValueError, match=r"rows \[1\] have an empty response"):
        token_logprobs(model, ids, mask)
    mask[1, 0] = True
    with pytest.raises(ValueError, match="position 0"):
        token_logprobs(model, ids, mask)
