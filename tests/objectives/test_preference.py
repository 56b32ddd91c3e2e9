"""Response log-probs == one forward per token over the exact prefix; DPO / CE losses and gradients == naive
per-example references; cached reference log-probs == a live reference; the cache refuses what it was not made of."""

import dataclasses
import math

import pytest
import torch

from lmlab.core.checkpoint import CheckpointError
from lmlab.core.data import ExampleBatches
from lmlab.core.train import TrainConfig, Trainer
from lmlab.core.transformer import Transformer
from lmlab.objectives.dpo import DPO, CEConfig, CEReward, Config, ReferenceCache
from lmlab.objectives.preference import (
    dpo_loss,
    dpo_pairs,
    naive_ce_loss,
    naive_dpo_loss,
    naive_sequence_logprob,
    sequence_logprobs,
    token_logprobs,
)
from lmlab.objectives.preference import response_batch as batch


def test_sequence_logprobs_equal_the_naive_per_token_reference(tiny_cfg):
    torch.manual_seed(0)
    model = Transformer(tiny_cfg).double().eval()
    rows = [([1, 2, 3], [4, 5]), ([7], [8, 9, 10, 11]), ([5, 5, 5, 5], [6])]
    ids, mask = batch(rows)
    with torch.no_grad():
        got = sequence_logprobs(model, ids, mask)
        want = torch.tensor([naive_sequence_logprob(model, p, r) for p, r in rows], dtype=got.dtype)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    per_token = token_logprobs(model, ids, mask)
    assert per_token.shape == (3, ids.shape[1] - 1) and (per_token[~mask[:, 1:]] == 0).all()


def test_bad_masks_are_named(tiny_cfg):
    model = Transformer(tiny_cfg)
    ids, mask = batch([([1, 2], [3]), ([4], [5, 6])])
    mask[1] = False
    with pytest.raises(ValueError, match=r"rows \[1\] have an empty response"):
        token_logprobs(model, ids, mask)
    mask[1, 0] = True
    with pytest.raises(ValueError, match="position 0"):
        token_logprobs(model, ids, mask)


# ------------------------------------------------------------------------------------------ DPO, CE, cache
def models(cfg, seed: int = 0) -> tuple[Transformer, Transformer]:
    """A policy and a different reference (the policy's weights plus noise)."""
    torch.manual_seed(seed)
    policy, reference = Transformer(cfg), Transformer(cfg)
    reference.load_state_dict(policy.state_dict())
    with torch.no_grad():
        for p in reference.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return policy, reference


PAIRS = [([1, 2, 3], [4, 5], [6, 7, 8]), ([7], [8, 9, 10, 11], [8, 9, 3]), ([5, 5, 5, 5], [6], [2])]


def pair_batch(pairs=PAIRS) -> dict[str, torch.Tensor]:
    ci, cm = batch([(p, c) for p, c, _ in pairs])
    ri, rm = batch([(p, r) for p, _, r in pairs])
    return {"chosen_ids": ci, "chosen_mask": cm, "rejected_ids": ri, "rejected_mask": rm}


def grads(model) -> list[torch.Tensor]:
    out = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    return out


def test_dpo_loss_and_gradients_equal_the_naive_per_example_reference(tiny_cfg):
    policy, reference = models(tiny_cfg)
    for beta, nll_coef in ((0.5, 0.0), (0.1, 0.7)):
        out = DPO(Config(beta=beta, nll_coef=nll_coef), reference=reference)(policy, pair_batch())
        out.loss.backward()
        got = grads(policy)
        want_loss = naive_dpo_loss(policy, reference, PAIRS, beta, nll_coef)
        want_loss.backward()
        torch.testing.assert_close(out.loss, want_loss, rtol=1e-5, atol=1e-6)
        for g, w in zip(got, grads(policy)):
            torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-6)
        assert all(p.grad is None and not p.requires_grad for p in reference.parameters())
    assert set(out.metrics) >= {"reward_chosen", "reward_rejected", "reward_margin", "reward_accuracy", "nll"}


