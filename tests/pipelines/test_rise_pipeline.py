"""RISE's pair pipeline: parsing and grading, the sample and edit stages through the one runner with a scripted LLM,
pairs_from_records (filters, N per problem), and both stages against a real ``lmlab serve`` on loopback."""

from __future__ import annotations

import json
import re

import pytest
import torch

from lmlab.core.chat import ChatResult, Completion, Usage, request_hash, run_sync
from lmlab.core.checkpoint import save_model
from lmlab.core.config import to_dict
from lmlab.core.tokenizer import ByteTokenizer
from lmlab.core.transformer import Transformer, TransformerConfig
from lmlab.objectives.rise import Config as PairConfig
from lmlab.objectives.rise import pairs_from_records
from lmlab.pipelines import REGISTRY, build
from lmlab.pipelines.base import Pipeline
from lmlab.pipelines.rise import (
    Config,
    RisePairs,
    boxed,
    choose_full_pair,
    edit_region,
    edit_stage,
    error_kinds,
    is_correct,
    normalise,
    parse_edit,
    rejected_step,
    split_steps,
    stable_seed,
    strip_boxed,
)
from lmlab.pipelines.runner import run
from lmlab.serve import LocalClient, background, make_client

RIGHT = "Step 1: First, 2 + 3 = 5.\nStep 2: Then 5 * 4 = 20. So the answer is \\boxed{20}."
WRONG = "Step 1: First, 2 + 3 = 6.\nStep 2: Then 6 * 4 = 24. So the answer is \\boxed{24}."
FIXED = "Step 1: First, 2 + 3 = 6, a mistake. Let's correct it: 5.\nStep 2: Then 5 * 4 = \\boxed{20}."
CURRENT = re.compile(r"\[Current Step\]\n(.*?)\n\n", re.S)


class Scripted:
    """Solves with the given attempts; edits by turning the first digit of the region into another digit
    (``echo``: the region unchanged; ``giveaway``: adds "this is wrong"; ``broken``: answers without a ``` block)."""

    model = "scripted"

    def __init__(self, attempts=(RIGHT, WRONG, FIXED, WRONG, RIGHT), editor="digit", n=True):
        self.attempts, self.editor, self.calls = list(attempts), editor, []
        self.capabilities = frozenset({"n"}) if n else frozenset()

    async def achat(self, messages, params):
        user = messages[-1]["content"]
        self.calls.append((params, user))
        if "reason step by step" in user:
            n = params.n
            texts = self.attempts[:n] if n > 1 else [self.attempts[params.seed % len(self.attempts)]]
        else:
            region = CURRENT.search(user).group(1)
            edited = re.sub(r"\d", lambda m: str((int(m.group()) + 1) % 10), region, count=1)
            if self.editor == "echo":
                edited = region
            if self.editor == "giveaway":
                edited += " (this is wrong)"
            texts = [f"Here it is:\n```\n{edited}\n```" if self.editor != "broken" else edited]
        return ChatResult([Completion(t, "stop") for t in texts], Usage(len(user), 1), self.model,
                          request_hash(self.model, messages, params))

    def chat(self, messages, **params):
        return run_sync(self, messages, **params)


def records():
    return [{"id": "q1", "question": "Add 2 and 3, then multiply by 4.", "answer": "20"},
            {"id": "q2", "question": "What is 12 * 2?", "answer": "24"}]


def run_pipeline(tmp_path, llm, cfg=None, recs=None, name="out"):
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in (recs or records())))
    summary = RisePairs(cfg or Config()).run(src, tmp_path / f"{name}.jsonl", llm)
    out = [json.loads(x) for x in (tmp_path / f"{name}.jsonl").read_text().splitlines()]
    return summary, {r["id"]: r for r in out}


# ---------------------------------------------------------------- parsing and grading


def test_steps_answers_and_regions():
    assert split_steps(RIGHT) == ["Step 1: First, 2 + 3 = 5.", "Step 2: Then 5 * 4 = 20. So the answer is \\boxed{20}."]
    assert split_steps("Intro.\nStep 1: a\nStep 2: b") == ["Step 1: a", "Step 2: b"]
    assert split_steps("just 4") == ["just 4"] and split_steps("  ") == []
    assert boxed("x \\boxed{1} y \\boxed{\\frac{1}{2}}") == "\\frac{1}{2}" and boxed("\\boxed{3") is None
    assert strip_boxed("so \\boxed{\\frac{1}{2}} and \\boxed{3}.") == "so \\frac{1}{2} and 3."
    assert normalise("1,000") == normalise("1000.") == normalise("$1000$") == normalise("1000.0")
    assert is_correct("2.50", "2.5") and not is_correct(None, "2") and not is_correct("x+1", "x + 2")
    step = "Step 3: One. Two. Three.\nFour. Five. Six."
    head, region = edit_region(step, 4)
    assert head + region == step and region == "Three.\nFour. Five. Six." and edit_region("a = 1", 4) == ("", "a = 1")
    assert edit_region("Step 12: Read it. Then add.", 4) == ("Step 12: ", "Read it. Then add.")  # never the header
    assert error_kinds(edit_region("Step 2: Read the question carefully.", 4)[1]) == ["words"]
    assert error_kinds("5 * 4 = 20") == ["numbers", "substitution", "delete", "symbol", "swap"]
    assert error_kinds("half of 8") == ["number"] and error_kinds("x = y") == ["substitution", "delete", "symbol",
                                                                                 "swap"]
    assert error_kinds("Read the question.") == ["words"]
    assert parse_edit("```text\nStep 1: 2 + 3 = 6.\n```") == "Step 1: 2 + 3 = 6." and parse_edit("no block") is None


