"""Length extrapolation (perplexity at T, 2T, 4T, 8T) and retrieval accuracy per needle depth."""

import math

import pytest
import torch
from torch import nn

from lmlab.core.scoring import score
from lmlab.core.transformer import Transformer, TransformerConfig
from lmlab.recipes.extrapolation import depth_accuracy, length_extrapolation
from lmlab.tasks.encoding import TaskCodec
from lmlab.tasks.retrieval import Config, RetrievalTask, depth_sweep, parse_prompt


def tiny(max_seq_len=64, vocab=50):
    torch.manual_seed(0)
    return Transformer(TransformerConfig(vocab_size=vocab, dim=32, n_layers=2, n_heads=4, max_seq_len=max_seq_len))


def stream(n=300, vocab=50):
    return torch.randint(0, vocab, (n,), generator=torch.Generator().manual_seed(1))


def test_every_factor_gives_finite_numbers_on_the_same_tokens():
    model, ids = tiny(), stream()
    model.train()
    out = length_extrapolation(model, ids, train_len=8)
    assert model.training  # mode restored
    assert list(out) == [1, 2, 4, 8]
    usable = 300 // 64 * 64  # the prefix that is whole windows of the longest length
    for f, row in out.items():
        assert row["length"] == 8 * f and row["windows"] == usable // (8 * f)
        assert row["tokens"] == usable - row["windows"]  # each window's first token is context only
        assert math.isfinite(row["mean_nll"]) and row["perplexity"] == pytest.approx(math.exp(row["mean_nll"]))
    model.eval()  # the 2T row is the NLL of the 2T windows, scored one by one
    windows = ids[:usable].view(-1, 16)
    one_by_one = [score(model, windows[i:i + 1]) for i in range(len(windows))]
    total = sum(s.total_nll for s in one_by_one)
    assert out[2]["mean_nll"] == pytest.approx(total / sum(s.tokens for s in one_by_one), rel=1e-5)


def test_factors_that_do_not_divide_each_other_share_one_stream():
    out = length_extrapolation(tiny(), stream(), train_len=8, factors=(2, 3))  # 16 and 24: 288 = 6 x 48 tokens
    assert (out[2]["windows"], out[3]["windows"]) == (18, 12)


def test_lengths_see_their_own_context():
    """A longer window changes what the model conditions on: the rows differ, so no length is silently clipped."""
    out = length_extrapolation(tiny(), stream(), train_len=8, factors=(1, 8))
    assert out[1]["mean_nll"] != out[8]["mean_nll"]


def test_bos_scores_every_window_token_and_counts_against_the_context():
    model, ids = tiny(max_seq_len=65), stream()
    out = length_extrapolation(model, ids, train_len=8, bos_id=0)
    assert all(row["tokens"] == 256 for row in out.values())
    with pytest.raises(ValueError, match=r"lengths \[64\] .* \+ BOS\) exceed the model's max_seq_len 64"):
        length_extrapolation(tiny(max_seq_len=64), ids, train_len=8, bos_id=0)


def test_a_length_beyond_max_seq_len_is_a_clear_error():
    with pytest.raises(ValueError, match=r"lengths \[64, 128\] \(factors \[4, 8\] x train_len 16\) exceed the "
                                         r"model's max_seq_len 32"):
        length_extrapolation(tiny(max_seq_len=32), stream(), train_len=16)


@pytest.mark.parametrize("kwargs,match", [
    ({"train_len": 1}, r"train_len must be an int >= 2 \(a window must predict a token\), got 1"),
    ({"train_len": 8, "factors": ()}, "factors must be a non-empty"),
    ({"train_len": 8, "factors": (1, 0)}, r"got \(1, 0\)"),
    ({"train_len": 8, "batch_size": 0}, "batch_size must be an int >= 1, got 0"),
])
def test_bad_arguments_raise_naming_the_value(kwargs, match):
    with pytest.raises(ValueError, match=match):
        length_extrapolation(tiny(), stream(), **kwargs)


