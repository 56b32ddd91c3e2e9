"""Caches after tree scoring / rollback equal recomputation; layer-skip drafts; Hugging Face models."""

from __future__ import annotations

import pytest
import torch
from conftest import noisy_copy, tiny

from lmlab.decoding.base import Proposals, Sampling
from lmlab.decoding.drafts import SubVocabDraft, layer_skip, parse_skip
from lmlab.decoding.graph import GraphProposer
from lmlab.decoding.gsd import GraphSpeculative
from lmlab.decoding.loop import commit, score, speculative_generate
from lmlab.decoding.reference import Greedy


def keys(cache, n: int) -> torch.Tensor:
    return torch.stack([k[:, :, :n] for k in cache.k])  # (layers, B, H, n, D)


@torch.no_grad()
def test_tree_scoring_and_commit_equal_sequential_decoding(target):
    prefix, root = [5, 6, 7, 8], 9
    props = Proposals([1, 2, 3, 4, 5, 6], [-1, -1, 0, 0, 2, 1])  # two branches, depth 3
    cache = target.new_cache(max_len=32)
    target(torch.tensor([prefix]), cache=cache)
    logits = score(target, cache, root, props)  # (7, V)
    for path in ([0, 2, 4], [1, 5], []):
        seq = prefix + [root] + [props.tokens[i] for i in path]
        full = target(torch.tensor([seq]))[0]  # (T, V) without any cache
        rows = [0] + [i + 1 for i in path]
        assert torch.allclose(logits[rows], full[len(prefix):], atol=1e-10)
    L = len(prefix)
    commit(cache, L + 1, [L + 1 + i for i in [0, 2, 4]])  # non-contiguous: KVCache.gather
    seq = prefix + [root, 1, 3, 5]
    fresh = target.new_cache(max_len=32)
    target(torch.tensor([seq]), cache=fresh)
    assert cache.length == len(seq)
    assert torch.allclose(keys(cache, len(seq)), keys(fresh, len(seq)), atol=1e-10)
    nxt = target(torch.tensor([[11]]), cache=cache)[0, -1]
    assert torch.allclose(nxt, target(torch.tensor([seq + [11]]))[0, -1], atol=1e-10)


@torch.no_grad()
@pytest.mark.parametrize("merge_context", [-1, 0, 1])
def test_draft_cache_after_rollback_equals_recomputation(target, merge_context):
    from lmlab.decoding.gsd import Config, ContextMergeIndex

    draft = noisy_copy(target, 0.05)
    factory = (lambda: ContextMergeIndex(merge_context)) if merge_context >= 0 else None
    shape = Config(top_k=3, sibling_threshold=0.1, leaf_threshold=0.0, budget=12)
    proposer = GraphProposer(draft, shape, factory)
    prompt = [1, 2, 3, 4, 5, 6, 7, 8]
    gen = speculative_generate(target, proposer, prompt, 40, 4, 12, Sampling())
    assert gen.tokens == Greedy().generate(target, prompt, 40).tokens
    if merge_context >= 0:  # accepted paths went through merge edges, so the draft had to re-feed them
        assert proposer.merged_accepts > 0
    n, cache = proposer.runner.n, proposer.runner.cache
    seq = (prompt + gen.tokens)[:n]
    fresh = draft.new_cache(max_len=64)
    draft(torch.tensor([seq]), cache=fresh)
    assert cache.length == n
    assert torch.allclose(keys(cache, n), keys(fresh, n), atol=1e-10)


def test_layer_skip_on_lmlab_transformer(target):
    draft = layer_skip(target, [1])
    ids = torch.tensor([[1, 2, 3]])
    assert torch.equal(draft(ids), target(ids, layers=[0, 2]))
    assert draft.n_layers == 2 and draft.vocab_size == target.vocab_size
    assert next(draft.parameters()) is next(target.parameters())
    with pytest.raises(ValueError, match="removes all 3 layers"):
        layer_skip(target, [0, 1, 2])
    with pytest.raises(ValueError, match=r"\[7\].*0\.\.2"):
        layer_skip(target, [7])


@torch.no_grad()
def test_sub_vocabulary_draft_maps_ids_both_ways(target):
    small = tiny(vocab=6, dim=16, layers=1)  # 5 kept ids + 1 unknown
    kept = [3, 40, 7, 0, 12]
    draft = SubVocabDraft(small, kept, 48)
    ids = torch.tensor([[40, 5, 12]])  # 5 is outside the sub-vocabulary: read as the unknown id 5
    out = draft(ids)  # (1, 3, 48)
    ref = small(torch.tensor([[1, 5, 4]]))
    assert torch.equal(out[..., kept], ref[..., :5])
    assert torch.isinf(out[..., [i for i in range(48) if i not in kept]]).all()
    prompt = [3, 40, 7, 7, 0]
    ref_tokens = Greedy().generate(target, prompt, 16).tokens
    assert GraphSpeculative(draft=draft).generate(target, prompt, 16).tokens == ref_tokens
    with pytest.raises(ValueError, match="6 \\+ 1"):
        SubVocabDraft(small, kept[:4] + [1, 2], 48)
    with pytest.raises(ValueError, match="distinct"):
        SubVocabDraft(small, [3, 3, 1, 2, 4], 48)


def test_parse_skip():
    assert parse_skip("skip:0,2,4", 8) == [0, 2, 4]
    assert parse_skip("skip:1-3,7", 8) == [1, 2, 3, 7]
    assert parse_skip("skip:odd", 6) == [1, 3, 5] and parse_skip("skip:even", 5) == [0, 2, 4]
    for bad in ("0,2", "skip:", "skip:a-b"):
        with pytest.raises(ValueError, match="skip"):
            parse_skip(bad, 8)


@torch.no_grad()
def test_hugging_face_target_and_layer_skip_view():
    pytest.importorskip("transformers")
    from transformers import LlamaConfig, LlamaForCausalLM

    from lmlab.core.hf import HFCausalLM, transformer_from_llama
    from lmlab.decoding.chain import ChainSpeculative
    from lmlab.decoding.chain import Config as ChainConfig
    from lmlab.decoding.gsd import Config

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=48, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      tie_word_embeddings=False)
    hf = LlamaForCausalLM(cfg).double().eval()
    hf.lm_head.weight.normal_(0.0, 1.0)
    target = HFCausalLM(hf)
    draft = layer_skip(target, [1, 2])
    ids = torch.tensor([[3, 4, 5, 6]])
    assert torch.allclose(draft(ids), transformer_from_llama(hf)(ids, layers=[0, 3]), atol=1e-10)
    assert draft.model.model.layers[1].self_attn.q_proj.weight is hf.model.layers[3].self_attn.q_proj.weight
    assert [layer.self_attn.layer_idx for layer in hf.model.layers] == [0, 1, 2, 3]  # the target is untouched
    lmlab_draft = tiny(vocab=48, dim=16, layers=1)  # a separate lmlab draft for an HF target
    for prompt in ([1, 2, 3], [9, 9, 8, 7, 6]):
        ref = Greedy().generate(target, prompt, 16).tokens
        out = hf.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                          do_sample=False, max_new_tokens=16, min_new_tokens=16, pad_token_id=0)
        assert ref == out[0, len(prompt):].tolist()
        for dec in (GraphSpeculative(Config(depth=4, budget=10, leaf_threshold=0.0), draft),
                    GraphSpeculative(Config(depth=3, budget=6, merge_context=0), lmlab_draft),
                    ChainSpeculative(ChainConfig(depth=3), draft)):
            assert dec.generate(target, prompt, 16).tokens == ref
