import subprocess
import sys

import pytest

from lmlab.cli.main import main


def test_list_does_not_import_torch():
    code = ("import sys; from lmlab.cli.main import main; main(['list']); "
            "assert 'torch' not in sys.modules, 'lmlab list imported torch'")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "causal_lm" in r.stdout and "objectives" in r.stdout


def test_info_and_errors(capsys):
    assert main(["info", "causal_lm"]) == 0
    assert "ignore_index" in capsys.readouterr().out
    assert main(["info", "no_such_method"]) == 2
    assert "no_such_method" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["frobnicate"])


def test_train_cli_on_a_text_file(tmp_path, capsys):
    text = tmp_path / "t.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 200)
    rc = main(["train", "lm", "--data.source", str(text), "--data.tokenizer", "byte", "--data.seq-len", "32",
               "--data.batch-size", "4", "--model.dim", "32", "--model.n-layers", "1", "--model.n-heads", "2",
               "--train.steps", "30", "--train.lr", "3e-3", "--train.warmup-steps", "2",
               "--set", f"train.run_dir={tmp_path / 'run'}", "--set", "train.progress=false"])
    assert rc == 0
    out = capsys.readouterr().out
    bpb = float(out.split("val_bpb:")[1].split()[0])
    assert bpb < 6.0  # 30 steps of a byte model on repetitive text beat the uniform 8 bits per byte
    assert (tmp_path / "run" / "model" / "model.safetensors").is_file()
    assert main(["train", "lm", "--set", "train.nope=1"]) == 2
