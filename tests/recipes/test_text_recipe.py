"""The text recipe as a user runs it: re-runs, resumes, changed settings, logs, progress, early config errors."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from lmlab.cli.main import main
from lmlab.core.checkpoint import CheckpointError
from lmlab.core.config import apply_overrides
from lmlab.core.runtime import JsonlLog, LineProgress
from lmlab.core.train import TrainConfig
from lmlab.core.transformer import TransformerConfig
from lmlab.recipes.text import DataConfig, TextJob, train_lm

TEXT = Path(__file__).resolve().parents[1] / "fixtures" / "text" / "genesis_1.txt"


def job(run_dir: Path, steps: int = 6, **data) -> TextJob:
    return TextJob(model=TransformerConfig(dim=16, n_layers=1, n_heads=2, max_seq_len=32),
                   train=TrainConfig(steps=steps, lr=3e-3, warmup_steps=1, log_every=1, ckpt_every=2,
                                     eval_batches=2, progress=False, run_dir=str(run_dir)),
                   data=DataConfig(source=str(TEXT), tokenizer="byte", seq_len=16, batch_size=4,
                                   val_fraction=0.2, **data))


def steps_logged(run_dir: Path) -> list[int]:
    return [r["step"] for r in JsonlLog(run_dir / "metrics.jsonl").read()]


def test_rerunning_a_finished_run_evaluates_and_saves_again(tmp_path):
    first = train_lm(job(tmp_path))
    again = train_lm(job(tmp_path))  # used to raise IndexError (no new history)
    assert again["steps"] == 6 and again["resumed_from"] == 6
    assert again["val_loss"] == pytest.approx(first["val_loss"])
    assert again["first_loss"] == first["first_loss"] and again["loss_drop"] == first["loss_drop"]
    # killed after the final checkpoint but before model/ was written: the re-run writes model/
    import shutil

    shutil.rmtree(tmp_path / "model")
    train_lm(job(tmp_path))
    assert (tmp_path / "model" / "model.safetensors").is_file()


def test_a_resumed_run_reports_the_whole_run(tmp_path, caplog, monkeypatch):
    from lmlab.core.train import Trainer

    whole = train_lm(job(tmp_path / "a"))
    step = Trainer.train_step

    def killed_at_5(self):
        if self.step == 4:  # after the step-4 checkpoint
            raise KeyboardInterrupt
        return step(self)

    monkeypatch.setattr(Trainer, "train_step", killed_at_5)
    with pytest.raises(KeyboardInterrupt):
        train_lm(job(tmp_path / "b"))
    monkeypatch.setattr(Trainer, "train_step", step)
    with caplog.at_level(logging.INFO, logger="lmlab"):
        resumed = train_lm(job(tmp_path / "b"))
    assert "resumed from step 4 of 6" in caplog.text
    assert resumed["resumed_from"] == 4 and resumed["first_loss"] == whole["first_loss"]
    assert resumed["loss_drop"] == whole["loss_drop"] and resumed["val_loss"] == whole["val_loss"]
    assert steps_logged(tmp_path / "b") == list(range(1, 7))


def test_resume_with_other_data_settings_is_refused(tmp_path):
    train_lm(job(tmp_path, steps=2))
    with pytest.raises(CheckpointError, match=r"data\.max_bytes \(0 -> 900\)"):
        train_lm(job(tmp_path, steps=4, max_bytes=900))


def test_a_run_killed_before_its_first_checkpoint_starts_a_clean_log(tmp_path):
    log = JsonlLog(tmp_path / "metrics.jsonl")
    for step in (1, 2, 3):  # what a killed first attempt left behind, without a checkpoint
        log.write({"step": step, "loss": 9.0})
    train_lm(job(tmp_path, steps=3))
    assert steps_logged(tmp_path) == [1, 2, 3]
    assert all(r["loss"] != 9.0 for r in log.read())


def test_a_torn_last_log_line_is_dropped_with_a_warning(tmp_path, caplog):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "lo')
    with caplog.at_level(logging.WARNING):
        assert JsonlLog(path).read() == [{"step": 1, "loss": 2.0}]
    assert "torn last line" in caplog.text and str(path) in caplog.text
    path.write_text('{"step": 1, "lo\n{"step": 2, "loss": 2.0}\n')
    with pytest.raises(ValueError, match=rf"{path}:1: not valid JSON"):
        JsonlLog(path).read()


def test_bad_training_settings_fail_before_any_data_work(capsys):
    # the data source does not exist: the steps error must come first (it is checked before data preparation)
    assert main(["train", "lm", "--train.steps", "-5", "--data.source", "/nonexistent/text.txt"]) == 2
    assert "TrainConfig.steps must be >= 1, got -5" in capsys.readouterr().err
    with pytest.raises(ValueError, match="lr must be > 0"):
        apply_overrides(TrainConfig(), ["lr=0"])


def test_a_binary_data_source_names_the_file(tmp_path, capsys):
    blob = tmp_path / "blob.txt"
    blob.write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff")
    assert main(["train", "lm", "--data.source", str(blob), "--train.steps", "1"]) == 2
    assert f"{blob}: not a UTF-8 text file" in capsys.readouterr().err


def test_progress_in_a_log_is_a_line_every_interval(capsys):
    bar = LineProgress(total=10, desc="train", every=0.0)
    bar.update(4)
    bar.set_postfix(loss="2.000")
    bar.update(1)
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[0].startswith("train: 4/10") and "ETA" in lines[0]
    assert lines[1].startswith("train: 5/10, loss 2.000")


def test_generate_reads_what_compress_wrote(tmp_path, capsys):
    train_lm(job(tmp_path / "run", steps=2))
    assert main(["compress", "--method", "rtn", "--bits", "w8a16", "--model", str(tmp_path / "run"),
                 "--calib", "none", "--out", str(tmp_path / "q")]) == 0
    assert main(["generate", "--model", str(tmp_path / "q"), "--prompt", "In the", "--max-new-tokens", "4"]) == 0
    assert "new_tokens" in capsys.readouterr().out
    assert json.loads((tmp_path / "q" / "meta.json").read_text())["kind"] == "lmlab-quantized"