def test_cached_reference_equals_live_reference(tiny_cfg, tmp_path):
    """Rollouts cached once (rows in any batch order) -> the same loss and gradients as a live reference forward."""
    policy, reference = models(tiny_cfg)
    rollouts = [(p, c) for p, c, _ in PAIRS] + [(p, r) for p, _, r in PAIRS]
    ids, mask = batch(rollouts)
    ReferenceCache.build(reference, ids, mask, batch_size=4).save(tmp_path / "ref")
    cache = ReferenceCache.load(tmp_path / "ref", reference, ids, mask, policy=policy)
    b = pair_batch()
    live = DPO(Config(beta=0.3, nll_coef=1.0), reference=reference)(policy, b)
    live.loss.backward()
    g_live = grads(policy)
    cached_batch = {**b, "ref_chosen": cache.sums[:3], "ref_rejected": cache.sums[3:]}
    cached = DPO(Config(beta=0.3, nll_coef=1.0))(policy, cached_batch)
    cached.loss.backward()
    torch.testing.assert_close(cached.loss, live.loss, rtol=0, atol=1e-6)
    for g, w in zip(grads(policy), g_live):
        torch.testing.assert_close(g, w, rtol=0, atol=1e-6)
    assert cached.metrics == pytest.approx(live.metrics, abs=1e-6)
    per_token = ReferenceCache.build(reference, ids, mask, per_token=True)
    torch.testing.assert_close(per_token.tokens.sum(-1), per_token.sums)
    assert per_token.tokens.shape == (6, ids.shape[1] - 1)


def test_identical_policy_and_reference_give_zero_rewards_and_log2(tiny_cfg):
    policy, _ = models(tiny_cfg)
    reference, _ = models(tiny_cfg)  # same seed: same weights, another object
    out = DPO(Config(beta=0.05), reference=reference)(policy, pair_batch())
    assert out.loss.item() == pytest.approx(math.log(2), abs=1e-7)
    assert out.metrics["reward_chosen"] == 0 and out.metrics["reward_rejected"] == 0
    assert out.metrics["reward_accuracy"] == 0.0
    ce = CEReward(CEConfig(beta=0.05), reference=reference)
    ids, mask = batch([(p, c) for p, c, _ in PAIRS])
    assert ce(policy, {"ids": ids, "response_mask": mask, "label": torch.tensor([1, 0, 1])}).loss.item() == \
        pytest.approx(math.log(2), abs=1e-7)


def test_ce_loss_and_gradients_equal_the_naive_sigmoid_bce(tiny_cfg):
    policy, reference = models(tiny_cfg)
    rows = [(p, c, lab) for (p, c, _), lab in zip(PAIRS, (1, 0, 1))]
    ids, mask = batch([(p, c) for p, c, _ in rows])
    out = CEReward(CEConfig(beta=0.5), reference=reference)(
        policy, {"ids": ids, "response_mask": mask, "label": torch.tensor([1, 0, 1])})
    out.loss.backward()
    got = grads(policy)
    want = naive_ce_loss(policy, reference, rows, 0.5)
    want.backward()
    torch.testing.assert_close(out.loss, want, rtol=1e-5, atol=1e-6)
    for g, w in zip(got, grads(policy)):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-6)


