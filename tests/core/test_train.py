import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from lmlab.core.checkpoint import CheckpointError
from lmlab.core.config import to_dict
from lmlab.core.data import TokenWindows
from lmlab.core.train import LossOutput, TrainConfig, Trainer, TrainingDiverged, lr_at
from lmlab.core.transformer import Transformer
from lmlab.objectives.causal_lm import CausalLM

TOKENS = torch.arange(4000) % 23  # a learnable periodic stream


def make(run_dir, cfg_model, steps=8, **kw):
    torch.manual_seed(0)
    model = Transformer(cfg_model)
    cfg = TrainConfig(steps=steps, lr=1e-2, warmup_steps=2, grad_accum=2, ckpt_every=3, run_dir=str(run_dir),
                      log_every=1, progress=False, **kw)
    return Trainer(model, CausalLM(), TokenWindows(TOKENS, 4, 16), cfg, model_config=to_dict(cfg_model))


def test_loss_decreases(tmp_path, tiny_cfg):
    hist = make(tmp_path, tiny_cfg, steps=30).fit()
    assert hist[-1]["loss"] < hist[0]["loss"] - 0.5


def test_exact_resume(tmp_path, tiny_cfg):
    ref = make(tmp_path / "a", tiny_cfg).fit()
    t = make(tmp_path / "b", tiny_cfg)
    step = t.train_step

    def killed():
        if t.step == 5:
            raise KeyboardInterrupt
        return step()

    t.train_step = killed
    with pytest.raises(KeyboardInterrupt):
        t.fit()
    resumed = make(tmp_path / "b", tiny_cfg)
    resumed.fit()
    assert resumed.history[0]["step"] == 4  # restarted from the step-3 checkpoint
    logged = [json.loads(line) for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in logged] == [r["loss"] for r in ref]  # bit-identical curve


def test_resume_with_other_config_is_an_error(tmp_path, tiny_cfg):
    import dataclasses

    make(tmp_path, tiny_cfg, steps=3).fit()
    with pytest.raises(CheckpointError, match="dim"):
        make(tmp_path, dataclasses.replace(tiny_cfg, dim=64), steps=6).fit()


def test_nan_stops_with_step_and_keeps_checkpoint(tmp_path, tiny_cfg):
    t = make(tmp_path, tiny_cfg, steps=10)
    good = t.objective

    def objective(model, batch):
        out = good(model, batch)
        return LossOutput(out.loss * (float("nan") if t.step >= 4 else 1.0))

    t.objective = objective
    with pytest.raises(TrainingDiverged, match="step 4"):
        t.fit()
    meta = json.loads((tmp_path / "checkpoint" / "meta.json").read_text())
    assert meta["step"] == 3
    assert not list(Path(tmp_path).glob("*.tmp"))


def test_schedules():
    c = TrainConfig(steps=100, warmup_steps=10, lr=1.0, min_lr_ratio=0.1)
    assert lr_at(0, c) == pytest.approx(0.1) and lr_at(9, c) == pytest.approx(1.0)
    assert lr_at(99, c) == pytest.approx(0.1, abs=1e-3)
    w = TrainConfig(steps=100, warmup_steps=10, lr=1.0, min_lr_ratio=0.0, schedule="wsd", decay_frac=0.2)
    assert lr_at(50, w) == 1.0 and lr_at(79, w) == 1.0 and lr_at(90, w) == pytest.approx(0.5)


class LinearProbe(nn.Module):
    """loss = mean_i <x_i, w>: per-example gradient x_i, so the noise scale is known in closed form."""

    def __init__(self, d):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(d))


class GaussianBatches:
    def __init__(self, mu, sigma, b):
        self.mu, self.sigma, self.b = mu, sigma, b

    def get_batch(self, step, micro=0, rank=0, world=1):
        g = torch.Generator().manual_seed(step * 1000 + micro)
        return {"x": self.mu + self.sigma * torch.randn(self.b, self.mu.numel(), generator=g)}


