"""core.scoring: one next-token NLL / perplexity, the optional BOS in front (context only), the tokenizer's
BOS convention, and the callers (compression.evaluate, activation sparsity, the batch-size law loss)."""

import math

import pytest
import torch
import torch.nn.functional as F

from lmlab.compression import activation_sparsity as A
from lmlab.compression.evaluate import perplexity, score_windows
from lmlab.core.scoring import NLL, bos_convention, score, token_nll
from lmlab.core.tokenizer import ByteTokenizer, HFTokenizer
from lmlab.core.transformer import Transformer, TransformerConfig

torch.set_num_threads(1)
V, BOS = 40, 39


def tiny() -> Transformer:
    torch.manual_seed(0)
    return Transformer(TransformerConfig(vocab_size=V, dim=32, n_layers=2, n_heads=4, max_seq_len=32)).eval()


def windows(n: int = 5, t: int = 9) -> torch.Tensor:
    return torch.randint(0, BOS, (n, t), generator=torch.Generator().manual_seed(3))


@torch.no_grad()
def old_perplexity_sum(model, ids, batch_size):
    """The formula the evaluation copies used before core.scoring (no BOS): (total NLL, count)."""
    total, count = 0.0, 0
    for batch in ids.split(batch_size):
        logits = model(batch)
        total += float(F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), batch[:, 1:].flatten(),
                                       reduction="sum"))
        count += batch[:, 1:].numel()
    return total, count


def test_without_bos_is_bit_identical_to_the_previous_formula():
    model, ids = tiny(), windows()
    total, count = old_perplexity_sum(model, ids, batch_size=2)
    res = score(model, ids, batch_size=2)
    assert isinstance(res, NLL) and not res.bos_used
    assert (res.total_nll, res.tokens) == (total, count) and res.tokens == 5 * 8
    assert res.mean_nll == total / count and res.perplexity == math.exp(total / count)
    assert perplexity(model, ids, batch_size=2) == math.exp(total / count)
    assert A.mean_nll(model, list(ids.split(2))) == total / count


@torch.no_grad()
def test_bos_is_context_only_and_every_window_token_is_scored():
    model, ids = tiny(), windows()
    res = score(model, ids, bos_id=BOS, batch_size=3)
    with_bos = torch.cat([torch.full((5, 1), BOS), ids], dim=1)  # (N, 1 + T)
    logp = model(with_bos)[:, :-1].float().log_softmax(-1)  # predictions of w_0 .. w_{T-1}
    ref = -logp.gather(-1, ids[..., None]).sum()
    assert res.bos_used and res.tokens == ids.numel()
    assert abs(res.total_nll - float(ref)) < 1e-3
    assert res.total_nll != score(model, ids).total_nll  # BOS changes the conditioning
    full = score_windows(model, ids, batch_size=3, bos_id=BOS)
    assert full == res and perplexity(model, ids, 3, bos_id=BOS) == res.perplexity


def test_score_windows_restores_training_mode_and_bad_input_is_named():
    model = tiny().train()
    score_windows(model, windows())
    assert model.training
    with pytest.raises(ValueError, match="integer tensors of shape"):
        score(model, windows().float())
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        score(model, windows(), batch_size=0)
    with pytest.raises(ValueError, match="predict nothing"):
        score(model, windows(t=1))
    assert score(model.eval(), windows(t=1), bos_id=BOS).tokens == 5  # BOS + 1 token scores that token


def test_token_nll_mean_is_the_training_loss_bit_for_bit():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 7, V, generator=g, requires_grad=True)
    targets = torch.randint(0, V, (3, 7), generator=g)
    ours = token_nll(logits, targets, reduction="mean")
    (g1,) = torch.autograd.grad(ours, logits)
    ref = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())
    (g2,) = torch.autograd.grad(ref, logits)
    assert torch.equal(ours, ref) and torch.equal(g1, g2)


def hf_tokenizer(adds_bos: bool):
    """A word-level transformers tokenizer that puts <bos> in front of a text (Gemma) or not (SmolLM2)."""
    pytest.importorskip("transformers")
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.WordLevel({"<bos>": 0, "<eos>": 1, "<unk>": 2, "a": 3, "b": 4}, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    if adds_bos:
        tk.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 0)])
    return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<bos>", eos_token="<eos>", unk_token="<unk>")


def test_bos_convention_follows_the_tokenizer():
    gemma_like, smollm_like = hf_tokenizer(True), hf_tokenizer(False)
    assert gemma_like.bos_token_id == smollm_like.bos_token_id == 0  # both HAVE a BOS token ...
    assert bos_convention(gemma_like) == 0 and bos_convention(HFTokenizer(gemma_like)) == 0
    assert bos_convention(smollm_like) is None and bos_convention(HFTokenizer(smollm_like)) is None  # ... one adds it
    assert bos_convention(ByteTokenizer(specials=("<bos>", "<eos>"))) is None  # lmlab: encode adds no specials
