"""RevisEval: metric adapters, strict verdict parsing, majority vote, meta-evaluation, and the pipeline end to end
through the one runner with a scripted LLM (both-order revision, position-swap averaging, judge failures)."""

from __future__ import annotations

import asyncio
import json
import re

import pytest
from scipy import stats

from lmlab.core.chat import ChatResult, Completion, Usage, request_hash, run_sync
from lmlab.pipelines import REGISTRY
from lmlab.pipelines.reviseval import (
    Config,
    RevisEval,
    bertscore,
    bleu,
    chrf,
    correlations,
    cost_ledger,
    majority_vote,
    pairwise_accuracy,
    parse_rating,
    parse_verdict,
    prefer,
    rouge_l,
    shuffle_pairs,
)

pytest.importorskip("sacrebleu")

GOOD = "The capital of Australia is Canberra, a planned city."
BAD = "The capital of Australia is Sydney, a planned city."
ANSWER = re.compile(r"\[The Start of Assistant's Answer\]\n(.*?)\n\[The End of Assistant's Answer\]", re.S)
A_ANS = re.compile(r"\[The Start of Assistant A's Answer\]\n(.*?)\n\[The End", re.S)
B_ANS = re.compile(r"\[The Start of Assistant B's Answer\]\n(.*?)\n\[The End", re.S)


class Scripted:
    """A scripted LLM: the reviser fixes "Sydney" to "Canberra"; the judge prefers the answer naming Canberra,
    always says [[A]] (``biased``: a position-biased judge), or answers without a verdict (``broken``)."""

    model, capabilities = "scripted", frozenset()

    def __init__(self, judge: str = "fair"):
        self.judge, self.calls = judge, []

    async def achat(self, messages, params):
        user = messages[-1]["content"]
        role = "judge" if messages[0]["role"] == "system" else "reviser"
        self.calls.append((role, params.temperature, user))
        if role == "reviser":
            text = ANSWER.search(user).group(1).replace("Sydney", "Canberra")
        elif self.judge == "broken":
            text = "Both answers have merit."
        elif "Rating:" in messages[0]["content"]:
            text = "Rating: [[9]]" if "Canberra" in ANSWER.search(user).group(1) else "Rating: [[2]]"
        elif self.judge == "biased":
            text = "The first answer reads better. [[A]]"
        else:
            text = "A is right. [[A]]" if "Canberra" in A_ANS.search(user).group(1) else "B is right. [[B]]"
        return ChatResult([Completion(text, "stop")], Usage(len(user.split()), len(text.split())), self.model,
                          request_hash(self.model, messages, params))

    def chat(self, messages, **params):
        return run_sync(self, messages, **params)


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# ---- metric adapters ---------------------------------------------------------------------------------------------

def test_metrics_of_identical_strings_are_perfect_and_hand_checked_values():
    assert bleu([GOOD], [GOOD]) == [pytest.approx(100.0)]
    assert chrf([GOOD], [GOOD]) == [pytest.approx(100.0)]
    assert rouge_l([GOOD], [GOOD]) == [pytest.approx(1.0)]
    # LCS("a b c d", "a b x d") = 3 tokens: precision = recall = 3/4
    assert rouge_l(["a b c d"], ["a b x d"]) == [pytest.approx(0.75)]
    assert bleu(["alpha beta gamma delta"], ["one two three four"]) == [pytest.approx(0.0)]
    assert chrf(["abc"], ["xyz"]) == [pytest.approx(0.0)]
    assert 0 < bleu([BAD], [GOOD])[0] < 100


def test_metric_inputs_are_checked():
    with pytest.raises(ValueError, match="2 hypotheses but 1 references"):
        bleu([GOOD, BAD], [GOOD])
    with pytest.raises(ValueError, match="expected a string"):
        rouge_l([None], [GOOD])


def test_bertscore_minilm_offline(monkeypatch):
    pytest.importorskip("bert_score")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    same, near, far = bertscore([GOOD, BAD, "Bananas are yellow fruit."], [GOOD, GOOD, GOOD])
    assert same == pytest.approx(1.0, abs=1e-4)
    assert far < near < same


# ---- parsers, votes, meta-evaluation ---------------------------------------------------------------------------