def test_gradient_noise_scale_matches_closed_form():
    d, sigma = 16, 2.0
    mu = torch.full((d,), 0.5)
    expected = d * sigma**2 / float(mu @ mu)  # B_simple = tr(Sigma) / |G|^2 = 16
    model = LinearProbe(d)
    cfg = TrainConfig(steps=300, lr=1e-9, warmup_steps=0, grad_accum=4, noise_scale_every=1, progress=False,
                      grad_clip=0)
    t = Trainer(model, lambda m, b: LossOutput((b["x"] @ m.w).mean()), GaussianBatches(mu, sigma, 8), cfg)
    t.fit(resume=False)
    assert t.noise["b_simple"] == pytest.approx(expected, rel=0.3)


DDP_SCRIPT = r"""
import json, sys, torch
torch.set_num_threads(1)
from lmlab.core.train import Trainer, TrainConfig, init_distributed
from lmlab.core.transformer import Transformer, TransformerConfig
from lmlab.core.data import TokenWindows
from lmlab.objectives.causal_lm import CausalLM

class Keyed(TokenWindows):  # DDP rank r == single-process micro-batch r: identical global batches
    def get_batch(self, step, micro=0, rank=0, world=1):
        return super().get_batch(step, micro + rank, 0, 1)

rank, world = init_distributed()
torch.manual_seed(0)
m = Transformer(TransformerConfig(vocab_size=23, dim=32, n_layers=2, n_heads=4, max_seq_len=32))
accum = 2 // world
cfg = TrainConfig(steps=4, lr=1e-2, warmup_steps=1, grad_accum=accum, progress=False, grad_clip=0)
Trainer(m, CausalLM(), Keyed(torch.arange(3000) % 23, 4, 16), cfg).fit(resume=False)
if rank == 0:
    json.dump({k: v.tolist() for k, v in m.state_dict().items() if "layers.0.attn.q_proj" in k},
              open(sys.argv[1], "w"))
"""


def test_ddp_two_processes_match_single_process(tmp_path):
    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT)
    env = dict(os.environ, OMP_NUM_THREADS="1", MASTER_ADDR="127.0.0.1")
    single = subprocess.run([sys.executable, str(script), str(tmp_path / "single.json")], env=env,
                            capture_output=True, text=True, timeout=240)
    assert single.returncode == 0, single.stderr
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          str(script), str(tmp_path / "ddp.json")], env=env,
                         capture_output=True, text=True, timeout=240)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    a = json.loads((tmp_path / "single.json").read_text())
    b = json.loads((tmp_path / "ddp.json").read_text())
    for k in a:
        diff = (torch.tensor(a[k]) - torch.tensor(b[k])).abs().max().item()
        assert diff < 1e-5, (k, diff)
        assert math.isfinite(diff)


# ---------------------------------------------------------------- devices, aux losses, frozen parameters, hooks


def test_every_tensor_follows_the_model_device(tiny_cfg, monkeypatch):
    """On the meta device any CPU tensor left behind (batch, objective noise) would raise in the forward."""
    import lmlab.core.train as train_mod

    monkeypatch.setattr(train_mod, "resolve_device", lambda spec: torch.device("meta"))
    model = Transformer(tiny_cfg)
    t = Trainer(model, CausalLM(), TokenWindows(TOKENS, 4, 16), TrainConfig(steps=2, progress=False))
    assert {p.device.type for p in model.parameters()} == {"meta"}
    batch = t.data.get_batch(0)
    assert batch["ids"].device.type == "cpu"  # the data source knows nothing of devices
    out = t.run_objective(t.model, batch)
    assert out.loss.device.type == "meta"
    out.loss.backward()
    assert all(p.grad.device.type == "meta" for p in model.parameters() if p.grad is not None)


def test_bf16_autocast_trains_with_fp32_weights(tmp_path, tiny_cfg):
    hist = make(tmp_path, tiny_cfg, steps=6, precision="bf16").fit()
    assert all(math.isfinite(r["loss"]) for r in hist)
    assert all(p.dtype == torch.float32 for p in make(tmp_path / "x", tiny_cfg).model.parameters())


