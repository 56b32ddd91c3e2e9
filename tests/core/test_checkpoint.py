import multiprocessing
import os

import pytest
import torch

from lmlab.core.checkpoint import (
    BESIDE,
    KINDS,
    CheckpointError,
    OutputFolderError,
    load_model,
    load_tensors,
    read_meta,
    recover,
    save,
    save_model,
)
from lmlab.core.config import to_dict
from lmlab.core.transformer import Transformer


def test_round_trip_identical_outputs(tmp_path, tiny_cfg):
    m = Transformer(tiny_cfg).eval()
    save_model(tmp_path / "ck", m, to_dict(tiny_cfg))
    assert not (tmp_path / "ck.tmp").exists()
    m2 = Transformer(tiny_cfg).eval()
    load_model(tmp_path / "ck", m2, to_dict(tiny_cfg))
    ids = torch.randint(0, tiny_cfg.vocab_size, (1, 9))
    assert torch.equal(m(ids), m2(ids))


def test_bad_checkpoints(tmp_path, tiny_cfg):
    m = Transformer(tiny_cfg)
    with pytest.raises(CheckpointError, match="not an lmlab checkpoint"):
        load_model(tmp_path, m)
    save_model(tmp_path / "ck", m, to_dict(tiny_cfg))
    other = dict(to_dict(tiny_cfg), dim=64)
    with pytest.raises(CheckpointError, match="dim"):
        load_model(tmp_path / "ck", m, other)
    f = tmp_path / "ck" / "model.safetensors"
    f.write_bytes(f.read_bytes()[:100])  # truncated
    with pytest.raises(CheckpointError, match="truncated"):
        load_model(tmp_path / "ck", m)


def test_foreign_weights_are_named(tmp_path, tiny_cfg):
    import dataclasses

    save_model(tmp_path / "ck", Transformer(dataclasses.replace(tiny_cfg, dim=64)), {})
    with pytest.raises(CheckpointError, match="shape mismatch"):
        load_model(tmp_path / "ck", Transformer(tiny_cfg))


# ---------------------------------------------------------------- output folders: lmlab removes only its own files

def _tensors(step: int) -> dict[str, dict[str, torch.Tensor]]:
    """A training-checkpoint-like set of files whose every tensor says which save wrote it."""
    return {stem: {"w": torch.full((4, 3), float(step))} for stem in ("model", "optim", "rng")}


def _save_step(path, step: int, **kw):
    return save(path, _tensors(step), {"kind": "lmlab-trainer", "step": step}, **kw)


def _read_step(path) -> int:
    """The step of the checkpoint at ``path``, after checking that every file of it comes from that save."""
    step = read_meta(path)["step"]
    for stem in ("model", "optim", "rng"):
        assert torch.equal(load_tensors(path, stem)["w"], torch.full((4, 3), float(step)))
    return step


def test_kinds_are_the_loader_kinds_and_the_trainer_kind():
    from lmlab.loader import KINDS as READ

    assert set(KINDS) == set(READ) | {"lmlab-trainer"}


def test_a_foreign_folder_is_refused_and_overwrite_removes_nothing(tmp_path):
    out = tmp_path / "out"
    (out / "src").mkdir(parents=True)
    (out / "src" / "a.py").write_text("code")
    (out / "notes.txt").write_text("x")
    with pytest.raises(OutputFolderError, match=r"out already holds files lmlab did not write \(notes.txt, src\)"
                                                r".*--out.*--overwrite"):
        _save_step(out, 1)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt", "src"]
    assert not (tmp_path / "out.tmp").exists()
    _save_step(out, 1, overwrite=True)
    assert (out / "notes.txt").read_text() == "x" and (out / "src" / "a.py").read_text() == "code"
    assert _read_step(out) == 1 and read_meta(out)[BESIDE] is True
    _save_step(out, 2)  # lmlab's output now, but shared: still written file by file, nothing removed
    assert (out / "notes.txt").read_text() == "x" and (out / "src" / "a.py").read_text() == "code"
    assert _read_step(out) == 2 and not [p.name for p in out.iterdir() if p.name.startswith(".")]


