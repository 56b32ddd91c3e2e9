"""Repro-local logic of repro/implicit_prm: the batched KV-cache sampler, response masks and step ends, and the
best-of-N / vote scoring used by its metrics."""

from __future__ import annotations

import pytest
import torch

from lmlab.core.sampling import probs
from lmlab.core.transformer import Transformer, TransformerConfig
from lmlab.decoding.reference import greedy_fill
from lmlab.harness import repro_module

sampler = repro_module("implicit_prm", "sampler")
ex = repro_module("implicit_prm", "experiment")
rw = repro_module("implicit_prm", "rewards")
ev = repro_module("implicit_prm", "evaluate")


def lm(seed: int = 0, vocab: int = 11) -> Transformer:
    torch.manual_seed(seed)
    model = Transformer(TransformerConfig(vocab_size=vocab, dim=32, n_layers=2, n_heads=4, max_seq_len=32,
                                          tie_embeddings=False))
    with torch.no_grad():
        model.lm_head.weight.normal_(0.0, 0.5)
    return model.double().eval()


def rows(n: int, plen: int = 3, L: int = 9, vocab: int = 11) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(0, vocab, (n, L), generator=torch.Generator().manual_seed(5))
    maskable = torch.zeros(n, L, dtype=torch.bool)
    maskable[:, plen:] = True
    return ids, maskable


def naive_fill(model, ids, maskable, temperature, generator):
    """No cache: one full forward over the prefix per position, the same draws in the same order."""
    out, p = ids.clone(), int((~maskable[0]).sum())
    for j in range(p, ids.shape[1]):
        out[:, j] = torch.multinomial(probs(model(out[:, :j])[:, -1], temperature), 1, generator=generator)[:, 0]
    return out


def test_sampler_with_the_cache_draws_what_a_full_recomputation_draws():
    model, (ids, maskable) = lm(), rows(64)
    got = sampler.sample_fill(model, ids, maskable, eos_id=99, temperature=1.0,
                              generator=torch.Generator().manual_seed(3))
    want = naive_fill(model, ids, maskable, 1.0, torch.Generator().manual_seed(3))
    assert torch.equal(got, want)
    assert torch.equal(got[:, :3], ids[:, :3])  # the prompt is kept
    assert got[:, 3:].unique().numel() > 3  # not degenerate


def test_first_sampled_token_follows_the_model_distribution():
    model, (ids, maskable) = lm(1), rows(6000)
    ids[:] = ids[0]  # one prompt, 6000 draws
    got = sampler.sample_fill(model, ids, maskable, eos_id=99, generator=torch.Generator().manual_seed(0))
    freq = torch.bincount(got[:, 3], minlength=11).double() / len(got)
    p = probs(model(ids[:1, :3])[:, -1], 1.0)[0].double()
    assert (freq - p).abs().sum() / 2 < 0.03  # total variation; 6000 draws give ~0.01 noise


def test_near_zero_temperature_is_greedy():
    model, (ids, maskable) = lm(2), rows(16)
    got = sampler.sample_fill(model, ids, maskable, eos_id=99, temperature=1e-6,
                              generator=torch.Generator().manual_seed(0))
    assert torch.equal(got, greedy_fill(model, ids, maskable, eos_id=None)[0])


def test_sampler_refuses_mismatched_shapes():
    ids, maskable = rows(4)
    with pytest.raises(ValueError, match="must both be"):
        sampler.sample_fill(lm(), ids, maskable[:, :-1], eos_id=0)


def test_clean_rows_masks_the_answer_and_its_eos_and_pads_the_rest():
    ids = torch.tensor([[1, 2, 9, 4, 5, 7, 3, 3], [1, 2, 9, 4, 4, 4, 4, 4]])  # 9 = <sep>, 7 = <eos>, 0 = <pad>
    out, mask, last = ex.clean_rows(ids, [3, 3], eos_id=7, pad_id=0)
    assert out[0].tolist() == [1, 2, 9, 4, 5, 7, 0, 0]
    assert mask[0].tolist() == [False] * 3 + [True] * 3 + [False] * 2
    assert mask[1].tolist() == [False] * 3 + [True] * 5  # no <eos>: the response runs to the end
    assert last.tolist() == [5, 7]


