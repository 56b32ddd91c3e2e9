"""One atomic write (``runtime.atomic_open`` / ``atomic_write``) behind every file lmlab writes whole."""

import json

import pytest

from lmlab.core.data import read_jsonl, write_jsonl
from lmlab.core.results import write_json
from lmlab.core.runtime import JsonlLog, atomic_open, atomic_write
from lmlab.core.tokenizer import ByteTokenizer, load_tokenizer


def leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if "tmp" in p.name)


def test_atomic_write_text_and_bytes_creates_folders_and_leaves_no_temporary_file(tmp_path):
    path = tmp_path / "a" / "b" / "f.txt"
    assert atomic_write(path, "héllo\n") == path and path.read_text(encoding="utf-8") == "héllo\n"
    atomic_write(path, b"\x00\x01")
    assert path.read_bytes() == b"\x00\x01" and leftovers(path.parent) == []


def test_a_failed_write_keeps_the_old_file_and_removes_the_temporary_one(tmp_path):
    path = tmp_path / "f.txt"
    path.write_text("old")
    with pytest.raises(RuntimeError, match="midway"):
        with atomic_open(path) as f:
            f.write("half of the new")
            raise RuntimeError("midway")
    assert path.read_text() == "old" and leftovers(tmp_path) == []
    with pytest.raises(ValueError, match="mode must be 'w' or 'wb', got 'a'"):
        with atomic_open(path, "a"):
            pass


def test_write_jsonl_streams_atomically(tmp_path):
    """A record that cannot be written leaves the previous file whole and no temporary file behind (the old
    write_jsonl left ``<name>.tmp`` there)."""
    path = tmp_path / "r.jsonl"
    write_jsonl(path, ({"i": i} for i in range(3)))
    assert list(read_jsonl(path)) == [{"i": 0}, {"i": 1}, {"i": 2}]
    with pytest.raises(TypeError):
        write_jsonl(path, [{"i": 9}, {"bad": object()}])
    assert list(read_jsonl(path)) == [{"i": 0}, {"i": 1}, {"i": 2}] and leftovers(tmp_path) == []


def test_write_json_replaces_whole_files(tmp_path):
    path = tmp_path / "r.json"
    write_json(path, {"x": float("nan"), "y": 1})
    with pytest.raises(TypeError):
        write_json(path, {"bad": object()})
    assert json.loads(path.read_text()) == {"x": None, "y": 1} and leftovers(tmp_path) == []


def test_jsonl_log_truncate_after_keeps_the_records_up_to_the_step(tmp_path):
    log = JsonlLog(tmp_path / "m.jsonl")
    for step in (1, 2, 3):
        log.write({"step": step, "loss": float("inf") if step == 2 else 0.5})
    log.truncate_after(2)
    assert log.read() == [{"step": 1, "loss": 0.5}, {"step": 2, "loss": None}] and leftovers(tmp_path) == []


def test_tokenizer_save_replaces_the_file_atomically(tmp_path):
    tok = ByteTokenizer()
    tok.save(tmp_path)
    tok.save(tmp_path)
    assert load_tokenizer(tmp_path).encode("hi") == tok.encode("hi") and leftovers(tmp_path) == []