def test_own_previous_output_is_replaced_as_a_whole(tmp_path):
    _save_step(tmp_path / "ck", 1)
    save(tmp_path / "ck", {"model": {"w": torch.zeros(2)}}, {"kind": "lmlab-transformer"})
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["meta.json", "model.safetensors"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]  # no .tmp / .old left
    (tmp_path / "empty").mkdir()
    _save_step(tmp_path / "empty", 3)
    assert _read_step(tmp_path / "empty") == 3


def test_a_file_in_the_way_is_named(tmp_path):
    (tmp_path / "README.md").write_text("read me")
    with pytest.raises(OutputFolderError, match=r"cannot write folder .*README.md/x/y: .*README.md is a file"):
        _save_step(tmp_path / "README.md" / "x" / "y", 1)
    with pytest.raises(OutputFolderError, match=r"README.md: .*README.md is a file, not a folder"):
        _save_step(tmp_path / "README.md", 1)
    assert (tmp_path / "README.md").read_text() == "read me"


def test_a_foreign_sibling_named_like_a_leftover_is_kept(tmp_path):
    _save_step(tmp_path / "ck", 1)
    (tmp_path / "ck.old").mkdir()
    (tmp_path / "ck.old" / "backup.txt").write_text("mine")
    with pytest.raises(OutputFolderError, match=r"ck.old is in the way.*backup.txt"):
        _save_step(tmp_path / "ck", 2)
    assert (tmp_path / "ck.old" / "backup.txt").read_text() == "mine" and _read_step(tmp_path / "ck") == 1
    (tmp_path / "ck.old" / "backup.txt").unlink()
    _save_step(tmp_path / "elsewhere", 0)
    (tmp_path / "ck.tmp").symlink_to(tmp_path / "elsewhere")  # lmlab's files, but not a folder lmlab made here
    with pytest.raises(OutputFolderError, match=r"ck.tmp is in the way"):
        _save_step(tmp_path / "ck", 2)
    assert _read_step(tmp_path / "elsewhere") == 0


# ---------------------------------------------------------------- a save killed at any point

STEPS = ("replace", "unlink", "rmdir")  # the os calls through which a save changes files and folders


class Killed(BaseException):
    """Stands for the process being killed (not an Exception: nothing may catch it)."""


def _inject(kill_at: int, action, calls: list | None = None) -> dict:
    """Replacements of the os functions in STEPS: call number ``kill_at`` runs ``action`` instead."""
    count = [0]

    def wrap(name, fn):
        def step(*args, **kw):
            if calls is not None:
                calls.append((name, *map(str, args)))
            count[0] += 1
            if count[0] - 1 == kill_at:
                action()
            return fn(*args, **kw)
        return step

    return {name: wrap(name, getattr(os, name)) for name in STEPS}


def _save_killed(path, kill_at: int, mode: str, monkeypatch) -> None:
    """Save step 2 over step 1, killed before os call number ``kill_at``: by an exception, or (mode "exit") by
    ending a forked process on the spot, so that no ``finally`` or ``except`` of the save runs."""
    if mode == "raise":
        def die():
            raise Killed

        for name, fn in _inject(kill_at, die).items():
            monkeypatch.setattr(os, name, fn)
        with pytest.raises(Killed):
            _save_step(path, 2)
        monkeypatch.undo()
        return

    def child():
        for name, fn in _inject(kill_at, lambda: os._exit(9)).items():
            setattr(os, name, fn)
        _save_step(path, 2)

    proc = multiprocessing.get_context("fork").Process(target=child)
    proc.start()
    proc.join(60)
    assert proc.exitcode == 9, f"the save was not killed at os call {kill_at} (exit code {proc.exitcode})"


