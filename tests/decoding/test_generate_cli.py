"""``lmlab generate`` on a run folder written like ``lmlab train lm`` does (model/ + tokenizer.json)."""

from __future__ import annotations

import pytest
from conftest import tiny

from lmlab.cli.main import main
from lmlab.core.checkpoint import save_model
from lmlab.core.config import to_dict
from lmlab.core.tokenizer import ByteTokenizer


def write_run(folder, vocab: int = 259, seed: int = 0, layers: int = 3):
    model = tiny(vocab=vocab, dim=32, layers=layers, seed=seed).float()
    save_model(folder / "model", model, to_dict(model.cfg))
    ByteTokenizer(["<bos>", "<eos>", "<pad>"][: vocab - 256]).save(folder / "model" / "tokenizer.json")
    return model


def run(capsys, *args) -> tuple[int, str, str]:
    rc = main(["generate", *map(str, args)])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_generate_prints_text_and_stats(tmp_path, capsys):
    write_run(tmp_path / "big")
    write_run(tmp_path / "small", seed=1, layers=1)
    common = ["--checkpoint", tmp_path / "big", "--prompt", "abc", "--max-new-tokens", 12, "--no-stop"]
    rc, greedy, _ = run(capsys, *common)
    assert rc == 0 and "tau" in greedy and "draft_tokens_per_token" in greedy
    text = greedy.split("\n\n")[0]
    for extra in (["--decoder", "gsd", "--draft", "skip:1", "--set", "depth=3", "--set", "merge_context=0"],
                  ["--decoder", "tree_sd", "--draft", tmp_path / "small"],
                  ["--decoder", "chain_sd", "--draft", tmp_path / "small" / "model"]):
        rc, out, err = run(capsys, *common, *extra)
        assert rc == 0, err
        assert out.split("\n\n")[0] == text  # greedy speculative decoding prints the same text
    rc, out, _ = run(capsys, *common, "--decoder", "gsd", "--draft", "skip:0", "--sample", "--seed", 3)
    assert rc == 0 and "new_tokens" in out


@pytest.mark.parametrize("extra,msg", [
    (["--decoder", "gsd"], "needs a draft model"),
    (["--decoder", "sample", "--temperature", "0"], "temperature must be > 0"),
    (["--decoder", "gsd", "--draft", "skip:0", "--sample", "--temperature", "-1"], "temperature must be > 0"),
    (["--decoder", "gsd", "--draft", "skip:0", "--set", "budget=0"], "budget must be >= 1, got 0"),
    (["--decoder", "gsd", "--draft", "skip:0,1,2"], "removes all 3 layers"),
    (["--decoder", "chain_sd", "--draft", "OTHER"], "another tokenizer"),
    (["--max-new-tokens", "500"], "exceeds the model's context of 160"),
    (["--temperature", "0.5"], "temperature only apply when sampling"),
    (["--decoder", "gsd", "--draft", "skip:0", "--top-k", "3"], "top_k only apply when sampling"),
    (["--decoder", "greedy", "--sample"], "use decoder 'sample'"),
])
def test_generate_errors_name_the_problem(tmp_path, capsys, extra, msg):
    write_run(tmp_path / "big")
    write_run(tmp_path / "other", vocab=258)
    extra = [str(tmp_path / "other") if e == "OTHER" else e for e in extra]
    rc, _, err = run(capsys, "--checkpoint", tmp_path / "big", "--prompt", "hi", *extra)
    assert rc == 2 and msg in err
