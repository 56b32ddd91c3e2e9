"""Compressor contracts: the "save" cap (exact save / load round trip) and the "calibration" cap.

A compressor tagged "save" reloads from ``save_quantized`` with identical logits, as an lmlab Transformer and,
when tagged "hf", as a wrapped Hugging Face Llama. One without the tag must refuse to save with a clear error,
so the tag stays precise: a compressor that becomes savable fails here until it is tagged.
"""

from __future__ import annotations

import pytest
import torch
from conftest import calib_ids, compressible_lm, fit_compressor, make_compressor, names_of, names_with

from lmlab.compression import REGISTRY as COMPRESSION
from lmlab.compression.saving import load_quantized, save_quantized
from lmlab.core.hf import HFCausalLM, llama_from_transformer

SAVABLE = names_with("compression", "save")
NOT_SAVABLE = [n for n in names_of("compression") if n not in SAVABLE]


def bases(name: str) -> list[torch.nn.Module]:
    """The models a compressor is saved from: the lmlab Transformer, and its Llama twin with cap "hf"."""
    out = [compressible_lm()]
    if "hf" in COMPRESSION.entry(name).caps:
        pytest.importorskip("transformers")
        out.append(HFCausalLM(llama_from_transformer(compressible_lm()).eval()))
    return out


@pytest.mark.parametrize("name", SAVABLE)
def test_savable_compressors_reload_with_identical_logits(name, tmp_path):
    ids = calib_ids()[:2]
    for i, base in enumerate(bases(name)):
        model, report = fit_compressor(name, base)
        path = save_quantized(tmp_path / f"q{i}", model, report)
        reloaded, meta = load_quantized(path)
        assert type(reloaded) is type(model) and meta["report"]["method"] == name
        with torch.no_grad():
            assert torch.equal(reloaded(ids), model(ids)), f"{name}: logits changed after reload ({type(base)})"


@pytest.mark.parametrize("name", NOT_SAVABLE)
def test_compressors_without_the_save_cap_refuse_to_save(name, tmp_path):
    model, report = fit_compressor(name, compressible_lm())
    with pytest.raises(ValueError, match="no quantized modules"):
        save_quantized(tmp_path / "q", model, report)


@pytest.mark.parametrize("name", [n for n in names_of("compression") if n not in names_with("compression",
                                                                                         "calibration")])
def test_compressors_without_the_calibration_cap_fit_without_data(name):
    model, _ = make_compressor(name).fit(compressible_lm(), None)
    with torch.no_grad():
        assert torch.isfinite(model(calib_ids()[:1])).all()


@pytest.mark.parametrize("name", names_with("compression", "calibration"))
def test_compressors_with_the_calibration_cap_use_the_data(name):
    """Different calibration text gives a different compressed model (the data is read, not ignored)."""
    ids = calib_ids()
    a, _ = make_compressor(name).fit(compressible_lm(), ids)
    b, _ = make_compressor(name).fit(compressible_lm(), (ids * 7 + 3) % 61)
    with torch.no_grad():
        assert not torch.equal(a(ids[:2]), b(ids[:2]))
