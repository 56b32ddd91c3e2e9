"""lmlab.load: one loader for every folder lmlab writes, Hugging Face folders and old checkpoints."""

from __future__ import annotations

import json

import pytest
import torch

import lmlab
from lmlab.core.checkpoint import CheckpointError, save, save_model
from lmlab.core.config import to_dict
from lmlab.core.tokenizer import ByteTokenizer
from lmlab.core.transformer import Transformer, TransformerConfig

CFG = TransformerConfig(vocab_size=259, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=64)
IDS = torch.randint(0, 259, (2, 9), generator=torch.Generator().manual_seed(0))


@pytest.fixture
def model():
    torch.manual_seed(0)
    return Transformer(CFG).eval()


def test_run_folder_with_tokenizer(tmp_path, model):
    save_model(tmp_path / "run" / "model", model, to_dict(CFG))
    ByteTokenizer(("<bos>", "<eos>", "<pad>")).save(tmp_path / "run" / "model" / "tokenizer.json")
    for spec in (tmp_path / "run", tmp_path / "run" / "model", str(tmp_path / "run")):
        loaded, tok, meta = lmlab.load(spec)
        assert meta["kind"] == "lmlab-transformer" and not loaded.training
        assert torch.equal(loaded(IDS), model(IDS))
        assert tok.decode(tok.encode("hi")) == "hi"


def test_checkpoints_without_kind_still_load(tmp_path, model):
    save(tmp_path / "old", {"model": model.state_dict()}, {"config": to_dict(CFG), "kind": "x"})
    meta_file = tmp_path / "old" / "meta.json"
    meta_file.write_text(json.dumps({"config": to_dict(CFG)}))  # as written before kind was mandatory
    loaded, tok, meta = lmlab.load(tmp_path / "old")
    assert tok is None and meta["kind"] == "lmlab-transformer"
    assert torch.equal(loaded(IDS), model(IDS))


def test_kind_is_mandatory_when_saving(tmp_path, model):
    with pytest.raises(ValueError, match="kind"):
        save(tmp_path / "x", {"model": model.state_dict()}, {"config": {}})
    with pytest.raises(ValueError, match="checkpoint_kind"):
        save_model(tmp_path / "y", torch.nn.Linear(2, 2), {})


def test_quantized_folder_loads(tmp_path, model):
    from lmlab.compression.rtn import RTN, Config
    from lmlab.compression.saving import save_quantized

    q, report = RTN(Config(bits="w4a16")).fit(model, None)
    save_quantized(tmp_path / "q", q, report)
    loaded, _, meta = lmlab.load(tmp_path / "q")
    assert meta["kind"] == "lmlab-quantized"
    assert torch.equal(loaded(IDS), q(IDS))


def test_acdit_folder_loads(tmp_path):
    from lmlab.models.acdit import ACDiT, Config

    torch.manual_seed(0)
    net = ACDiT(Config(dim=32, n_layers=1, n_heads=2, block_size=16)).eval()  # one block: no context
    save_model(tmp_path / "a", net, to_dict(net.cfg))
    loaded, _, meta = lmlab.load(tmp_path / "a")
    x, t, y = torch.randn(2, 16, 4), torch.zeros(2, 1, dtype=torch.long), torch.tensor([1, 2])
    assert meta["kind"] == "lmlab-acdit" and torch.equal(loaded(x, t, y), net(x, t, y))


def test_hugging_face_folder_loads(tmp_path, model):
    from lmlab.core.hf import HFCausalLM, llama_from_transformer

    llama_from_transformer(model).save_pretrained(tmp_path / "hf")
    loaded, tok, meta = lmlab.load(tmp_path / "hf")
    assert isinstance(loaded, HFCausalLM) and meta["kind"] == "hf" and tok is None
    assert torch.allclose(loaded(IDS), model(IDS), atol=1e-5)


def test_device_and_dtype(tmp_path, model):
    save_model(tmp_path / "m", model, to_dict(CFG))
    loaded, _, _ = lmlab.load(tmp_path / "m", device="cpu", dtype=torch.float64)
    assert loaded.device.type == "cpu" and loaded.tok_emb.weight.dtype == torch.float64


def test_refusals_name_what_was_expected(tmp_path, model):
    with pytest.raises(ValueError, match="neither an lmlab folder"):
        lmlab.load(tmp_path / "nowhere")
    save(tmp_path / "ck", {"model": model.state_dict()}, {"kind": "lmlab-trainer", "config": to_dict(CFG)})
    with pytest.raises(CheckpointError, match="training checkpoint"):
        lmlab.load(tmp_path / "ck")
    save(tmp_path / "alien", {"model": model.state_dict()}, {"kind": "someone-else"})
    with pytest.raises(CheckpointError, match="someone-else"):
        lmlab.load(tmp_path / "alien")
