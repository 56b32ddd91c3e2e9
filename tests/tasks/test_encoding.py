"""Task codec: prompt <sep> target <eos> <pad> layout, loss masks, decoding inputs, answers, bad lengths."""

import pytest
import torch

from lmlab.tasks.base import Example
from lmlab.tasks.encoding import IGNORE, TaskCodec
from lmlab.tasks.planning import PlanningTask


def test_layout_masks_and_causal_targets():
    codec = TaskCodec("abc,", prompt_len=5, target_len=3)
    enc = codec.encode([Example("ab,c", "ca"), Example("a", "bbb")])
    assert codec.seq_len == 10 and enc["ids"].shape == (2, 10)
    row = enc["ids"][0].tolist()
    assert codec.tok.decode(row) == "ab,c<sep>ca<eos><pad><pad>"
    assert enc["src_mask"][0].tolist() == [True] * 5 + [False] * 5
    assert enc["src_mask"][1].tolist() == [True] * 2 + [False] * 8
    # causal targets: position i predicts ids[i+1] on the target and <eos> only
    t = enc["targets"][0].tolist()
    assert t[4:7] == row[5:8] and all(v == IGNORE for v in t[:4] + t[7:])
    assert (enc["targets"][1] != IGNORE).sum() == 4


def test_decoding_input_masks_exactly_the_target_region_and_answers_round_trip():
    task = PlanningTask()
    examples = task.generate(20, seed=0)
    codec = TaskCodec.fit(task.alphabet, examples)
    ids, maskable = codec.encode_prompts([e.prompt for e in examples])
    enc = codec.encode(examples)
    assert torch.equal(maskable, ~enc["src_mask"])
    assert torch.equal(ids[~maskable], enc["ids"][~maskable]) and (ids[maskable] == codec.mask_id).all()
    starts = enc["src_mask"].sum(-1).tolist()
    assert [codec.answer(r, p) for r, p in zip(enc["ids"].tolist(), starts)] == [e.target for e in examples]
    assert codec.answer([codec.mask_id, 0, codec.eos_id], 0).startswith("?")


def test_too_long_examples_raise_naming_the_length(tmp_path):
    codec = TaskCodec("ab", prompt_len=2, target_len=2)
    with pytest.raises(ValueError, match="target of length 3"):
        codec.encode([Example("a", "abb")])
    with pytest.raises(ValueError, match="prompt of length 4"):
        codec.encode_prompts(["abab"])
    with pytest.raises(ValueError, match="target_len"):
        TaskCodec("ab", 2, 0)
    loaded = TaskCodec.load(codec.save(tmp_path / "task.json"))
    assert loaded.to_dict() == codec.to_dict() and loaded.mask_id == codec.vocab_size - 1


def test_inpainting_layout_fixes_the_givens_in_the_target_region(tmp_path):
    from lmlab.tasks.sudoku import Config, SudokuTask

    task = SudokuTask(Config(size=4, blanks=8))
    examples = task.generate(6, seed=0)
    plain = TaskCodec.fit(task.alphabet, examples)
    codec = TaskCodec.fit(task.alphabet, examples, blank=task.blank)
    enc, base = codec.encode(examples), plain.encode(examples)
    assert torch.equal(enc["ids"], base["ids"]) and torch.equal(enc["targets"], base["targets"])  # AR unchanged
    p = len(examples[0].prompt) + 1
    for row, ex in zip(enc["src_mask"].tolist(), examples):  # givens = the prompt's non-blank cells, nothing else
        assert row[:p] == [True] * p
        assert row[p:p + 16] == [c != "0" for c in ex.prompt] and not any(row[p + 16:])
    ids, maskable = codec.encode_prompts([e.prompt for e in examples])
    assert torch.equal(maskable, ~enc["src_mask"])  # decoding fills exactly what training masks
    assert torch.equal(ids[~maskable], enc["ids"][~maskable]) and (ids[maskable] == codec.mask_id).all()
    starts = codec.answer_starts(enc["ids"])
    assert [codec.answer(r, s) for r, s in zip(enc["ids"].tolist(), starts)] == [e.target for e in examples]
    assert TaskCodec.load(codec.save(tmp_path / "c.json")).blank == "0"


def test_inpainting_layout_rejects_bad_blanks_and_targets_that_change_a_given():
    with pytest.raises(ValueError, match="blank must be one character"):
        TaskCodec("0123", 4, 4, blank="x")
    codec = TaskCodec("0123", 4, 4, blank="0")
    with pytest.raises(ValueError, match="given '2' of prompt '1200' at position 1"):
        codec.encode([Example("1200", "1320")])
    with pytest.raises(ValueError, match="longer than the target"):
        TaskCodec("0123", 6, 4, blank="0").encode_prompts(["123000"])
