"""``lmlab train acdit`` and ``lmlab sample``: the verbs end to end through the console entry point."""

from __future__ import annotations

import json

import pytest

from lmlab.cli.main import main


def test_train_acdit_then_sample(tmp_path, capsys):
    pil = pytest.importorskip("PIL.Image")
    run = tmp_path / "run"
    assert main(["train", "acdit", "--model.block-size", "4", "--train.run-dir", str(run), "--model.dim", "32",
                 "--model.n-layers", "1", "--model.n-heads", "2", "--batch-size", "16", "--train.steps", "3",
                 "--train.warmup-steps", "1", "--train.progress", "false", "--eval-samples", "20",
                 "--sample-steps", "2", "--classifier-steps", "5"]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["steps"] == 3 and 0 <= metrics["class_consistency"] <= 1 and metrics["fd"] >= 0
    assert (run / "samples.png").is_file() and (run / "model" / "model.safetensors").is_file()
    out = tmp_path / "grid.png"
    assert main(["sample", "--model", str(run), "--class", "3", "--n", "4", "--steps", "2", "--out", str(out),
                 "--scale", "2"]) == 0
    with pil.open(out) as im:
        assert im.size == (4 * 17 + 1, 17 + 1)  # 4 images of 8x8 upscaled 2x, 1-pixel gaps
    capsys.readouterr()
    assert main(["sample", "--model", str(run), "--class", "10", "--out", str(out)]) == 2
    assert "class id 10 out of range" in capsys.readouterr().err
    assert main(["train", "acdit", "--model.block-size", "5", "--train.steps", "1"]) == 2
    assert "divide the sequence length" in capsys.readouterr().err


def test_every_recipe_lists_its_options(capsys):
    from lmlab.recipes import REGISTRY

    for name in REGISTRY:
        with pytest.raises(SystemExit) as e:
            main(["train", name, "--help"])
        assert e.value.code == 0
        text = capsys.readouterr().out
        assert "--train.lr" in text and "--config" in text and "--set" in text
