"""RISE pairs: full pairs from mixed problems, step pairs differ in exactly the edited step (which the chains
verifier marks as the first error), filters, counts, determinism, and a DPO batch of them."""

import random

import pytest
import torch

from lmlab.objectives.dpo import DPO
from lmlab.objectives.rise import Attempt, Config, build_pairs, chain_editor, encode_pairs, keep_edit
from lmlab.tasks import chains

CFG = chains.Config(steps=4)
TASK = chains.ChainTask(CFG)


def attempts(n_problems: int = 6, per: int = 4, seed: int = 0) -> list[Attempt]:
    rng = random.Random(seed)
    out = []
    for ex in TASK.generate(n_problems, seed):
        for _ in range(per):
            steps = chains.noisy_steps(ex.prompt, CFG, 0.3, rng)
            text = chains.format_steps(steps)
            out.append(Attempt(ex.prompt, text.split(","), TASK.verify(ex.prompt, text)))
    return out


@pytest.mark.parametrize("kind", chains.ERROR_KINDS)
def test_every_error_kind_makes_the_step_wrong_given_its_inputs(kind):
    rng = random.Random(0)
    for ex in TASK.generate(30, 1):
        steps = chains.solve(ex.prompt, CFG)
        for k, step in enumerate(steps):
            try:
                edited = chains.edit_step(step, kind, CFG, rng)
            except ValueError:
                assert kind == "delete" and step[0] == step[3]  # only a no-op operation cannot lose its term
                continue
            written = steps[:k] + [edited]
            assert chains.first_error(ex.prompt, written, CFG) == k, (kind, step, edited)


def test_full_and_step_pairs():
    data = attempts()
    pairs, counts = build_pairs(data, chain_editor(CFG), Config(edited_per_problem=2, seed=3))
    mixed = {a.problem for a in data if a.correct} & {a.problem for a in data if not a.correct}
    assert counts.problems == 6 and counts.with_both == len(mixed) == counts.full > 0
    assert counts.step + sum(counts.dropped.values()) == 2 * counts.full
    full = [p for p in pairs if p.kind == "full"]
    assert {p.problem for p in full} == mixed
    for p in full:
        assert TASK.verify(p.problem, ",".join(p.chosen)) and not TASK.verify(p.problem, ",".join(p.rejected))
    step = [p for p in pairs if p.kind == "step"]
    assert step and all(p.error in chains.ERROR_KINDS for p in step)
    for p in step:
        chosen_full = next(f.chosen for f in full if f.problem == p.problem)
        assert p.prefix == chosen_full[: p.step] and p.chosen == [chosen_full[p.step]] and p.rejected != p.chosen
        assert chains.first_error(p.problem, ",".join(p.prefix + p.rejected), CFG) == p.step
    again, _ = build_pairs(data, chain_editor(CFG), Config(edited_per_problem=2, seed=3))
    assert again == pairs  # seeded


def test_filters_and_bad_input():
    cfg = Config(min_similarity=0.9)
    assert keep_edit("3+4=7", "3+4=7", cfg) == "no_edit"
    assert keep_edit("3+4=7", "3+4=8 (wrong)", cfg) == "giveaway"
    assert keep_edit("3+4=7", "9-1=2", cfg) == "similarity"
    assert keep_edit("3+4=7", "3+4=8", Config()) is None
    with pytest.raises(ValueError, match="edited_per_problem must be >= 0"):
        Config(edited_per_problem=-1)
    with pytest.raises(ValueError, match="not among"):
        chain_editor(CFG, ["typo"])
    with pytest.raises(ValueError, match="has no steps"):
        build_pairs([Attempt("1+2", [], True)], chain_editor(CFG))


def test_encoded_pairs_train_with_dpo(tiny_cfg):
    from lmlab.core.transformer import Transformer

    pairs, _ = build_pairs(attempts(), chain_editor(CFG), Config(edited_per_problem=1))
    alphabet = "0123456789+-=,|"
    batch = encode_pairs(pairs, lambda s: [alphabet.index(c) + 1 for c in s], prompt_end="|")
    step = next(i for i, p in enumerate(pairs) if p.kind == "step")
    p = pairs[step]
    n_resp = int(batch["chosen_mask"][step].sum())
    assert n_resp == len(p.chosen[0]) and int(batch["rejected_mask"][step].sum()) == len(p.rejected[0])
    torch.manual_seed(0)
    policy, ref = Transformer(tiny_cfg), Transformer(tiny_cfg)
    ref.load_state_dict(policy.state_dict())
    out = DPO(reference=ref)(policy, batch)
    assert out.loss.item() == pytest.approx(0.6931, abs=1e-4)  # policy == reference: log 2
