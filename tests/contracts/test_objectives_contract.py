"""Objective contract: every objective trains with the one Trainer and resumes exactly.

A run of 4 steps straight must equal a run stopped after its step-2 checkpoint (the batch source fails at
step 2, as a killed job would) plus a new Trainer that resumes from that checkpoint: identical losses and
identical final weights. The model and batches come from the objective's caps (``OBJECTIVE_SETUPS``).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import OBJECTIVE_SETUPS, make_objective, names_of, objective_setup

from lmlab.core.train import TrainConfig, Trainer
from lmlab.objectives import REGISTRY as OBJECTIVES


class Killed(Exception):
    pass


class DiesAt:
    """A batch source that fails when asked for step ``step`` (the job dies there)."""

    def __init__(self, data, step: int):
        self.data, self.step = data, step

    def get_batch(self, step: int, *args, **kwargs):
        if step == self.step:
            raise Killed(f"killed at step {step}")
        return self.data.get_batch(step, *args, **kwargs)


def trainer(name: str, run_dir: Path, dies_at: int | None = None) -> Trainer:
    model, data = objective_setup(name, OBJECTIVES.entry(name).caps)
    cfg = TrainConfig(steps=4, lr=1e-2, warmup_steps=1, ckpt_every=2, log_every=1, run_dir=str(run_dir),
                      progress=False)
    data = DiesAt(data, dies_at) if dies_at is not None else data
    return Trainer(model, make_objective(name), data, cfg, model_config={"objective": name})


TRAINABLE = [n for n in names_of("objectives") if not {"scorer", "data"} & set(OBJECTIVES.entry(n).caps)]


@pytest.mark.parametrize("name", TRAINABLE)
def test_objectives_train_and_resume_exactly(name, tmp_path):
    torch.manual_seed(1)
    straight = trainer(name, tmp_path / "straight")
    straight.fit()
    torch.manual_seed(1)
    first = trainer(name, tmp_path / "resumed", dies_at=2)
    with pytest.raises(Killed):
        first.fit()
    torch.manual_seed(12345)  # the checkpoint's RNG state, not this seed, must drive the remaining steps
    second = trainer(name, tmp_path / "resumed")
    second.fit(resume=True)
    assert [r["step"] for r in first.history + second.history] == [1, 2, 3, 4]
    losses = [r["loss"] for r in straight.history]
    assert all(torch.isfinite(torch.tensor(losses))), losses
    assert [r["loss"] for r in first.history + second.history] == losses
    want, got = straight.model.state_dict(), second.model.state_dict()
    assert want.keys() == got.keys()
    changed = [k for k in want if not torch.equal(want[k], got[k])]
    assert not changed, f"{name}: weights differ after resuming: {changed[:5]}"
    init = objective_setup(name, OBJECTIVES.entry(name).caps)[0].state_dict()
    assert any(not torch.equal(init[k], got[k]) for k in init), f"{name}: training left every weight unchanged"


def test_an_objective_with_unknown_caps_names_the_fixture_to_add():
    with pytest.raises(LookupError, match=r"'video'.*add one to OBJECTIVE_SETUPS"):
        objective_setup("new_objective", ("video",))


def test_every_objective_fixture_is_used():
    for caps in OBJECTIVE_SETUPS:
        name = next((n for n, e in OBJECTIVES.items() if frozenset(e.caps) == caps), None)
        assert name is not None, f"no objective uses the fixture for caps {sorted(caps)}: remove it"