def _os_calls_of_a_save(tmp_path) -> list[tuple]:
    _save_step(tmp_path / "probe", 1)
    calls: list[tuple] = []
    steps = _inject(-1, lambda: None, calls)
    with pytest.MonkeyPatch.context() as mp:
        for name, fn in steps.items():
            mp.setattr(os, name, fn)
        _save_step(tmp_path / "probe", 2)
    return calls


def test_every_kill_point_of_a_save_is_counted(tmp_path):
    calls = _os_calls_of_a_save(tmp_path)
    ck = str(tmp_path / "probe")
    assert ("replace", ck, ck + ".old") in calls and ("replace", ck + ".tmp", ck) in calls
    assert len(calls) == N_CALLS  # a changed save changes this: then update N_CALLS so every point is tested


N_CALLS = 15  # os calls of a 3-file save over a previous one (test above)


@pytest.mark.parametrize("mode", ["raise", "exit"])
@pytest.mark.parametrize("kill_at", range(N_CALLS))
def test_a_killed_save_leaves_the_old_or_the_new_checkpoint(kill_at, mode, tmp_path, monkeypatch):
    if mode == "exit" and "fork" not in multiprocessing.get_all_start_methods():
        pytest.skip("needs fork")
    calls = _os_calls_of_a_save(tmp_path)
    parked = calls.index(("replace", str(tmp_path / "probe"), str(tmp_path / "probe.old")))
    ck = tmp_path / "ck"
    _save_step(ck, 1)
    _save_killed(ck, kill_at, mode, monkeypatch)
    assert _read_step(ck) == (1 if kill_at <= parked else 2)  # killed before parking the old one: old, else new
    _save_step(ck, 3)  # the next save cleans up what the killed one left
    assert _read_step(ck) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck", "probe"]
    assert sorted(p.name for p in ck.iterdir()) == ["meta.json", "model.safetensors", "optim.safetensors",
                                                     "rng.safetensors"]


def _kill_between_the_renames(monkeypatch, name: str) -> None:
    """os.replace raises Killed when it would move ``<name>.tmp`` into place (after ``<name>`` was parked)."""
    real = os.replace

    def replace(src, dst):
        if os.path.basename(src) == f"{name}.tmp":
            raise Killed
        return real(src, dst)

    monkeypatch.setattr(os, "replace", replace)


def test_loader_and_resume_guard_find_a_checkpoint_killed_between_the_renames(tmp_path, tiny_cfg, monkeypatch):
    """lmlab.load of a run folder, and ``recover(path).exists()`` (the Trainer's resume guard), after a kill
    between ``<dir>`` -> ``<dir>.old`` and ``<dir>.tmp`` -> ``<dir>``."""
    import lmlab

    m1, m2 = Transformer(tiny_cfg).eval(), Transformer(tiny_cfg).eval()
    save_model(tmp_path / "run" / "model", m1, to_dict(tiny_cfg))
    _kill_between_the_renames(monkeypatch, "model")
    with pytest.raises(Killed):
        save_model(tmp_path / "run" / "model", m2, to_dict(tiny_cfg))
    monkeypatch.undo()
    assert not (tmp_path / "run" / "model").exists()
    loaded, _, meta = lmlab.load(tmp_path / "run")
    ids = torch.randint(0, tiny_cfg.vocab_size, (1, 9))
    assert torch.equal(loaded(ids), m2(ids)) and meta["source"] == str(tmp_path / "run" / "model")

    _save_step(tmp_path / "checkpoint", 1)
    _kill_between_the_renames(monkeypatch, "checkpoint")
    with pytest.raises(Killed):
        _save_step(tmp_path / "checkpoint", 2)
    monkeypatch.undo()
    assert not (tmp_path / "checkpoint").exists() and recover(tmp_path / "checkpoint").exists()
    assert _read_step(tmp_path / "checkpoint") == 2