def test_bad_preference_inputs_are_named(tiny_cfg):
    policy, reference = models(tiny_cfg)
    for bad in (0, -0.1):
        with pytest.raises(ValueError, match="beta must be a positive number"):
            Config(beta=bad)
        with pytest.raises(ValueError, match="beta must be a positive number"):
            CEConfig(beta=bad)
        with pytest.raises(ValueError, match="beta must be a positive number"):
            dpo_loss(*torch.zeros(4, 2), beta=bad)
    same = pair_batch([([1, 2], [3, 4], [3, 5]), ([1, 2], [3, 4], [3, 4])])
    with pytest.raises(ValueError, match=r"pairs \[1\] have identical chosen and rejected"):
        DPO(reference=reference)(policy, same)
    empty = pair_batch()
    empty["rejected_mask"][2] = False
    with pytest.raises(ValueError, match=r"rows \[5\] have an empty response"):  # row 3 + 2 of the joint forward
        DPO(reference=reference)(policy, empty)
    other = Transformer(dataclasses.replace(tiny_cfg, vocab_size=70))
    with pytest.raises(ValueError, match="reference has a vocabulary of 70 tokens but the policy has 61"):
        DPO(reference=other)(policy, pair_batch())
    with pytest.raises(ValueError, match="not the policy itself"):
        DPO(reference=policy)(policy, pair_batch())
    with pytest.raises(ValueError, match="needs ref_chosen / ref_rejected"):
        DPO()(policy, pair_batch())


def test_reference_cache_refuses_other_data_other_reference_other_vocab_and_a_torn_file(tiny_cfg, tmp_path):
    policy, reference = models(tiny_cfg)
    ids, mask = batch([(p, c) for p, c, _ in PAIRS])
    ReferenceCache.build(reference, ids, mask).save(tmp_path / "ref")
    other_ids = ids.clone()
    other_ids[0, 1] += 1
    with pytest.raises(ValueError, match="made from other data"):
        ReferenceCache.load(tmp_path / "ref", reference, other_ids, mask)
    with pytest.raises(ValueError, match="made with another reference"):
        ReferenceCache.load(tmp_path / "ref", policy, ids, mask)
    small = Transformer(dataclasses.replace(tiny_cfg, vocab_size=70))
    with pytest.raises(ValueError, match="vocabulary of 61 tokens but the policy has 70"):
        ReferenceCache.load(tmp_path / "ref", reference, ids, mask, policy=small)
    blob = (tmp_path / "ref" / "reference_logprobs.safetensors").read_bytes()
    (tmp_path / "ref" / "reference_logprobs.safetensors").write_bytes(blob[:-4] + b"\0\0\0\0")
    with pytest.raises(CheckpointError, match="does not match its meta.json"):
        ReferenceCache.load(tmp_path / "ref", reference, ids, mask)


def test_dpo_pairs_are_correct_x_wrong_per_prompt_and_drop_one_sided_prompts():
    groups = ["a", "a", "a", "b", "b", "c", "c", "d"]
    correct = [True, False, False, True, True, False, False, True]
    pairs, counts = dpo_pairs(groups, correct)
    assert pairs == [(0, 1), (0, 2)]
    assert (counts.prompts, counts.kept, counts.all_correct, counts.all_wrong, counts.pairs) == (4, 1, 2, 1, 2)
    pairs, counts = dpo_pairs([0, 0, 0, 0], [True, False, True, False])
    assert pairs == [(0, 1), (0, 3), (2, 1), (2, 3)] and counts.pairs == 4
    with pytest.raises(ValueError, match="2 group ids but 1 labels"):
        dpo_pairs([0, 1], [True])


def test_dpo_runs_in_the_shared_trainer_with_cached_reference_and_leaves_the_reference_alone(tiny_cfg):
    policy, reference = models(tiny_cfg)
    before = {k: v.clone() for k, v in reference.state_dict().items()}
    b = pair_batch()
    cache = ReferenceCache.build(reference, *batch([(p, c) for p, c, _ in PAIRS] + [(p, r) for p, _, r in PAIRS]))
    data = ExampleBatches({**b, "ref_chosen": cache.sums[:3], "ref_rejected": cache.sums[3:]}, batch_size=3)
    trainer = Trainer(policy, DPO(Config(beta=0.5)), data, TrainConfig(steps=20, lr=3e-3, warmup_steps=0,
                                                                       progress=False))
    history = trainer.fit(resume=False)
    assert history[-1]["reward_margin"] > history[0]["reward_margin"] and history[0]["loss"] > history[-1]["loss"]
    assert all(torch.equal(v, before[k]) for k, v in reference.state_dict().items())
