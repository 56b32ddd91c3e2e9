"""Task recipe: presets, batched cached greedy == recomputation, train -> eval round trip, the CLI verbs."""

import dataclasses

import pytest
import torch

from lmlab.core.train import TrainConfig
from lmlab.core.transformer import Transformer, TransformerConfig
from lmlab.decoding.masked import Config as DecodeConfig
from lmlab.decoding.masked import masked_decode
from lmlab.decoding.reference import greedy_fill
from lmlab.recipes import tasks as ev
from lmlab.tasks.encoding import TaskCodec


@pytest.mark.parametrize("preset", list(ev.TASKS))
def test_every_preset_builds_and_generates(preset):
    task = ev.build_task(preset)
    (example,) = task.generate(1, seed=0)
    assert task.verify(example.prompt, example.target)


def test_presets_and_overrides_build_tasks():
    assert ev.build_task("countdown4").cfg.n_numbers == 4
    task = ev.build_task("sudoku4:blanks=6")
    assert task.cfg.size == 4 and task.cfg.blanks == 6
    assert ev.build_task("planning:distance=3,branches=3").cfg.branches == 3
    with pytest.raises(ValueError, match="unknown task 'chess'"):
        ev.build_task("chess")
    with pytest.raises(ValueError, match="blanks"):
        ev.build_task("sudoku4:blanks=15")


def test_cached_greedy_equals_greedy_by_recomputation():
    task = ev.build_task("countdown3")
    examples = task.generate(6, seed=0)  # prompts of several lengths: rows are grouped by length
    codec = TaskCodec.fit(task.alphabet, examples)
    torch.manual_seed(0)
    model = Transformer(TransformerConfig(vocab_size=codec.vocab_size, dim=32, n_layers=2, n_heads=4,
                                          max_seq_len=codec.seq_len)).eval()
    with torch.no_grad():
        model.tok_emb.weight.normal_(0, 1)  # peaked logits: no near-ties
    ids, maskable = codec.encode_prompts([e.prompt for e in examples])
    out, calls = greedy_fill(model, ids, maskable, codec.eos_id, stop_at_eos=False)
    ref = ids.clone()
    with torch.no_grad():
        for b in range(len(examples)):
            p = int((~maskable[b]).sum())
            for i in range(p, codec.seq_len):
                ref[b, i] = model(ref[b:b + 1, :i])[0, -1].argmax()
    assert torch.equal(out, ref) and calls >= codec.target_len


@pytest.mark.parametrize("objective", ["mgdm", "causal_lm"])
def test_train_then_eval_round_trip(tmp_path, objective):
    data = ev.TaskDataConfig(n_train=64, n_test=16, batch_size=8, decode_steps=4)
    run = ev.train_on_task(objective, "planning", TransformerConfig(dim=16, n_layers=1, n_heads=2),
                           TrainConfig(steps=3, warmup_steps=1, progress=False, run_dir=str(tmp_path)), data)
    assert run["model"].cfg.mask == ("bidirectional" if objective == "mgdm" else "causal")
    assert 0.0 <= ev.accuracy(run["model"], run["task"], run["codec"], run["test"]) <= 1.0
    mode, rows = ev.evaluate_run(tmp_path, n=5, decode=DecodeConfig(steps=2))
    assert rows[0]["task"] == "planning" and rows[0]["n"] == 5 and 0.0 <= rows[0]["accuracy"] <= 1.0
    model, codec, spec = ev.load_run(tmp_path)
    assert spec == "planning" and dataclasses.asdict(model.cfg) == dataclasses.asdict(run["model"].cfg)