def test_rejected_step_keeps_only_real_edits():
    head, region = "Step 2: ", "Then 5 * 4 = 20. So the answer is \\boxed{20}."
    assert rejected_step(head, region, None) == (None, "unparsed")
    for echo in (region, "  Then 5 * 4 =  20.\nSo the answer is \\boxed{20}.", "Then 5 * 4 = 20. So the answer is 20.",
                 "Step 2: " + region):
        assert rejected_step(head, region, echo) == (None, "no_edit"), echo
    edit = "Then 5 * 4 = 24. So the answer is \\boxed{24}."
    assert rejected_step(head, region, "Step 2: " + edit) == (head + edit, None)  # a repeated header is removed
    assert rejected_step("Step 1: ", "2 + 3 = 5.", "2 + 3 = \\boxed{6}.") == ("Step 1: 2 + 3 = 6.", None)
    assert stable_seed(0, "q1", 1) == stable_seed(0, "q1", 1) != stable_seed(0, "q1", 2)


def test_config_and_registry():
    with pytest.raises(ValueError, match="samples must be >= 1, got 0"):
        Config(samples=0)
    assert REGISTRY.entry("rise_pairs").repro == "rise"
    assert build("rise_pairs", overrides=["samples=3"]).cfg.samples == 3


# ---------------------------------------------------------------- stages through the runner


def test_sample_and_edit_stages_end_to_end(tmp_path):
    llm = Scripted()
    summary, out = run_pipeline(tmp_path, llm)
    assert summary.written == 2 and summary.failed == 0
    q1 = out["q1"]
    assert [a["correct"] for a in q1["attempts"]] == [True, False, True, False, True]
    assert q1["attempts"][0]["steps"] == split_steps(RIGHT) and q1["attempts"][1]["answer"] == "24"
    full = q1["full"]
    assert full["chosen"] in (0, 4) and full["rejected"] in (1, 3)  # FIXED (index 2) self-corrects: never chosen
    steps = q1["attempts"][full["chosen"]]["steps"]
    assert [e["k"] for e in q1["edits"]] == [0, 1]
    for e in q1["edits"]:
        head, region = edit_region(steps[e["k"]], 4)
        assert e["error"] in error_kinds(region) and e["step"].startswith(head) and e["step"] != steps[e["k"]]
        assert head.startswith(f"Step {e['k'] + 1}:") and e["dropped"] is None
        assert ("\\boxed" in e["step"]) == ("\\boxed" in steps[e["k"]])  # the region's wrapper is kept
    seeds = [p.seed for p, u in llm.calls if "Current Step" in u]
    assert len(set(seeds)) == len(seeds) == 4  # every edit request has its own seed
    solve_seeds = [p.seed for p, u in llm.calls if "reason step by step" in u]
    assert len(set(solve_seeds)) == 2  # one per question
    edit_prompts = [u for _, u in llm.calls if "Current Step" in u and "Add 2 and 3" in u]
    assert len(edit_prompts) == 2 and steps[0] in edit_prompts[1]  # step 2's prompt shows step 1
    assert out["q2"]["full"] is not None  # q2's gold 24 makes WRONG correct and RIGHT wrong
    _, again = run_pipeline(tmp_path, Scripted(), name="again")
    assert again == out  # seeded choices: the same records again


def test_a_client_without_n_gets_one_request_per_attempt_with_its_own_seed(tmp_path):
    llm = Scripted(n=False)
    _, out = run_pipeline(tmp_path, llm, recs=records()[:1])
    solves = [p for p, u in llm.calls if "reason step by step" in u]
    base = stable_seed(0, "q1")
    assert sorted(p.seed for p in solves) == [base + i for i in range(5)] and all(p.n == 1 for p in solves)
    assert len(out["q1"]["attempts"]) == 5


def test_no_pair_and_no_edit_requests_when_all_attempts_agree(tmp_path):
    llm = Scripted(attempts=[RIGHT] * 5)
    _, out = run_pipeline(tmp_path, llm, recs=records()[:1])
    assert out["q1"]["full"] is None and out["q1"]["edits"] == []
    assert all("Current Step" not in u for _, u in llm.calls)
    assert choose_full_pair({"id": 1, "attempts": [{"correct": True, "steps": ["a"], "text": FIXED},
                                                    {"correct": False, "steps": ["b"], "text": WRONG}]}, 0) is None