def test_too_few_or_malformed_tokens_raise():
    with pytest.raises(ValueError, match=r"hold 40 tokens; lengths \[8, 16, 32, 64\] need at least 64"):
        length_extrapolation(tiny(), stream(40), train_len=8)
    with pytest.raises(ValueError, match="1-D sequence of integer token ids"):
        length_extrapolation(tiny(), stream().view(3, 100), train_len=8)
    with pytest.raises(ValueError, match="1-D sequence of integer token ids"):
        length_extrapolation(tiny(), stream().float(), train_len=8)


class _Cache:
    def __init__(self):
        self.ids = None


class EdgeOnlyRetriever(nn.Module):
    """A causal LM stand-in that retrieves a needle only in the first or last quarter of the context (lost in the
    middle by construction): elsewhere it writes the value with every digit shifted by one."""

    def __init__(self, codec: TaskCodec):
        super().__init__()
        self.codec = codec
        self.cfg = TransformerConfig(vocab_size=codec.vocab_size, max_seq_len=codec.seq_len)  # mask = causal
        self.device = torch.device("cpu")

    def new_cache(self, batch: int = 1, max_len: int | None = None) -> _Cache:
        return _Cache()

    def forward(self, ids: torch.Tensor, *, cache: _Cache, **_) -> torch.Tensor:
        cache.ids = ids if cache.ids is None else torch.cat([cache.ids, ids], dim=1)  # (B, t)
        logits = torch.zeros(ids.shape[0], ids.shape[1], self.codec.vocab_size)  # (B, T, V)
        for b, row in enumerate(cache.ids.tolist()):
            sep = row.index(self.codec.sep_id)
            pairs, query = parse_prompt(self.codec.tok.decode(row[:sep]))
            depth = [k for k, _ in pairs].index(query) / (len(pairs) - 1)
            value = dict(pairs)[query]
            answer = value if depth <= 0.25 or depth >= 0.75 else "".join(str((int(c) + 1) % 10) for c in value)
            written = len(row) - sep - 1
            nxt = self.codec.tok.encode(answer[written])[0] if written < len(answer) else self.codec.eos_id
            logits[b, -1, nxt] = 1.0
        return logits


def test_depth_accuracy_measures_each_depth_with_the_exact_verifier():
    task = RetrievalTask(Config(n_pairs=9))
    depths = [0.0, 0.25, 0.5, 0.75, 1.0]
    codec = TaskCodec.fit(task.alphabet, [e for s in depth_sweep(task, depths, 8).values() for e in s])
    acc = depth_accuracy(EdgeOnlyRetriever(codec), codec, task, depths, n=8)
    assert acc == {0.0: 1.0, 0.25: 1.0, 0.5: 0.0, 0.75: 1.0, 1.0: 1.0}


def test_depth_accuracy_runs_a_real_model_and_rejects_bad_input():
    task = RetrievalTask(Config(n_pairs=4))
    codec = TaskCodec.fit(task.alphabet, task.generate(20, seed=0))
    torch.manual_seed(0)
    model = Transformer(TransformerConfig(vocab_size=codec.vocab_size, dim=32, n_layers=2, n_heads=4,
                                          max_seq_len=codec.seq_len))
    acc = depth_accuracy(model, codec, task, [0.0, 1.0], n=4)
    assert set(acc) == {0.0, 1.0} and all(0.0 <= a <= 1.0 for a in acc.values())
    with pytest.raises(ValueError, match=r"depth must be a number in \[0, 1\], got 1.2"):
        depth_accuracy(model, codec, task, [0.5, 1.2], n=4)
    with pytest.raises(ValueError, match="n .* must be an int >= 1, got 0"):
        depth_accuracy(model, codec, task, [0.5], n=0)
    with pytest.raises(ValueError, match="needs a RetrievalTask"):
        depth_accuracy(model, codec, "retrieval", [0.5], n=1)
