"""``lmlab train adapter``, ``lmlab adapter info`` and ``lmlab adapter merge`` through the console entry point."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import lmlab
from lmlab.cli.main import main
from lmlab.core.checkpoint import save_model
from lmlab.core.config import to_dict
from lmlab.core.tokenizer import ByteTokenizer
from lmlab.core.transformer import Transformer, TransformerConfig

TEXT = Path(__file__).resolve().parents[1] / "fixtures" / "text" / "genesis_1.txt"
IDS = torch.randint(0, 256, (2, 20), generator=torch.Generator().manual_seed(4))
QUICK = ["--data.source", str(TEXT), "--data.seq-len", "24", "--data.batch-size", "4", "--data.val-fraction", "0.2",
         "--train.steps", "4", "--train.lr", "1e-2", "--train.warmup-steps", "1", "--train.progress", "false"]


@pytest.fixture
def base(tmp_path) -> str:
    """A run folder of a tiny random lmlab Transformer with its byte tokenizer."""
    torch.manual_seed(0)
    model = Transformer(TransformerConfig(vocab_size=259, dim=32, n_layers=2, n_heads=4, n_kv_heads=2,
                                          max_seq_len=64))
    save_model(tmp_path / "base" / "model", model, to_dict(model.cfg))
    ByteTokenizer(["<bos>", "<eos>", "<pad>"]).save(tmp_path / "base" / "model" / "tokenizer.json")
    return str(tmp_path / "base")


def train(model: str, out: Path, *flags: str) -> int:
    return main(["train", "adapter", "--model", model, *flags, *QUICK, "--out", str(out)])


def test_train_info_merge_generate(tmp_path, base, capsys):
    out = tmp_path / "lora"
    assert train(base, out, "--adapter.method", "lora", "--adapter.rank", "4") == 0
    printed = capsys.readouterr().out
    assert "val_loss_before" in printed and "val_loss_after" in printed and "trainable_params" in printed
    adapted, tok, _ = lmlab.load(out)
    counts = adapted.counts()

    assert main(["adapter", "info", str(out)]) == 0
    info = capsys.readouterr().out
    assert "method: lora" in info and f"base: {Path(base).resolve()}" in info
    assert f"params: {counts['trainable']} trainable of {counts['total']}" in info
    assert "14 linear layers: layers.0.attn.q_proj" in info and "rank: 4" in info
    assert main(["adapter", "info", str(out / "model"), "--json"]) == 0
    as_json = json.loads(capsys.readouterr().out)
    assert (as_json["trainable"], as_json["total"]) == (counts["trainable"], counts["total"])
    assert as_json["config"]["rank"] == 4 and len(as_json["targets"]) == 14

    merged = tmp_path / "merged"
    assert main(["adapter", "merge", str(out), "--out", str(merged)]) == 0
    assert "merged lora into 14 layers" in capsys.readouterr().out
    plain, merged_tok, meta = lmlab.load(merged)
    assert meta["kind"] == "lmlab-transformer" and merged_tok.fingerprint == tok.fingerprint
    torch.testing.assert_close(plain(IDS), adapted(IDS), rtol=0, atol=1e-5)
    base_logits = lmlab.load(base)[0](IDS)
    assert (plain(IDS) - base_logits).abs().max() > 1e-3  # the merge folded a trained adapter in

    assert main(["generate", "--model", str(out), "--prompt", "In the", "--max-new-tokens", "3"]) == 0
    assert "new_tokens" in capsys.readouterr().out


def test_merge_a_hugging_face_base_saves_a_plain_hugging_face_folder(tmp_path, capsys):
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    from lmlab.core.hf import HFCausalLM

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tk = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    hf = tmp_path / "llama"
    transformers.PreTrainedTokenizerFast(tokenizer_object=tk).save_pretrained(hf)
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128)).save_pretrained(hf)
    out, merged = tmp_path / "ad", tmp_path / "merged"
    assert train(str(hf), out, "--adapter.rank", "4", "--adapter.target-modules", '["q_proj", "v_proj"]') == 0
    assert main(["adapter", "merge", str(out), "--out", str(merged)]) == 0
    capsys.readouterr()
    assert (merged / "config.json").is_file() and not (merged / "meta.json").exists()
    plain, tok, meta = lmlab.load(merged)
    adapted = lmlab.load(out)[0]
    assert meta["kind"] == "hf" and isinstance(plain, HFCausalLM) and tok is not None
    assert not any(".base." in k or "adapters" in k for k in plain.state_dict())
    torch.testing.assert_close(plain(IDS), adapted(IDS), rtol=0, atol=1e-5)
    assert (plain(IDS) - lmlab.load(hf)[0](IDS)).abs().max() > 1e-3
    assert main(["adapter", "merge", str(out), "--out", str(merged)]) == 2  # not lmlab's own folder: refused
    assert "merged is not empty and holds files lmlab did not write; merge into a new folder" in capsys.readouterr().err


def test_refusals_exit_non_zero_with_the_reason(tmp_path, base, capsys):
    routed = tmp_path / "malora"
    assert train(base, routed, "--adapter.method", "malora", "--train.steps", "1") == 0
    capsys.readouterr()
    assert main(["adapter", "merge", str(routed), "--out", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err
    assert "cannot merge adapter 'default': malora with 4 experts routes each token" in err
    assert not (tmp_path / "m").exists()
    assert main(["adapter", "info", base]) == 2
    assert "holds kind 'lmlab-transformer', not an adapter" in capsys.readouterr().err
    assert main(["adapter", "info", str(tmp_path / "nowhere")]) == 2
    assert "holds no adapter" in capsys.readouterr().err
    assert train(base, tmp_path / "x", "--adapter.method", "dora") == 2
    assert "adapter method 'dora' is unknown; expected one of lora, molora, hydralora, malora" in \
        capsys.readouterr().err
    assert train(base, tmp_path / "x", "--adapter.rank", "0") == 2
    assert "adapter rank must be > 0, got 0" in capsys.readouterr().err
    assert train(base, tmp_path / "x", "--adapter.target-modules", '["wq"]') == 2
    assert "match no linear module" in capsys.readouterr().err