def test_step_ends_are_the_commas_and_the_last_response_token():
    task = ex.make_task({"chain_steps": 2, "ops": "+", "modulus": 10})
    codec = ex.make_codec(task)
    enc = codec.encode([type("E", (), {"prompt": "3+4+5", "target": "3+4=7,7+5=2"})()])
    ids = enc["ids"]
    start = codec.answer_starts(ids)[0]
    ids, mask, last = ex.clean_rows(ids, [start], codec.eos_id, codec.pad_id)
    ro = ex.Rollouts(["3+4+5"], ["3+4=7,7+5=2"], ids, mask, last, [True], [True], [2], [None], [2], 1)
    comma = codec.tok.encode(",")[0]
    assert ex.step_ends(ro, comma) == [[start + 5, start + 11]]  # the ',' and the <eos>
    assert int(ids[0, start + 11]) == codec.eos_id


def test_bon_accuracy_takes_the_first_of_tied_best_scores():
    assert rw.bon_accuracy([1.0, 1.0, 0.0, 0.0, 2.0, 2.0], [False, True, True, False, True, False], 3) == 0.5
    assert rw.bon_accuracy([0.0, 1.0, 0.0, 0.0, 2.0, 2.0], [False, True, True, False, True, False], 3) == 1.0
    assert rw.steps_for(100, 32, 2) == 8  # two epochs of ceil(100 / 32) batches


def test_a_voted_answer_is_right_only_if_a_correct_sample_gives_it():
    ro = ex.Rollouts(["p"] * 3, ["", "", ""], torch.zeros(3, 2, dtype=torch.long), torch.ones(3, 2, dtype=torch.bool),
                     torch.ones(3, dtype=torch.long), [False, True, False], [False, True, False], [5, 3, 5],
                     [0, None, 1], [1, 1, 1], 3)
    assert ev.baselines(ro)["majority"] == 0.0  # 5 wins the vote but is wrong
    assert ev.weighted(ro, [-10.0, 10.0, -10.0]) == 1.0  # sigmoid weights: 3 gets ~1, 5 gets ~0
    assert ev.vote_ok(ro, range(3), None) is False


def test_the_orm_value_starts_at_zero_and_leaves_the_policy_untouched():
    policy = lm(3).float()
    before = {k: v.clone() for k, v in policy.state_dict().items()}
    model = rw.value_model(policy, value_id=10)
    ids, _ = rows(5)
    v = rw.orm_values(model, ids, torch.tensor([8, 7, 6, 5, 4]), 10)
    assert torch.equal(v, torch.zeros(5))
    assert all(torch.equal(before[k], v2) for k, v2 in policy.state_dict().items())


def test_frozen_orm_features_are_the_final_normed_state_at_each_rows_last_response_token():
    policy = lm(4).float()
    ids, _ = rows(5)
    last = torch.tensor([8, 3, 6, 5, 4])
    ro = ex.Rollouts(["p"] * 5, [""] * 5, ids, torch.ones(5, 9, dtype=torch.bool), last, [True] * 5, [True] * 5,
                     [0] * 5, [None] * 5, [1] * 5, 5)
    got = rw.last_features(policy, ro)  # (5, 32)
    for r in range(5):  # one row alone, truncated at its own last token: causal, so the same state
        want = policy.hidden(ids[r:r + 1, :int(last[r]) + 1])[0, -1]
        assert torch.allclose(got[r], want, atol=1e-5)
    assert torch.equal(rw.FrozenValueHead(32)(got), torch.zeros(5))  # every value starts at 0


