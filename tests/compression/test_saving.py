"""Save and reload a quantized model: safetensors + JSON, identical outputs, packed INT4 codes, bad input."""

import json

import pytest
import torch
from safetensors.torch import load_file

from lmlab.compression.flatquant import Config as FlatConfig
from lmlab.compression.flatquant import FlatQuant
from lmlab.compression.hadamard import Config as HadamardConfig
from lmlab.compression.hadamard import Hadamard
from lmlab.compression.saving import load_quantized, save_quantized
from lmlab.core.checkpoint import CheckpointError, save_model
from lmlab.core.hf import HFCausalLM, llama_from_transformer


def test_flatquant_lmlab_model_reloads_with_identical_outputs(tiny, ids, tmp_path):
    model, report = FlatQuant(FlatConfig(nsamples=8, seq_len=24, epochs=1)).fit(tiny, ids)
    save_quantized(tmp_path / "q", model, report)
    meta = json.loads((tmp_path / "q" / "meta.json").read_text())
    assert meta["base"]["kind"] == "lmlab" and meta["report"]["method"] == "flatquant"
    assert meta["modules"]["layers.0.attn.q_proj"]["bits"] == 4
    tensors = load_file(str(tmp_path / "q" / "model.safetensors"))
    assert tensors["layers.0.attn.q_proj.codes"].dtype == torch.uint8  # two INT4 codes per byte
    reloaded, _ = load_quantized(tmp_path / "q")
    with torch.no_grad():
        assert torch.equal(reloaded(ids), model(ids))


def test_hadamard_hf_model_reloads_with_identical_outputs(tiny, ids, tmp_path):
    hf = HFCausalLM(llama_from_transformer(tiny).eval())
    model, report = Hadamard(HadamardConfig(bits="w4a4kv4")).fit(hf)
    save_quantized(tmp_path / "q", model, report)
    reloaded, meta = load_quantized(tmp_path / "q")
    assert isinstance(reloaded, HFCausalLM) and meta["base"]["config"]["tie_word_embeddings"] is False
    with torch.no_grad():
        assert torch.equal(reloaded(ids), model(ids))


def test_plain_checkpoint_is_not_a_quantized_model(tiny, tmp_path):
    save_model(tmp_path / "plain", tiny, {"dim": 32})
    with pytest.raises(CheckpointError, match="not a quantized lmlab model"):
        load_quantized(tmp_path / "plain")
    with pytest.raises(ValueError, match="no quantized modules"):
        save_quantized(tmp_path / "q", tiny)


def test_bf16_model_reloads_in_bf16_with_identical_outputs(tiny, ids, tmp_path):
    """The model's own dtype is kept: a bfloat16 model is stored and rebuilt in bfloat16 (not widened)."""
    from lmlab.compression.rtn import RTN, Config

    model, report = RTN(Config(bits="w4a4kv4")).fit(tiny.to(torch.bfloat16))
    save_quantized(tmp_path / "q", model, report)
    meta = json.loads((tmp_path / "q" / "meta.json").read_text())
    assert meta["base"]["dtype"] == meta["storage"]["dtype"] == "bfloat16"
    assert load_file(str(tmp_path / "q" / "model.safetensors"))["tok_emb.weight"].dtype == torch.bfloat16
    reloaded, _ = load_quantized(tmp_path / "q")
    with torch.no_grad():
        out = reloaded(ids)
        assert out.dtype == torch.bfloat16 and torch.equal(out, model(ids))


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_plain_tensors_in_half_storage_shrink_the_folder_and_reload_exactly(dtype, tiny, ids, tmp_path):
    from lmlab.compression.base import state_bytes
    from lmlab.compression.rtn import RTN, Config
    from lmlab.compression.saving import plain_names, saved_sizes

    fp_bytes = state_bytes(tiny)
    model, report = RTN(Config(bits="w4a4kv4")).fit(tiny)
    assert report.fp_bytes == fp_bytes
    save_quantized(tmp_path / "full", model, report)
    full_saved = report.saved_bytes
    save_quantized(tmp_path / "half", model, report, dtype=dtype)
    sizes = saved_sizes(tmp_path / "half")
    assert sizes["fp_bytes"] == fp_bytes and sizes["saved_bytes"] == report.saved_bytes
    assert sizes["saved_bytes"] == sum(f.stat().st_size for f in (tmp_path / "half").iterdir())
    assert sizes["saved_bytes"] < full_saved < fp_bytes
    tensors = load_file(str(tmp_path / "half" / "model.safetensors"))
    assert tensors["tok_emb.weight"].dtype == getattr(torch, dtype) and "lm_head.weight" not in tensors  # tied
    assert tensors["layers.0.attn.o_proj.scale"].dtype == torch.float32  # quantizer tensors as they are
    reloaded, meta = load_quantized(tmp_path / "half")
    assert meta["storage"] == {"dtype": dtype, "tensors": len(plain_names(model))}
    assert reloaded.lm_head.weight is reloaded.tok_emb.weight
    with torch.no_grad():
        for name, p in model.named_parameters():  # the same model with its plain tensors rounded
            if name in plain_names(model):
                p.copy_(p.to(getattr(torch, dtype)).float())
        assert torch.equal(reloaded(ids), model(ids))
    with pytest.raises(ValueError, match="storage dtype 'int8' is not supported; expected one of float32"):
        save_quantized(tmp_path / "bad", model, report, dtype="int8")


def test_save_into_a_foreign_folder_needs_overwrite_and_keeps_its_files(tiny, ids, tmp_path):
    """save_quantized passes ``overwrite`` through; the folder stays marked as shared after the sizes are
    written, so a later save there (without overwrite) still removes nothing."""
    from lmlab.compression.rtn import RTN, Config
    from lmlab.core.checkpoint import BESIDE, OutputFolderError

    model, report = RTN(Config(bits="w4a16")).fit(tiny)
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text("{}")
    with pytest.raises(OutputFolderError, match="config.json"):
        save_quantized(tmp_path / "hf", model, report)
    save_quantized(tmp_path / "hf", model, report, overwrite=True)
    meta = json.loads((tmp_path / "hf" / "meta.json").read_text())
    assert meta[BESIDE] is True and meta["sizes"]["saved_bytes"] == report.saved_bytes
    save_quantized(tmp_path / "hf", model, report)
    assert (tmp_path / "hf" / "config.json").read_text() == "{}"
    reloaded, _ = load_quantized(tmp_path / "hf")
    with torch.no_grad():
        assert torch.equal(reloaded(ids), model(ids))