def test_verdict_parser_is_strict():
    assert parse_verdict("[[A]]") == "A"
    assert parse_verdict("Assistant B is more accurate.\n\nFinal verdict: [[B]]") == "B"
    assert parse_verdict("[[A]] ... so again [[A]]") == "A"
    for bad in ["A is better", "[[C]]", "[[A]] or [[B]]", "[A]", ""]:
        with pytest.raises(ValueError, match="exactly one of"):
            parse_verdict(bad)
    assert parse_rating("close to the reference. Rating: [[7]]") == 7
    for bad in ["Rating: 7", "[[11]]", "[[0]]", "[[7.5]]", "[[3]] then [[4]]"]:
        with pytest.raises(ValueError, match="1..10"):
            parse_rating(bad)


def test_majority_vote_and_prefer():
    assert prefer(2.0, 1.0) == "A" and prefer(1.0, 2.0) == "B" and prefer(1.0, 1.0) == "tie"
    assert majority_vote(["A", "A", "B", "tie"]) == "A"
    assert majority_vote(["B", "tie", "tie"]) == "B"
    assert majority_vote(["A", "B"]) == "tie"
    with pytest.raises(ValueError, match="votes must be"):
        majority_vote(["A", "C"])


def test_meta_evaluation_against_scipy_and_by_hand():
    scores, human = [0.1, 0.4, 0.35, 0.8, 0.7], [1, 2, 3, 4, 5]
    got = correlations(scores, human)
    assert got["kendall_tau"] == pytest.approx(stats.kendalltau(scores, human).statistic)
    assert got["spearman_rho"] == pytest.approx(stats.spearmanr(scores, human).statistic)
    # by hand: 10 pairs, 2 discordant -> tau = (8 - 2) / 10; sum d^2 = 4 -> rho = 1 - 6 * 4 / (5 * 24)
    assert got["kendall_tau"] == pytest.approx(0.6) and got["spearman_rho"] == pytest.approx(0.8)
    assert pairwise_accuracy(["A", "B", "tie", "A"], ["A", "A", "B", "A"]) == pytest.approx(2.5 / 4)
    with pytest.raises(ValueError, match="predictions"):
        pairwise_accuracy(["A"], ["tie"])
    with pytest.raises(ValueError, match="as many"):
        correlations([1, 2], [1, 2, 3])


def test_shuffle_pairs_flips_labels_with_the_responses():
    recs = [{"id": i, "response_a": f"good {i}", "response_b": f"bad {i}", "label": "A"} for i in range(40)]
    out = shuffle_pairs(recs, seed=1)
    assert all(r["label"] == ("A" if r["response_a"].startswith("good") else "B") for r in out)
    assert 5 < sum(r["label"] == "B" for r in out) < 35


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="form"):
        Config(form="listwise")
    with pytest.raises(ValueError, match="unknown metrics"):
        Config(metrics=["bleu", "meteor"])
    assert REGISTRY.get("reviseval") is RevisEval and REGISTRY.config("reviseval") is Config


# ---- the pipeline through the runner ---------------------------------------------------------------------------

def test_pointwise_end_to_end_through_the_runner(tmp_path):
    recs = [{"id": 0, "instruction": "Name the capital of Australia.", "response": BAD},
            {"id": 1, "instruction": "Name the capital of Australia.", "response": GOOD}]
    llm, rev = Scripted(), RevisEval(Config(form="pointwise", metrics=["bleu", "rougeL"]))
    summary = rev.run(write_jsonl(tmp_path / "in.jsonl", recs), tmp_path / "out.jsonl", llm)
    out = sorted(read_jsonl(tmp_path / "out.jsonl"), key=lambda r: r["id"])
    assert [r["reference"] for r in out] == [GOOD, GOOD]
    assert [r["judge_score"] for r in out] == [2, 9]
    judged = [u for role, _, u in llm.calls if role == "judge"]
    assert len(judged) == 2 and all("[The Start of Reference Answer]\n" + GOOD in u for u in judged)
    assert {(role, t) for role, t, _ in llm.calls} == {("reviser", 0.3), ("judge", 0.1)}
    assert out[0]["_provenance"]["prompt_version"] == rev.pipeline().prompt_version
    assert len(out[0]["_provenance"]["requests"]) == 2
    scored = rev.score(out)
    assert scored[1]["metrics"]["bleu"] == pytest.approx(100.0) and scored[0]["metrics"]["bleu"] < 100
    ledger = cost_ledger(summary, usd_per_m_prompt=1.0, usd_per_m_completion=2.0)
    assert ledger["requests"] == 4 and ledger["records"] == 2 and ledger["requests_per_record"] == 2
    assert ledger["usd"] == pytest.approx((summary.ledger.prompt_tokens + 2 * summary.ledger.completion_tokens) / 1e6)


