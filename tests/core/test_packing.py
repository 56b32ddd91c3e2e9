"""Document packing: block-causal mask, restarting positions, per-sample loss equalisation (Yi-Lightning §4).

The promise: a packed batch gives the loss and gradients of its samples run one by one, each alone.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lmlab.core import masks
from lmlab.core.data import PackedDocs
from lmlab.core.transformer import Transformer, TransformerConfig
from lmlab.objectives.causal_lm import CausalLM, Config

LENGTHS = (5, 11, 3, 7, 20, 9)  # two rows of 32: 5+11+3+7 = 26, then 20+9 = 29


def docs_of(lengths, vocab: int = 50, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (n,), generator=g).tolist() for n in lengths]


def tiny(attn: str = "sdpa") -> Transformer:
    torch.manual_seed(0)
    return Transformer(TransformerConfig(vocab_size=50, dim=32, n_layers=2, n_heads=4, max_seq_len=64, attn=attn))


def one_by_one(model: Transformer, docs: list[list[int]]) -> torch.Tensor:
    """Each sample alone in its own forward pass: mean over samples of its mean next-token loss."""
    losses = []
    for d in docs:
        ids = torch.tensor(d)[None]  # (1, L)
        logits = model(ids[:, :-1])  # (1, L-1, V)
        losses.append(F.cross_entropy(logits[0], ids[0, 1:]))
    return torch.stack(losses).mean()


@pytest.mark.parametrize("attn", ["sdpa", "naive"])
def test_packed_loss_and_grads_equal_the_samples_run_alone(attn):
    docs = docs_of(LENGTHS)
    data = PackedDocs(docs, batch_size=2, seq_len=32)
    assert data.ids.shape == (2, 32)  # several samples of different lengths share each row
    batch = next(data.sequential(weights=True))
    model = tiny(attn)
    packed = CausalLM()(model, batch).loss
    packed_grads = torch.autograd.grad(packed, list(model.parameters()))
    alone = one_by_one(model, docs)
    alone_grads = torch.autograd.grad(alone, list(model.parameters()))
    assert abs(packed.item() - alone.item()) < 1e-5
    for a, b in zip(packed_grads, alone_grads):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-4)


def test_without_the_document_mask_the_packed_loss_differs():
    docs = docs_of(LENGTHS)
    batch = next(PackedDocs(docs, batch_size=2, seq_len=32).sequential(weights=True))
    model = tiny()
    with torch.no_grad():
        alone = one_by_one(model, docs)
        logits = model(batch["ids"])  # plain causal attention across the packed samples
        tok = F.cross_entropy(logits.flatten(0, 1), batch["targets"].flatten(), reduction="none")
        leaky = (batch["weights"].flatten() * tok).sum() / batch["weights"].sum()
    assert abs(float(leaky) - float(alone)) > 1e-3


def test_document_mask_is_causal_within_and_blocked_across_documents():
    doc_ids = torch.tensor([[0, 0, 1, 1, 1, -1], [4, 5, 5, 5, 5, 5]])
    m = masks.document(doc_ids)
    assert m.shape == (2, 1, 6, 6) and m.dtype == torch.bool
    for b in range(2):
        for i in range(6):
            for j in range(6):
                assert bool(m[b, 0, i, j]) == (j <= i and bool(doc_ids[b, i] == doc_ids[b, j])), (b, i, j)


def test_rows_hold_targets_positions_and_doc_ids_per_sample():
    data = PackedDocs([[2, 3, 4, 5, 6], [10, 11, 12]], batch_size=1, seq_len=10)
    b = data.get_batch(0)
    assert b["ids"].tolist() == [[2, 3, 4, 5, 6, 10, 11, 12, 0, 0]]
    assert b["targets"].tolist() == [[3, 4, 5, 6, -100, 11, 12, -100, -100, -100]]
    assert b["doc_ids"].tolist() == [[0, 0, 0, 0, 0, 1, 1, 1, -1, -1]]
    assert b["positions"].tolist() == [[0, 1, 2, 3, 4, 0, 1, 2, 0, 1]]
    assert b["weights"][0].tolist() == pytest.approx([0.25] * 4 + [0.0, 0.5, 0.5] + [0.0] * 3)


def test_a_long_document_is_cut_into_overlapping_pieces_that_predict_each_target_once():
    doc = list(range(1, 11))  # 10 tokens, 9 next-token targets
    data = PackedDocs([doc], batch_size=3, seq_len=4)
    b = next(data.sequential(weights=True))
    assert b["ids"].tolist() == [[1, 2, 3, 4], [4, 5, 6, 7], [7, 8, 9, 10]]
    assert b["positions"].tolist() == [[0, 1, 2, 3]] * 3
    pairs = [(i, t) for i, t in zip(b["ids"].flatten().tolist(), b["targets"].flatten().tolist()) if t != -100]
    assert sorted(pairs) == [(k, k + 1) for k in range(1, 10)]
    assert b["weights"].sum(dim=1).tolist() == pytest.approx([1.0, 1.0, 1.0])  # each piece is one sample


def test_a_long_and_a_short_sample_count_equally():
    short, long = docs_of((3, 21), seed=1)  # 2 and 20 targets in one row
    b = PackedDocs([short, long], batch_size=1, seq_len=32).get_batch(0)
    w = b["weights"][0]
    assert w[:2].tolist() == pytest.approx([0.5, 0.5]) and w[3:23].tolist() == pytest.approx([0.05] * 20)
    assert float(w.sum()) == pytest.approx(2.0)
    model = tiny()
    with torch.no_grad():
        means = [float(one_by_one(model, [d])) for d in (short, long)]
        equal = float(CausalLM()(model, b).loss)
        by_token = float(CausalLM(Config(equalize=False))(model, b).loss)
    assert equal == pytest.approx((means[0] + means[1]) / 2, abs=1e-5)
    assert by_token == pytest.approx((2 * means[0] + 20 * means[1]) / 22, abs=1e-5)
    assert abs(equal - by_token) > 1e-3


def test_plain_batches_are_unchanged():
    model = tiny()
    ids = torch.randint(0, 50, (2, 12), generator=torch.Generator().manual_seed(3))
    targets = ids.roll(-1, 1)
    targets[:, -1] = -100
    with torch.no_grad():
        out = CausalLM()(model, {"ids": ids, "targets": targets})
        ref = F.cross_entropy(model(ids).flatten(0, 1).float(), targets.flatten(), ignore_index=-100)
    assert torch.equal(out.loss, ref) and out.metrics == {}


def test_batches_are_a_pure_function_of_step_micro_rank_world():
    docs = docs_of([4 + i % 9 for i in range(120)], seed=2)
    a, b = PackedDocs(docs, 4, 16, seed=7), PackedDocs(docs, 4, 16, seed=7)
    assert a.ids.shape[0] > 20
    for key in ((3, 1, 0, 2), (0, 0, 0, 1), (5, 0, 1, 2)):
        x, y = a.get_batch(*key), b.get_batch(*key)
        assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)
    draws = {tuple(a.get_batch(*k)["ids"].flatten().tolist()) for k in ((3, 1, 0, 2), (4, 1, 0, 2), (3, 0, 0, 2),
                                                                         (3, 1, 1, 2), (3, 1, 0, 1))}
    assert len(draws) == 5


def test_sequential_covers_every_row_once_and_weights_only_on_request():
    data = PackedDocs(docs_of(LENGTHS), batch_size=1, seq_len=32)
    rows = list(data.sequential())
    assert len(rows) == 2 and "weights" not in rows[0]
    assert torch.equal(torch.cat([r["ids"] for r in rows]), data.ids)
    assert len(list(data.sequential(max_batches=1))) == 1


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="got 0 documents"):
        PackedDocs([], 2, 8)
    with pytest.raises(ValueError, match="document 1 has 0 tokens"):
        PackedDocs([[1, 2], []], 2, 8)
    with pytest.raises(ValueError, match="seq_len=0"):
        PackedDocs([[1, 2]], 2, 0)
    with pytest.raises(ValueError, match="batch_size=0"):
        PackedDocs([[1, 2]], 0, 8)
    with pytest.raises(ValueError, match=r"doc_ids of shape \(B, T\), got shape \(6,\)"):
        masks.document(torch.zeros(6, dtype=torch.long))
    batch = PackedDocs([[1, 2, 3]], 1, 4).get_batch(0)
    batch["doc_ids"] = batch["doc_ids"][:, None]  # (B, 1, T)
    with pytest.raises(ValueError, match=r"got shape \(1, 1, 4\)"):
        CausalLM()(tiny(), batch)
