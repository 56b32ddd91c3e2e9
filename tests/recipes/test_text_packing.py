"""``lmlab train lm --data.packing documents``: paragraphs packed with a block-causal mask, end to end."""

from __future__ import annotations

from pathlib import Path

from lmlab.cli.main import main
from lmlab.core.runtime import JsonlLog
from lmlab.recipes.text import DataConfig, text_documents

TEXT = Path(__file__).resolve().parents[1] / "fixtures" / "text" / "genesis_1.txt"


def test_paragraphs_are_the_documents_of_a_text_file():
    text = "one two\nthree\n\nfour\n  \t\nfive six\n\n\n"
    assert text_documents(DataConfig(source="x.txt"), "train", text) == ["one two\nthree", "four", "five six"]


def test_train_lm_on_packed_documents(tmp_path, capsys):
    words = TEXT.read_text(encoding="utf-8").split()
    text = tmp_path / "paragraphs.txt"  # paragraphs of 3 words (about 18 bytes): three share a row of 64
    text.write_text("\n\n".join(" ".join(words[i:i + 3]) for i in range(0, len(words), 3)), encoding="utf-8")
    run = tmp_path / "run"
    assert main(["train", "lm", "--data.source", str(text), "--data.tokenizer", "byte", "--data.packing",
                 "documents", "--data.seq-len", "64", "--data.batch-size", "4", "--data.val-fraction", "0.2",
                 "--model.dim", "32", "--model.n-layers", "1", "--model.n-heads", "2", "--model.max-seq-len", "64",
                 "--train.steps", "4", "--train.warmup-steps", "1", "--train.log-every", "1",
                 "--train.eval-batches", "2", "--set", f"train.run_dir={run}", "--set", "train.progress=false"]) == 0
    out = capsys.readouterr().out
    assert float(out.split("val_bpb:")[1].split()[0]) > 0
    steps = [r for r in JsonlLog(run / "metrics.jsonl").read() if "samples" in r]
    assert len(steps) == 4 and all(r["samples"] > 8 for r in steps)  # 4 rows, 2+ samples each
    assert (run / "model" / "model.safetensors").is_file()
    assert main(["train", "lm", "--data.packing", "bags"]) == 2
    assert "bags" in capsys.readouterr().err
