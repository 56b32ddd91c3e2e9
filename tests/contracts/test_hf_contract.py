"""The "hf" contract: a method tagged "hf" runs on a Hugging Face LlamaForCausalLM wrapped in HFCausalLM.

Decoders give the same tokens as on the equivalent lmlab Transformer (greedy, and seeded sampling for the
"sampling" and "rerank" ones); compressors fit and leave a model with finite logits of the right shape.
"""

from __future__ import annotations

import pytest
import torch
from conftest import calib_ids, compressible_lm, fit_compressor, make_decoder, names_with, tiny_lm

from lmlab.core.hf import HFCausalLM, llama_from_transformer
from lmlab.decoding import REGISTRY as DECODING
from lmlab.decoding.base import Sampling
from lmlab.decoding.drafts import layer_skip

pytest.importorskip("transformers")

HF_DECODERS = names_with("decoding", "hf")
HF_COMPRESSORS = names_with("compression", "hf")
PROMPTS = [[5], [3, 17, 40, 2]]


def hf_twin(model: torch.nn.Module) -> HFCausalLM:
    return HFCausalLM(llama_from_transformer(model).eval())


def draft_pairs(name: str, target: torch.nn.Module, hf_target: HFCausalLM) -> list[tuple]:
    """(lmlab draft, its Hugging Face twin): another random model and a layer-skip view; [(None, None)]."""
    if "draft" not in DECODING.entry(name).caps:
        return [(None, None)]
    other = tiny_lm(100, dim=16)
    return [(other, hf_twin(other)), (layer_skip(target, [1]), layer_skip(hf_target, [1]))]


def modes(name: str) -> list[Sampling]:
    caps = DECODING.entry(name).caps
    return ([Sampling()] if "greedy-lossless" in caps else []) + \
        ([Sampling(sample=True, temperature=0.7)] if "sampling" in caps or "rerank" in caps else [])


@pytest.mark.parametrize("name", HF_DECODERS)
def test_hf_decoders_match_the_lmlab_twin(name):
    target = tiny_lm(0)
    hf_target = hf_twin(target)
    assert modes(name), f"decoder {name!r} is tagged hf but neither greedy-lossless, sampling nor rerank"
    for sampling in modes(name):
        for draft, hf_draft in draft_pairs(name, target, hf_target):
            dec = make_decoder(name, draft=draft, sampling=sampling if sampling.sample else None)
            hf_dec = make_decoder(name, draft=hf_draft, sampling=sampling if sampling.sample else None)
            for prompt in PROMPTS:
                want = dec.generate(target, prompt, 12, seed=3).tokens
                got = hf_dec.generate(hf_target, prompt, 12, seed=3).tokens
                assert got == want, f"{name} ({sampling}) on HFCausalLM vs Transformer, prompt {prompt}"


@pytest.mark.parametrize("name", HF_COMPRESSORS)
def test_hf_compressors_fit_a_wrapped_llama(name):
    base = compressible_lm()
    hf = hf_twin(base)
    ids = calib_ids()[:2]
    with torch.no_grad():
        before = hf(ids)
    model, report = fit_compressor(name, hf)
    assert report.method == name
    with torch.no_grad():
        logits = model(ids)
    assert logits.shape == (2, ids.shape[1], 61) and torch.isfinite(logits).all()
    assert not torch.equal(logits, before), f"{name} left the model's outputs unchanged"


SMALL_MODEL = {"vocab_size": 61, "dim": 32, "n_layers": 2, "n_heads": 4, "max_seq_len": 64}


@pytest.mark.parametrize("name", names_with("models", "hf"))
def test_hf_models_map_to_llama_and_back_with_the_same_logits(name):
    from lmlab.core.hf import transformer_from_llama
    from lmlab.models import REGISTRY as MODELS

    cfg_cls = MODELS.config(name)
    torch.manual_seed(0)
    model = MODELS.get(name)(cfg_cls(**SMALL_MODEL)).eval()
    hf = hf_twin(model)
    back = transformer_from_llama(hf.model)
    ids = calib_ids()[:2]
    with torch.no_grad():
        want = model(ids)
        assert torch.allclose(hf(ids), want, atol=1e-5) and torch.equal(back(ids), want)
