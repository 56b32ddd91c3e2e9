"""``lmlab.recipes.adapter``: an adapter trained on a frozen model (an lmlab run folder, a Hugging Face folder)
through the shared Trainer, saved so ``lmlab.load`` rebuilds base + adapter, resumed exactly, bad input named."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import lmlab
from lmlab.adapters.layers import Config
from lmlab.adapters.tuner import AdaptedModel
from lmlab.core.checkpoint import CheckpointError, OutputFolderError, save_model
from lmlab.core.config import ConfigError, from_dict, to_dict
from lmlab.core.tokenizer import ByteTokenizer
from lmlab.core.train import TrainConfig
from lmlab.core.transformer import Transformer, TransformerConfig
from lmlab.recipes.adapter import AdapterData, AdapterJob, fit_adapter, train_adapter

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "text"


@pytest.fixture
def text(tmp_path) -> str:
    """The shipped text fixtures as one UTF-8 file (~11 kB)."""
    path = tmp_path / "text.txt"
    path.write_text("\n\n".join(p.read_text() for p in sorted(FIXTURES.glob("*.txt"))))
    return str(path)


def write_base(folder: Path, vocab: int = 259, tokenizer: bool = True) -> str:
    """A run folder (model/ + tokenizer.json) of a tiny random lmlab Transformer, as `lmlab train lm` writes."""
    torch.manual_seed(0)
    model = Transformer(TransformerConfig(vocab_size=vocab, dim=32, n_layers=2, n_heads=4, n_kv_heads=2,
                                          max_seq_len=64))
    save_model(folder / "model", model, to_dict(model.cfg))
    if tokenizer:
        ByteTokenizer(["<bos>", "<eos>", "<pad>"]).save(folder / "model" / "tokenizer.json")
    return str(folder)


def write_hf_llama(folder: Path) -> str:
    """A tiny random LlamaForCausalLM with a byte-level BPE tokenizer, saved with save_pretrained."""
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tk = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    transformers.PreTrainedTokenizerFast(tokenizer_object=tk).save_pretrained(folder)
    cfg = transformers.LlamaConfig(vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(cfg).save_pretrained(folder)
    return str(folder)


def job(model: str, text: str, out: Path | str = "", steps: int = 6, **adapter) -> AdapterJob:
    return AdapterJob(model=model, adapter=Config(**{"method": "lora", "rank": 4, **adapter}),
                      train=TrainConfig(steps=steps, lr=1e-2, warmup_steps=1, schedule="constant", log_every=1,
                                        progress=False),
                      data=AdapterData(source=text, seq_len=32, batch_size=4, val_fraction=0.2), out=str(out))


IDS = torch.randint(0, 256, (2, 20), generator=torch.Generator().manual_seed(3))


def base_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k.replace(".base.", "."): v for k, v in model.state_dict().items() if ".adapters." not in k}


@pytest.mark.parametrize("method", ["lora", "malora"])
def test_trains_an_lmlab_run_and_lmlab_load_rebuilds_it(tmp_path, text, method):
    base = write_base(tmp_path / "base")
    model, out = fit_adapter(job(base, text, tmp_path / "out", rank=4, method=method))
    assert out["val_loss_after"] < out["val_loss_before"] - 0.05, out  # 6 steps at lr 1e-2 on repeated text
    assert out["steps"] == 6 and out["trainable_params"] == model.counts()["trainable"] > 0
    assert out["total_params"] == out["trainable_params"] + sum(p.numel() for p in lmlab.load(base)[0].parameters())
    loaded, tok, meta = lmlab.load(tmp_path / "out")  # the run folder: its model/ is the adapter
    assert isinstance(loaded, AdaptedModel) and meta["kind"] == "lmlab-adapter" and isinstance(tok, ByteTokenizer)
    assert meta["base"] == str(Path(base).resolve()) and meta["config"]["method"] == method
    assert torch.equal(loaded(IDS), model(IDS))
    # the base stayed frozen: its weights are those saved in the base folder
    plain = lmlab.load(base)[0]
    assert base_weights(loaded.base).keys() == plain.state_dict().keys()
    assert all(torch.equal(v, plain.state_dict()[k]) for k, v in base_weights(loaded.base).items())
    assert not torch.equal(loaded(IDS), plain(IDS))  # ... and the adapter changed the model
    saved = json.loads((tmp_path / "out" / "job.json").read_text())
    assert saved["adapter"]["method"] == method and (tmp_path / "out" / "metrics.jsonl").is_file()


def test_trains_a_hugging_face_llama_folder_with_its_tokenizer(tmp_path, text):
    from lmlab.core.hf import HFCausalLM

    hf = write_hf_llama(tmp_path / "llama")
    model, out = fit_adapter(job(hf, text, tmp_path / "out", steps=4))
    hf_tok = lmlab.load(hf)[1]
    val_text = Path(text).read_text()[int(len(Path(text).read_text()) * 0.8):]
    assert out["val_tokens"] == len(hf_tok.encode(val_text))  # the base model's tokenizer, not bytes
    assert out["val_loss_after"] != out["val_loss_before"]
    loaded, tok, meta = lmlab.load(tmp_path / "out")
    assert isinstance(loaded.base, HFCausalLM) and tok.fingerprint == hf_tok.fingerprint
    assert len(meta["targets"]) == 14 and all(t.startswith("model.model.layers.") for t in meta["targets"])
    torch.testing.assert_close(loaded(IDS), model(IDS), rtol=0, atol=0)


def test_a_model_without_tokenizer_trains_on_bytes_or_is_refused(tmp_path, text):
    base = write_base(tmp_path / "base", tokenizer=False)
    _, out = fit_adapter(job(base, text, tmp_path / "out", steps=2))
    assert out["val_tokens"] == len(Path(text).read_text()[int(len(Path(text).read_text()) * 0.8):].encode())
    assert isinstance(lmlab.load(tmp_path / "out")[1], ByteTokenizer)  # saved beside the adapter
    small = write_base(tmp_path / "small", vocab=61, tokenizer=False)
    with pytest.raises(ValueError, match="no tokenizer and a vocabulary of 61 < 256"):
        train_adapter(job(small, text))


def test_resume_is_exact_and_another_adapter_is_refused(tmp_path, text):
    """Four steps, then the same job with six steps in the same folder, equals six steps in one go (constant lr:
    the schedule does not depend on the step count)."""
    straight_model, straight = fit_adapter(job(write_base(tmp_path / "base"), text, tmp_path / "a", steps=6,
                                                method="malora"))
    base = str(tmp_path / "base")
    fit_adapter(job(base, text, tmp_path / "b", steps=4, method="malora"))
    resumed_model, resumed = fit_adapter(job(base, text, tmp_path / "b", steps=6, method="malora"))
    assert resumed["resumed_from"] == 4 and resumed["steps"] == 6

    def losses(folder: Path) -> list[tuple[int, float]]:
        lines = (folder / "metrics.jsonl").read_text().splitlines()
        return [(r["step"], r["loss"]) for r in map(json.loads, lines)]

    assert losses(tmp_path / "b") == losses(tmp_path / "a") and len(losses(tmp_path / "a")) == 6
    assert resumed["val_loss_after"] == straight["val_loss_after"]
    assert torch.equal(resumed_model(IDS), straight_model(IDS))
    with pytest.raises(CheckpointError, match=r"cannot resume .*adapter\.rank \(4 -> 8\)"):
        train_adapter(job(base, text, tmp_path / "b", steps=8, method="malora", rank=8))


def test_bad_input_is_named(tmp_path, text):
    base = write_base(tmp_path / "base")
    with pytest.raises(ValueError, match="adapter method 'dora' is unknown; expected one of lora"):
        from_dict(AdapterJob, {"model": base, "adapter": {"method": "dora"}})
    with pytest.raises(ValueError, match="adapter rank must be > 0, got 0"):
        from_dict(AdapterJob, {"model": base, "adapter": {"rank": 0}})
    with pytest.raises(ConfigError, match="adapter.target_modules"):
        from_dict(AdapterJob, {"model": base, "adapter": {"target_modules": 5}})
    with pytest.raises(ValueError, match=r"target_modules \['query'\] match no linear module.*q_proj"):
        train_adapter(job(base, text, target_modules=["query"]))
    with pytest.raises(ValueError, match="--model is required"):
        train_adapter(job("", text))
    with pytest.raises(ValueError, match="neither an lmlab folder"):
        train_adapter(job(str(tmp_path / "nowhere"), text))
    bad = job(base, text)
    bad.data.seq_len = 100
    with pytest.raises(ValueError, match=r"data.seq_len must be in 1..64 \(the model's context\), got 100"):
        train_adapter(bad)
    short = tmp_path / "short.txt"
    short.write_text("In the beginning God created the heavens and the earth.")
    with pytest.raises(ValueError, match="held-out text is 11 tokens, fewer than data.seq_len"):
        train_adapter(job(base, str(short)))
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(OutputFolderError, match="notes.txt"):
        train_adapter(job(base, text, tmp_path / "busy"))
    with pytest.raises(OutputFolderError, match="run folder of another recipe"):
        train_adapter(job(base, text, base))  # the base run's own folder: left as it was
    assert not (Path(base) / "job.json").exists() and lmlab.load(base)[2]["kind"] == "lmlab-transformer"
    two = job(base, text, tmp_path / "x")
    two.train.run_dir = str(tmp_path / "y")
    with pytest.raises(ValueError, match="name two folders"):
        train_adapter(two)


def test_unload_gives_back_plain_linears(tmp_path, text):
    """``AdaptedModel.unload`` (what ``merge_adapter`` saves): plain nn.Linear layers; merged first, the base
    computes base + adapter; unmerged, the base alone. A routed adapter refuses to merge."""
    from lmlab.adapters.tuner import AdapterLinear

    base = write_base(tmp_path / "base")
    trained, _ = fit_adapter(job(base, text, steps=3))
    want = trained(IDS)
    plain = trained.merge_and_unload()
    assert isinstance(plain, Transformer) and not any(isinstance(m, AdapterLinear) for m in plain.modules())
    assert set(plain.state_dict()) == set(lmlab.load(base)[0].state_dict())
    torch.testing.assert_close(plain(IDS), want, rtol=0, atol=1e-5)
    assert trained.configs == {} and trained.active is None
    again, _ = fit_adapter(job(base, text, steps=3))
    torch.testing.assert_close(again.unload()(IDS), lmlab.load(base)[0](IDS), rtol=0, atol=0)
    routed, _ = fit_adapter(job(base, text, steps=1, method="molora"))
    with pytest.raises(ValueError, match="routes each token"):
        routed.merge_and_unload()
