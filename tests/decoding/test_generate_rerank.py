"""Best-of-N and weighted vote from ``generate_text`` / ``lmlab generate`` with scorers named by a spec string."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import tiny
from test_generate_cli import run, write_run

import lmlab
from lmlab import adapters
from lmlab.adapters.layers import lora
from lmlab.core.tokenizer import ByteTokenizer
from lmlab.objectives.implicit_prm import Config, ImplicitPRM
from lmlab.objectives.preference import response_batch
from lmlab.recipes.generate import generate_text
from lmlab.recipes.scorers import answer_extractor
from lmlab.serve.local import LocalClient


def write_adapter(tmp_path, seed: int = 0):
    """A run folder and a LoRA adapter on it with random B (so policy != reference), saved with its base."""
    write_run(tmp_path / "run")
    base, _, _ = lmlab.load(str(tmp_path / "run"))
    adapted = adapters.apply(copy.deepcopy(base), lora(rank=4))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, layer in adapted.adapter_layers():
            for mix in layer.adapters.values():
                mix.B.copy_(torch.randn(mix.B.shape, generator=gen) * 0.3)
    adapters.save(adapted, tmp_path / "adapter", base=str(tmp_path / "run"))
    return tmp_path / "run", tmp_path / "adapter"


@torch.no_grad()
def naive_logp(model, prompt: list[int], cand: list[int]) -> float:
    """sum_i log p(cand_i | prompt, cand_<i), one full forward per token."""
    total, seq = 0.0, list(prompt)
    for t in cand:
        total += float(torch.log_softmax(model(torch.tensor([seq]))[0, -1].double(), -1)[t])
        seq.append(t)
    return total


def test_likelihood_best_of_n_returns_the_most_likely_candidate(tmp_path):
    write_run(tmp_path / "run")
    model, tok, _ = lmlab.load(str(tmp_path / "run"))
    text, stats = generate_text((model, tok), "abc", decoder="best_of_n", overrides=["n=5"], scorer="likelihood",
                                max_new_tokens=6, stop_at_eos=False, seed=3)
    prompt = tok.encode("abc")
    want = [0.001 * naive_logp(model, prompt, c) for c in stats.candidates]  # beta 0.001 * log p(candidate)
    assert stats.scores == pytest.approx(want, abs=1e-5)
    assert stats.chosen == max(range(5), key=lambda i: want[i]) and len(set(map(tuple, stats.candidates))) > 1
    assert text == tok.decode(stats.candidates[stats.chosen])


def test_implicit_scorer_of_an_adapter_uses_its_base_as_reference(tmp_path):
    run_dir, adapter = write_adapter(tmp_path)
    adapted, tok, _ = lmlab.load(str(adapter))
    base, _, _ = lmlab.load(str(run_dir))  # a separate copy of the base: the naive reference
    comma = tok.encode(",")
    _, stats = generate_text(str(adapter), "a,b", decoder="best_of_n", overrides=["n=4"], max_new_tokens=8,
                             scorer=f"implicit:{adapter}", scorer_overrides=["aggregation=min"], step_sep=",",
                             stop_at_eos=False, seed=1)
    prompt = tok.encode("a,b")
    prm = ImplicitPRM(adapted, base, Config(beta=0.001, aggregation="min"))  # the official scoring coefficient
    ids, mask = response_batch([(prompt, c) for c in stats.candidates], 0)
    ends = [[len(prompt) + j for j, t in enumerate(c[:-1]) if t == comma[0]] + [len(prompt) + len(c) - 1]
            for c in stats.candidates]
    want = prm.score(ids, mask, ends)
    assert stats.scores == pytest.approx(want, abs=1e-8) and any(abs(s) > 1e-6 for s in want)
    _, both = generate_text(str(adapter), "a,b", decoder="best_of_n", overrides=["n=4"], max_new_tokens=8,
                            scorer=f"implicit:{adapter},{run_dir}", scorer_overrides=["aggregation=min"],
                            step_sep=",", stop_at_eos=False, seed=1)
    assert both.scores == pytest.approx(stats.scores, abs=1e-8)  # an explicit reference = the adapter's base


def test_cli_weighted_vote_with_an_answer_pattern(tmp_path, capsys):
    _, adapter = write_adapter(tmp_path)
    rc, out, err = run(capsys, "--model", adapter, "--prompt", "ab", "--decoder", "weighted_vote", "--set", "n=6",
                       "--scorer", f"implicit:{adapter}", "--answer", r"(\w)\W*$", "--max-new-tokens", 5,
                       "--no-stop")
    assert rc == 0, err
    assert "winning_votes" in out and "chosen_score" in out


@pytest.mark.parametrize("extra,msg", [
    (["--decoder", "best_of_n"], "needs a scorer"),
    (["--scorer", "likelihood"], "only used by the best-of-N decoders"),
    (["--step-sep", ","], "only used by the best-of-N decoders"),
    (["--decoder", "best_of_n", "--scorer", "implicit:RUN"], "is not an adapter folder"),
    (["--decoder", "best_of_n", "--scorer", "oracle"], "expected 'implicit:POLICY"),
    (["--decoder", "best_of_n", "--scorer", "likelihood:RUN"], "takes no path"),
    (["--decoder", "best_of_n", "--scorer", "implicit:ADAPTER", "--step-sep", "ab"], "encodes to 2 tokens"),
    (["--decoder", "weighted_vote", "--scorer", "likelihood", "--answer", "("], "not a regular expression"),
    (["--decoder", "best_of_n", "--scorer", "likelihood", "--scorer-set", "use_reference=true"], "no reference"),
    (["--decoder", "best_of_n", "--scorer", "likelihood", "--scorer-set", "beta=0"], "beta must be > 0"),
    (["--decoder", "best_of_n", "--scorer", "implicit:OTHER"], "another tokenizer"),
    (["--decoder", "best_of_n", "--scorer", "likelihood", "--set", "n=0"], "n must be >= 1, got 0"),
])
def test_generate_rerank_errors_name_the_problem(tmp_path, capsys, extra, msg):
    run_dir, adapter = write_adapter(tmp_path)
    write_run(tmp_path / "other", vocab=258)
    subs = {"RUN": str(run_dir), "ADAPTER": str(adapter), "OTHER": str(tmp_path / "other")}
    for k, v in subs.items():
        extra = [e.replace(k, v) for e in extra]
    rc, _, err = run(capsys, "--model", run_dir, "--prompt", "hi", *extra)
    assert rc == 2 and msg in err, err


def test_answers_skip_the_end_of_text_and_unanswered_candidates_do_not_vote():
    tok = ByteTokenizer(["<bos>", "<eos>", "<pad>"])
    answer_of = answer_extractor(r"=(\d+)", tok)
    assert answer_of(tok.encode("1+1=2") + [tok.eos_id]) == "2" and answer_of(tok.encode("no answer")) is None
    assert answer_extractor(r"(\w)$", tok)(tok.encode("ab") + [tok.eos_id]) == "b"  # not the eos text
    assert answer_extractor(None, tok) is None


def test_a_scorer_object_takes_no_spec_options():
    with pytest.raises(ValueError, match="configure a scorer named by a spec string"):
        generate_text((tiny(vocab=259).float(), ByteTokenizer(["<bos>", "<eos>", "<pad>"])), "ab",
                      decoder="best_of_n", scorer=lambda p, c: [0.0] * len(c), step_sep=",")


def test_serving_refuses_a_decoder_that_needs_a_scorer():
    tok = ByteTokenizer(["<bos>", "<eos>", "<pad>"])
    with pytest.raises(ValueError, match="need a scorer"):
        LocalClient((tiny(vocab=259).float(), tok), decoder="best_of_n")