def test_a_record_without_a_question_is_a_recorded_error(tmp_path):
    summary, _ = run_pipeline(tmp_path, Scripted(), recs=[{"id": "bad", "answer": "1"}])
    assert summary.failed == 1
    err = json.loads((tmp_path / "out.errors.jsonl").read_text().splitlines()[0])
    assert "needs a 'question'" in err["error"]


# ---------------------------------------------------------------- records -> pairs


def test_pairs_from_records_filters_and_keeps_n_step_pairs(tmp_path):
    _, out = run_pipeline(tmp_path, Scripted())
    pairs, counts = pairs_from_records(list(out.values()), PairConfig(edited_per_problem=1))
    assert counts.full == 2 and counts.step == 2 and len(pairs) == 4
    for p in pairs:
        r = next(r for r in out.values() if r["question"] == p.problem)
        steps = r["attempts"][r["full"]["chosen"]]["steps"]
        if p.kind == "full":
            assert p.chosen == steps and p.rejected == r["attempts"][r["full"]["rejected"]]["steps"]
        else:
            assert p.prefix == steps[:p.step] and p.chosen == [steps[p.step]] and p.rejected != p.chosen
    shuffled, _ = pairs_from_records(list(out.values())[::-1], PairConfig(edited_per_problem=1))
    assert sorted(map(repr, shuffled)) == sorted(map(repr, pairs))  # the record order does not matter
    _, all_steps = pairs_from_records(list(out.values()), PairConfig(edited_per_problem=5))
    assert all_steps.step == 4  # every edit of the 2 x 2 steps survives the filters
    _, given = run_pipeline(tmp_path, Scripted(editor="giveaway"), name="giveaway")
    _, counts = pairs_from_records(list(given.values()))
    assert counts.step == 0 and counts.dropped["giveaway"] == 4
    _, echo = run_pipeline(tmp_path, Scripted(editor="echo"), name="echo")
    _, counts = pairs_from_records(list(echo.values()))
    assert counts.step == 0 and counts.dropped["no_edit"] == 4
    _, broken = run_pipeline(tmp_path, Scripted(editor="broken"), name="broken")
    _, counts = pairs_from_records(list(broken.values()))
    assert counts.step == 0 and counts.dropped["unparsed"] == 4 and counts.full == 2
    with pytest.raises(ValueError, match="lacks"):
        pairs_from_records([{"id": 1, "question": "q"}])


# ---------------------------------------------------------------- a real server


def write_model(folder):
    torch.manual_seed(0)
    model = Transformer(TransformerConfig(vocab_size=259, dim=32, n_layers=2, n_heads=4, n_kv_heads=2,
                                          max_seq_len=2048, tie_embeddings=False))
    save_model(folder / "model", model, to_dict(model.cfg))
    ByteTokenizer(["<bos>", "<eos>", "<pad>"]).save(folder / "model" / "tokenizer.json")
    return str(folder)


def test_both_stages_against_a_real_lmlab_serve(tmp_path):
    """A random byte model answers garbage: attempts are graded wrong, edits have no ``` block; every request
    goes over HTTP to the served model, and the runner writes each record."""
    client = LocalClient(write_model(tmp_path / "run"), name="tiny")
    cfg = Config(samples=2, max_tokens=12, edit_max_tokens=8, temperature=1.0)
    with background(client) as port:
        llm = make_client(f"http://127.0.0.1:{port}/v1?model=tiny")
        summary, out = run_pipeline(tmp_path, llm, cfg)
        assert summary.written == 2 and summary.ledger.requests >= 2
        assert all(len(r["attempts"]) == 2 and r["full"] is None for r in out.values())
        src = tmp_path / "seeded.jsonl"  # stage 2 alone on records with a correct and a wrong attempt
        src.write_text(json.dumps({"id": "s", "question": "2+3?", "answer": "5", "attempts": [
            {"text": RIGHT, "steps": split_steps(RIGHT), "answer": "5", "correct": True},
            {"text": WRONG, "steps": split_steps(WRONG), "answer": "6", "correct": False}]}) + "\n")
        s2 = run(Pipeline("edit", [edit_stage(cfg)]), src, tmp_path / "edited.jsonl", llm)
    assert s2.written == 1 and s2.ledger.requests == 2  # one edit request per step, over HTTP
    rec = json.loads((tmp_path / "edited.jsonl").read_text())
    assert [e["k"] for e in rec["edits"]] == [0, 1] and all(isinstance(e["raw"], str) for e in rec["edits"])
    pairs, counts = pairs_from_records([rec])
    assert counts.full == 1 and counts.step + sum(counts.dropped.values()) == 2