def test_the_gate_takes_the_orm_with_the_better_validation_bon_then_bce_and_the_full_fine_tune_on_a_tie():
    info = {"orm_val_bon": 0.2, "orm_val_bce": 0.66, "orm_frozen_val_bon": 0.25, "orm_frozen_val_bce": 0.70}
    assert rw.orm_choice(info) == 1
    assert rw.orm_choice(info | {"orm_frozen_val_bon": 0.15}) == 0
    assert rw.orm_choice(info | {"orm_frozen_val_bon": 0.2, "orm_frozen_val_bce": 0.65}) == 1  # tie: lower BCE
    assert rw.orm_choice(info | {"orm_frozen_val_bon": 0.2, "orm_frozen_val_bce": 0.66}) == 0  # full tie


def fake_rollouts(n_prompts: int, n: int, seed: int) -> ex.Rollouts:
    """One shared prefix; the last token (1..10) alone decides the label (< 5 = correct); every prompt has both."""
    g = torch.Generator().manual_seed(seed)
    R = n_prompts * n
    tok = torch.randint(1, 11, (R,), generator=g)
    tok[::n], tok[1::n] = 8, 2  # each prompt: a wrong sample first (a constant score picks it), a correct one
    ids = torch.full((R, 9), 6)
    ids[:, 8] = tok
    ok = [bool(t < 5) for t in tok]
    return ex.Rollouts(["p"] * R, [""] * R, ids, torch.ones(R, 9, dtype=torch.bool), torch.full((R,), 8), ok, ok,
                       [0] * R, [None] * R, [1] * R, n)


def test_the_frozen_orm_learns_a_label_its_features_carry_and_leaves_the_trunk_alone():
    policy = lm(5).float()
    before = {k: v.clone() for k, v in policy.state_dict().items()}
    cfg = {"rm_batch": 16, "orm_frozen_lrs": [1e-3, 3e-2], "orm_frozen_max_epochs": 6}
    head, info = rw.train_frozen_orm(policy, fake_rollouts(48, 4, 0), fake_rollouts(16, 4, 1), cfg, seed=0)
    assert info["orm_frozen_val_bon"] == 1.0 and info["orm_frozen_val_bce"] < 0.3
    assert len(info["orm_frozen_grid"]) == 12  # 2 lrs x 6 epochs
    test = fake_rollouts(16, 4, 2)
    with torch.no_grad():
        assert rw.bon_accuracy(head(rw.last_features(policy, test)), test.final_ok, test.n) == 1.0
    assert all(torch.equal(before[k], v) for k, v in policy.state_dict().items())


def test_the_orm_gate_is_computed_against_the_orm_chosen_per_seed_on_validation():
    run = repro_module("implicit_prm", "run")
    grids = {k: [] for k in ("orm_grid", "orm_frozen_grid", "ce_val_grid", "dpo_val_grid", "ce1_val_grid")}
    base = {"wmaj_ce_min": 0.9, "majority": 0.9, "pass1": 0.4, "bon_ce_min": 0.9, "disjoint_prompt_sets": 1.0,
            "strict_implies_final": 1.0, "sum_identity_err": 0.0} | grids
    runs = [base | {"bon_orm": 0.1, "bon_orm_frozen": 0.3, "orm_choice": 1, "bon_orm_chosen": 0.3},
            base | {"bon_orm": 0.2, "bon_orm_frozen": 0.5, "orm_choice": 0, "bon_orm_chosen": 0.2}]
    m = run.summarise({"seeds": [3, 4]}, runs)
    assert m["bon_orm_chosen"] == pytest.approx(25.0) and m["bon_orm_frozen_s3"] == pytest.approx(30.0)
    assert m["bon_ce_min_minus_orm"] == pytest.approx(90.0 - 25.0)  # not vs bon_orm (15) nor the test-best (40)
    assert (m["orm_choice_s3"], m["orm_choice_s4"]) == (1, 0)