def test_aux_losses_are_added_to_the_loss_and_logged(tiny_cfg):
    def with_aux(model, batch):
        out = CausalLM()(model, batch)
        return LossOutput(out.loss, {}, {"l2": 1e-2 * sum(p.pow(2).sum() for p in model.parameters())})

    def summed(model, batch):  # the same total written as one loss
        out = with_aux(model, batch)
        return LossOutput(out.loss + out.aux["l2"])

    runs = []
    for objective in (with_aux, summed):
        torch.manual_seed(0)
        model = Transformer(tiny_cfg)
        t = Trainer(model, objective, TokenWindows(TOKENS, 4, 16), TrainConfig(steps=3, lr=1e-2, progress=False))
        runs.append((t.fit(), model))
    (h_aux, m_aux), (h_sum, m_sum) = runs
    assert all(torch.equal(a, b) for a, b in zip(m_aux.state_dict().values(), m_sum.state_dict().values()))
    assert "aux_l2" in h_aux[0] and h_aux[0]["aux_l2"] > 0
    assert h_aux[0]["loss"] == pytest.approx(h_sum[0]["loss"] - h_aux[0]["aux_l2"], rel=1e-6)


def test_model_aux_losses_reach_the_trainer(tiny_cfg):
    from test_blocks import BalancedMLP

    cfg = TrainConfig(steps=2, progress=False)
    path = f"{BalancedMLP.__module__}:BalancedMLP"
    model = Transformer(type(tiny_cfg)(**{**vars(tiny_cfg), "mlp": path}))
    hist = Trainer(model, CausalLM(), TokenWindows(TOKENS, 4, 16), cfg).fit()
    assert hist[-1]["aux_balance"] > 0 and model.pop_aux() == {}


def frozen_run(run_dir, tiny_cfg, steps, base_seed=0):
    torch.manual_seed(base_seed)
    model = Transformer(tiny_cfg)
    for name, p in model.named_parameters():
        p.requires_grad = "mlp" in name  # train the MLPs only, like an adapter run
    cfg = TrainConfig(steps=4, lr=1e-2, warmup_steps=1, ckpt_every=2, run_dir=str(run_dir), progress=False)
    t = Trainer(model, CausalLM(), TokenWindows(TOKENS, 4, 16), cfg)
    orig = t.train_step

    def stop_after():  # a kill one step after the step-`steps` checkpoint
        rec = orig()
        if t.step == steps + 1 and steps < 4:
            raise KeyboardInterrupt
        return rec

    t.train_step = stop_after
    return t, model


def test_frozen_parameters_are_not_saved_and_resume_is_exact(tmp_path, tiny_cfg):
    from safetensors.torch import load_file

    full, ref = frozen_run(tmp_path / "a", tiny_cfg, 4)
    full_hist = full.fit()
    t, _ = frozen_run(tmp_path / "b", tiny_cfg, 2)
    with pytest.raises(KeyboardInterrupt):
        t.fit()
    saved = load_file(str(tmp_path / "b" / "checkpoint" / "model.safetensors"))
    assert saved and all("mlp" in k for k in saved)
    resumed, model = frozen_run(tmp_path / "b", tiny_cfg, 4)
    hist = resumed.fit()
    assert [r["loss"] for r in hist] == [r["loss"] for r in full_hist[2:]]
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), ref.state_dict().values()))


def test_resume_refuses_other_frozen_weights(tmp_path, tiny_cfg):
    t, _ = frozen_run(tmp_path, tiny_cfg, 2)
    with pytest.raises(KeyboardInterrupt):
        t.fit()
    other, _ = frozen_run(tmp_path, tiny_cfg, 4, base_seed=1)
    with pytest.raises(CheckpointError, match="frozen parameters differ"):
        other.fit()


def test_step_hooks_see_every_record_and_can_stop(tiny_cfg):
    seen = []

    def hook(trainer, rec):
        seen.append(trainer.step)
        rec["probe"] = 2 * trainer.step
        trainer.stop = trainer.step == 3

    torch.manual_seed(0)
    t = Trainer(Transformer(tiny_cfg), CausalLM(), TokenWindows(TOKENS, 4, 16),
                TrainConfig(steps=10, progress=False), hooks=[hook])
    hist = t.fit()
    assert seen == [1, 2, 3] and [r["probe"] for r in hist] == [2, 4, 6] and t.step == 3