def test_lmlab_train_task_then_eval_reads_the_run(tmp_path, capsys):
    from lmlab.cli.main import main

    run_dir = tmp_path / "run"
    code = main(["train", "task", "--task", "planning2", "--objective", "mgdm", "--model.dim", "16",
                 "--model.n-heads", "2", "--train.steps", "3", "--train.warmup-steps", "1", "--train.progress", "false",
                 "--train.run-dir", str(run_dir), "--task-data.n-train", "40", "--task-data.n-test", "8",
                 "--task-data.decode-steps", "2"])
    out = capsys.readouterr().out
    assert code == 0 and "accuracy" in out and "steps: 3" in out
    assert main(["eval", "--model", str(run_dir), "--n", "5", "--decode.steps", "2", "--decode.order", "random",
                 "--task", "planning2", "--task", "planning2:branches=2"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert "masked decoding T=2 random linear remask=False" in table[0]
    assert [row.split()[:2] for row in table[2:]] == [["planning2", "5"], ["planning2:branches=2", "5"]]
    assert main(["eval", "--model", str(run_dir), "--decode.order", "sideways"]) == 2
    assert "sideways" in capsys.readouterr().err
    assert main(["train", "task", "--task", "chess", "--train.steps", "1"]) == 2
    assert "unknown task 'chess'" in capsys.readouterr().err


def test_train_task_is_what_lmlab_train_task_calls(tmp_path):
    from lmlab.recipes import REGISTRY

    assert REGISTRY.get("task") is ev.train_task and REGISTRY.config("task") is ev.TaskJob
    job = ev.TaskJob(objective="mdm", task="countdown3", seed=0, threads=1,
                          model=TransformerConfig(dim=16, n_layers=1, n_heads=2),
                          train=TrainConfig(steps=2, warmup_steps=1, progress=False, run_dir=str(tmp_path)),
                          task_data=ev.TaskDataConfig(n_train=32, n_test=8, batch_size=8, decode_steps=2))
    out = ev.train_task(job)
    assert out["steps"] == 2 and 0.0 <= out["accuracy"] <= 1.0 and out["test_examples"] >= 1
    assert (tmp_path / "task.json").is_file() and (tmp_path / "model").is_dir()


def test_inpainting_runs_keep_every_given_and_refuse_tasks_without_a_blank(tmp_path):
    data = ev.TaskDataConfig(n_train=32, n_test=8, batch_size=8, decode_steps=3, inpaint=True)
    run = ev.train_on_task("mgdm", "sudoku4", TransformerConfig(dim=16, n_layers=1, n_heads=2),
                           TrainConfig(steps=2, warmup_steps=1, progress=False, run_dir=str(tmp_path)), data)
    codec, test = run["codec"], run["test"]
    assert codec.blank == "0" and ev.load_run(tmp_path)[1].blank == "0"
    ids, maskable = codec.encode_prompts([e.prompt for e in test])
    tokens = masked_decode(run["model"], ids, maskable, codec.mask_id, DecodeConfig(steps=3)).tokens
    start = codec.answer_starts(ids)[0]
    for e, row in zip(test, tokens.tolist()):  # an untrained model still cannot change a given cell
        assert all(row[start + j] == codec.tok.encode(c)[0] for j, c in enumerate(e.prompt) if c != "0")
    ar = ev.train_on_task("causal_lm", "sudoku4", TransformerConfig(dim=16, n_layers=1, n_heads=2),
                          TrainConfig(steps=1, warmup_steps=1, progress=False), data)
    assert ar["codec"].blank is None  # AR keeps the plain layout
    with pytest.raises(ValueError, match="no inpainting layout"):
        ev.train_on_task("mgdm", "planning", TransformerConfig(dim=16, n_layers=1, n_heads=2),
                         TrainConfig(steps=1, warmup_steps=1, progress=False), data)


def test_a_task_run_resumes_and_refuses_other_task_settings(tmp_path):
    from lmlab.core.checkpoint import CheckpointError

    data = ev.TaskDataConfig(n_train=32, n_test=8, batch_size=8, decode_steps=2)
    model, cfg = TransformerConfig(dim=16, n_layers=1, n_heads=2), TrainConfig(steps=2, warmup_steps=1,
                                                                                progress=False, run_dir=str(tmp_path))
    ev.train_on_task("mgdm", "planning", model, cfg, data)
    again = ev.train_on_task("mgdm", "planning", model, cfg, data)  # finished: resumes at its last step
    assert again["steps"] == 2 and again["history"] == []
    with pytest.raises(CheckpointError, match="task_data.n_train"):
        ev.train_on_task("mgdm", "planning", model, cfg, dataclasses.replace(data, n_train=40))
