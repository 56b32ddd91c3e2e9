"""``lmlab compress`` on a tiny lmlab checkpoint with a text file: quantize, save, reload, bad input."""

from pathlib import Path

import pytest
import torch

from lmlab.cli.main import main
from lmlab.compression.saving import load_quantized
from lmlab.core.checkpoint import save_model
from lmlab.core.config import to_dict
from lmlab.core.tokenizer import ByteTokenizer
from lmlab.core.transformer import Transformer, TransformerConfig

TEXT = Path(__file__).resolve().parents[1] / "fixtures" / "text" / "genesis_1.txt"


def compress(argv: list[str]) -> int:
    return main(["compress", *argv])


@pytest.fixture
def checkpoint(tmp_path):
    tok = ByteTokenizer()
    cfg = TransformerConfig(vocab_size=tok.vocab_size, dim=32, n_layers=2, n_heads=4, max_seq_len=128)
    torch.manual_seed(0)
    save_model(tmp_path / "run" / "model", Transformer(cfg), to_dict(cfg))
    tok.save(tmp_path / "run" / "model" / "tokenizer.json")
    return tmp_path / "run"


def test_compress_flatquant_from_checkpoint_and_text(checkpoint, tmp_path, capsys):
    out = tmp_path / "q"
    rc = compress(["--method", "flatquant", "--bits", "w4a4kv4", "--model", str(checkpoint),
                  "--calib", str(TEXT),
                  "--out", str(out), "--set", "nsamples=4", "--set", "seq_len=32", "--set", "epochs=1",
                  "--eval", "2", "--eval-len", "32"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "perplexity before" in printed and "perplexity after" in printed and "2 blocks" in printed
    model, meta = load_quantized(out)
    assert meta["report"]["settings"]["bits"] == "w4a4kv4" and (out / "tokenizer.json").is_file()
    assert torch.isfinite(model(torch.randint(0, 256, (1, 16)))).all()


def test_compress_data_free_method_without_calibration(checkpoint, tmp_path):
    rc = compress(["--method", "hadamard", "--bits", "w4a16", "--model", str(checkpoint / "model"),
                  "--calib", "none", "--out", str(tmp_path / "h")])
    assert rc == 0
    assert load_quantized(tmp_path / "h")[1]["report"]["layers"] == []


def test_compress_bad_input(checkpoint, tmp_path, capsys):
    cases = [
        (["--method", "rtn", "--bits", "w9", "--model", str(checkpoint), "--calib", "none"],
         "unsupported weight bit width 9"),
        # 1.4 KB of text cannot give 64 windows of 512 tokens
        (["--method", "rtn", "--model", str(checkpoint), "--calib", str(TEXT), "--nsamples", "64", "--eval", "64"],
         "too short"),
        (["--method", "rtn", "--model", str(tmp_path / "nothing"), "--calib", "none"], "neither an lmlab folder"),
        (["--method", "gptq9", "--model", str(checkpoint)], "unknown compression method"),
    ]
    for argv, msg in cases:
        assert compress([*argv, "--out", str(tmp_path / "x")]) == 2
        assert msg in capsys.readouterr().err


def test_compress_a_hugging_face_llama_folder(tmp_path, capsys):
    """--model pointing at a Hugging Face folder (config.json + safetensors + tokenizer): a random tiny
    LlamaForCausalLM with a byte-level tokenizer, quantized through the Llama mapping table and reloaded."""
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tk = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    folder = tmp_path / "llama"
    transformers.PreTrainedTokenizerFast(tokenizer_object=tk).save_pretrained(folder)
    cfg = transformers.LlamaConfig(vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(cfg).save_pretrained(folder)
    out = tmp_path / "q"
    assert compress(["--method", "rtn", "--bits", "w4a8", "--model", str(folder), "--calib", str(TEXT),
                     "--out", str(out), "--nsamples", "4", "--seq-len", "32", "--eval", "2", "--eval-len", "32"]) == 0
    printed = capsys.readouterr().out
    assert "perplexity after" in printed and "vs full precision" in printed
    import lmlab

    reloaded, tok, meta2 = lmlab.load(out)  # everything lmlab writes, lmlab.load reads
    assert meta2["kind"] == "lmlab-quantized" and tok is not None
    model, meta = load_quantized(out)
    assert meta["report"]["settings"]["bits"] == "w4a8"
    ids = torch.randint(0, 256, (1, 12))
    logits = model(ids)
    logits = getattr(logits, "logits", logits)
    assert logits.shape == (1, 12, 256) and torch.isfinite(logits).all()


def rtn(model, out, *extra: str) -> int:
    return compress(["--method", "rtn", "--bits", "w4a16", "--model", str(model), "--calib", "none",
                     "--out", str(out), *extra])


def test_compress_refuses_a_folder_it_did_not_write_and_overwrite_removes_nothing(checkpoint, tmp_path, capsys):
    import lmlab

    out = tmp_path / "out"
    (out / "src").mkdir(parents=True)
    (out / "notes.txt").write_text("x")
    assert rtn(checkpoint, out) == 2
    err = capsys.readouterr().err
    assert f"{out} already holds files lmlab did not write (notes.txt, src)" in err
    assert "--out" in err and "--overwrite" in err and "Traceback" not in err
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt", "src"]
    assert rtn(checkpoint, out, "--overwrite") == 0
    assert (out / "notes.txt").read_text() == "x" and (out / "src").is_dir()
    assert lmlab.load(out)[2]["kind"] == "lmlab-quantized"
    assert rtn(checkpoint, out) == 0  # lmlab's output beside other files: rewritten file by file
    assert (out / "notes.txt").read_text() == "x" and (out / "src").is_dir()


def test_compress_into_the_source_training_run_keeps_the_run(checkpoint, capsys):
    """--out the run folder it reads (model/, job.json, metrics.jsonl): refused; with --overwrite the quantized
    model is written beside the run, which still loads."""
    import lmlab

    (checkpoint / "job.json").write_text("{}")
    (checkpoint / "metrics.jsonl").write_text('{"step": 1}\n')
    before = lmlab.load(checkpoint / "model")[0]
    assert rtn(checkpoint, checkpoint) == 2
    assert "already holds files lmlab did not write (job.json, metrics.jsonl, model)" in capsys.readouterr().err
    assert rtn(checkpoint, checkpoint, "--overwrite") == 0
    assert (checkpoint / "job.json").read_text() == "{}" and (checkpoint / "metrics.jsonl").is_file()
    after, _, meta = lmlab.load(checkpoint / "model")
    ids = torch.randint(0, 256, (1, 9))
    assert meta["kind"] == "lmlab-transformer" and torch.equal(after(ids), before(ids))
    assert lmlab.load(checkpoint)[2]["kind"] == "lmlab-quantized"


def test_compress_replaces_its_own_previous_output(checkpoint, tmp_path):
    out = tmp_path / "q"
    assert rtn(checkpoint, out) == 0
    assert compress(["--method", "rtn", "--bits", "w8a16", "--model", str(checkpoint), "--calib", "none",
                     "--out", str(out)]) == 0
    assert load_quantized(out)[1]["report"]["settings"]["bits"] == "w8a16"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q", "run"]


def test_compress_out_under_a_file_names_the_file(checkpoint, tmp_path, capsys):
    (tmp_path / "README.md").write_text("read me")
    assert rtn(checkpoint, tmp_path / "README.md" / "x") == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'README.md'} is a file, not a folder" in err and "Traceback" not in err
    assert (tmp_path / "README.md").read_text() == "read me"