def pair_records():
    x = "Name the capital of Australia."
    return [{"id": 0, "instruction": x, "response_a": GOOD, "response_b": BAD, "label": "A"},
            {"id": 1, "instruction": x, "response_a": BAD, "response_b": GOOD, "label": "B"}]


def test_pairwise_official_revises_b_only_informed_by_a(tmp_path):
    llm, rev = Scripted(), RevisEval(Config(judge=False))
    rev.run(write_jsonl(tmp_path / "in.jsonl", pair_records()), tmp_path / "out.jsonl", llm)
    out = sorted(read_jsonl(tmp_path / "out.jsonl"), key=lambda r: r["id"])
    assert [list(r["references"]) for r in out] == [["B"], ["B"]]
    assert len(llm.calls) == 2 and all(role == "reviser" for role, _, _ in llm.calls)
    first = next(u for _, _, u in llm.calls if GOOD in ANSWER.search(u).group(1))
    assert "[The Start of Reference Response]\n" + BAD in first  # B = GOOD in record 1, A = BAD as its reference


def test_both_order_revision_gives_two_references_and_symmetric_metrics(tmp_path):
    llm, rev = Scripted(), RevisEval(Config(judge=False, both_orders=True, metrics=["bleu", "chrf", "rougeL"]))
    rev.run(write_jsonl(tmp_path / "in.jsonl", pair_records()), tmp_path / "out.jsonl", llm)
    out = sorted(read_jsonl(tmp_path / "out.jsonl"), key=lambda r: r["id"])
    assert all(r["references"] == {"A": GOOD, "B": GOOD} for r in out)
    assert len(llm.calls) == 4
    scored = rev.score(out)
    assert [r["majority"] for r in scored] == ["A", "B"]
    assert pairwise_accuracy([r["majority"] for r in scored], [r["label"] for r in scored]) == 1.0
    assert scored[0]["metrics"]["bleu"]["A"] == pytest.approx(scored[1]["metrics"]["bleu"]["B"])


def test_position_swap_averages_out_a_position_biased_judge(tmp_path):
    inp = write_jsonl(tmp_path / "in.jsonl", pair_records())
    plain = RevisEval(Config())
    plain.run(inp, tmp_path / "plain.jsonl", Scripted("biased"))
    assert sorted(r["judge_winner"] for r in read_jsonl(tmp_path / "plain.jsonl")) == ["A", "A"]
    swap = RevisEval(Config(position_swap=True))
    swap.run(inp, tmp_path / "swap.jsonl", Scripted("biased"))
    out = read_jsonl(tmp_path / "swap.jsonl")
    assert all(r["judge_votes"] == ["A", "B"] and r["judge_pref_a"] == 0.5 and r["judge_winner"] == "tie"
               for r in out)
    fair = RevisEval(Config(position_swap=True, both_orders=True))
    fair.run(inp, tmp_path / "fair.jsonl", Scripted("fair"))
    out = sorted(read_jsonl(tmp_path / "fair.jsonl"), key=lambda r: r["id"])
    assert [r["judge_winner"] for r in out] == ["A", "B"] and [len(r["judge_votes"]) for r in out] == [4, 4]


def test_unparseable_verdict_goes_to_the_errors_file(tmp_path):
    summary = RevisEval(Config()).run(write_jsonl(tmp_path / "in.jsonl", pair_records()), tmp_path / "out.jsonl",
                                      Scripted("broken"))
    assert summary.failed == 2 and summary.written == 0
    errors = read_jsonl(tmp_path / "out.errors.jsonl")
    assert {e["stage"] for e in errors} == {"judge"} and all("[[A]] / [[B]]" in e["error"] for e in errors)


def test_missing_field_is_a_recorded_error_naming_it(tmp_path):
    recs = [{"id": 0, "instruction": "x", "response_a": GOOD}]
    RevisEval(Config()).run(write_jsonl(tmp_path / "in.jsonl", recs), tmp_path / "out.jsonl", Scripted())
    (err,) = read_jsonl(tmp_path / "out.errors.jsonl")
    assert err["stage"] == "revise" and "'response_b'" in err["error"]


def test_stages_are_async_and_accept_any_chat_client():
    rec = {"id": 0, "instruction": "x", "response": BAD}
    cfg = Config(form="pointwise", judge=False)
    out = asyncio.run(RevisEval(cfg).pipeline().stages[0](rec, Scripted()))
    assert out["reference"] == GOOD and out["response"] == BAD
