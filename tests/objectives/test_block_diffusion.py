"""Block diffusion loss: per-block timesteps, eps-regression on exactly the noise that made x_t, label
dropout, the context choices, and the digits recipe end to end (train, save, load, sample)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from lmlab.core.train import TrainConfig
from lmlab.models.acdit import ACDiT, NoiseSchedule
from lmlab.models.acdit import Config as ModelConfig
from lmlab.objectives.block_diffusion import BlockDiffusion, Config
from lmlab.recipes.acdit import TrainJob, generate, load_data, load_trained, train


class Recorder(nn.Module):
    """Wraps an ACDiT like DistributedDataParallel does (``.module``) and records every forward call."""

    def __init__(self, model: ACDiT):
        super().__init__()
        self.module, self.calls = model, []

    def forward(self, x_t, t, y, context=None):
        out = self.module(x_t, t, y, context=context)
        self.calls.append({"x_t": x_t, "t": t, "y": y, "context": context, "out": out})
        return out


def batch(n: int = 64) -> dict[str, torch.Tensor]:
    return {"images": torch.rand(n, 1, 8, 8) * 2 - 1, "labels": torch.randint(0, 10, (n,))}


def test_loss_regresses_the_noise_of_each_block_at_its_own_timestep():
    model = Recorder(ACDiT(ModelConfig(block_size=4, dim=32, n_layers=1, n_heads=2)))
    obj = BlockDiffusion(Config(class_dropout=0.0))
    b = batch()
    out = obj(model, b)
    call = model.calls[0]
    x0 = model.module.patchify(b["images"])
    assert torch.equal(call["context"], x0)  # clean context
    t = call["t"]
    assert t.shape == (64, 4) and (t[:, 0] != t[:, 1]).float().mean() > 0.9  # independent per block
    ab = NoiseSchedule().ab(t).float()[:, :, None, None]  # (N, nb, 1, 1)
    eps = (call["x_t"].view(64, 4, 4, 4) - ab.sqrt() * x0.view(64, 4, 4, 4)) / (1 - ab).sqrt()
    want = (call["out"] - eps.view(64, 16, 4)).pow(2).mean()
    assert torch.allclose(out.loss, want, rtol=1e-4)
    assert torch.equal(call["y"], b["labels"])  # no dropout at class_dropout = 0


def test_label_dropout_rate():
    torch.manual_seed(1)
    model = Recorder(ACDiT(ModelConfig(block_size=16, dim=32, n_layers=1, n_heads=2)))
    BlockDiffusion(Config(class_dropout=0.1))(model, batch(2000))
    null = (model.calls[0]["y"] == 10).float().mean()
    assert 0.073 < null < 0.127  # 0.1 +- 4 standard errors


def test_context_choices():
    b = batch(8)
    dit = Recorder(ACDiT(ModelConfig(block_size=16, dim=32, n_layers=1, n_heads=2)))
    BlockDiffusion()(dit, b)
    assert dit.calls[0]["context"] is None  # B = L: the DiT forward, no clean half
    noisy = Recorder(ACDiT(ModelConfig(block_size=4, dim=32, n_layers=1, n_heads=2)))
    BlockDiffusion(Config(context="noisy"))(noisy, b)
    ctx, x0 = noisy.calls[0]["context"], noisy.module.patchify(b["images"])
    assert ctx.shape == x0.shape and not torch.allclose(ctx, x0)
    with pytest.raises(ValueError, match="class_dropout"):
        BlockDiffusion(Config(class_dropout=1.0))
    with pytest.raises(ValueError, match="class id 12 out of range"):
        BlockDiffusion()(noisy, {"images": b["images"][:1], "labels": torch.tensor([12])})
    with pytest.raises(ValueError, match="expected images of shape"):
        BlockDiffusion()(noisy, {"images": torch.zeros(1, 1, 6, 6), "labels": torch.tensor([1])})


def test_digits_recipe_trains_saves_loads_and_samples(tmp_path):
    job = TrainJob(batch_size=16, model=ModelConfig(block_size=4, dim=32, n_layers=2, n_heads=2),
                   train=TrainConfig(steps=20, lr=3e-3, warmup_steps=5, schedule="wsd", progress=False,
                                     run_dir=str(tmp_path / "run")),
                   eval_samples=0)
    model, metrics = train(job)
    assert metrics["steps"] == 20 and metrics["train_loss_last100"] < 1.0  # eps has unit variance at start
    loaded, job2 = load_trained(tmp_path / "run")
    assert job2 == job
    for a, b in zip(model.state_dict().values(), loaded.state_dict().values()):
        assert torch.equal(a, b)
    job2.sample_steps = 3
    images = generate(loaded, torch.tensor([3, 3, 7]), job2, seed=5)
    assert images.shape == (3, 1, 8, 8) and images.abs().max() <= 1.0
    assert torch.equal(images, generate(loaded, torch.tensor([3, 3, 7]), job2, seed=5))
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "meta.json").write_text('{"kind": "something-else"}')
    with pytest.raises(ValueError, match="something-else"):
        load_trained(tmp_path / "other")
    from lmlab.core.checkpoint import save_model
    from lmlab.core.config import to_dict
    from lmlab.core.transformer import Transformer, TransformerConfig

    lm = Transformer(TransformerConfig(vocab_size=11, dim=16, n_layers=1, n_heads=2))
    save_model(tmp_path / "lm", lm, to_dict(lm.cfg))
    with pytest.raises(ValueError, match="not an ACDiT run"):
        load_trained(tmp_path / "lm")


def test_a_folder_of_pngs_trains_end_to_end_and_mismatches_are_named(tmp_path):
    import numpy as np

    from lmlab.tasks import digits

    rng = np.random.default_rng(0)
    for cls in ("cat", "dog", "eel"):
        for i in range(4):
            digits.write_png(tmp_path / "imgs" / cls / f"{i}.png", rng.integers(0, 256, (12, 12), dtype=np.uint8))
    folder = digits.Config(source=str(tmp_path / "imgs"), holdout_fraction=0.25)
    job = TrainJob(batch_size=4, data=folder, eval_samples=0,
                   model=ModelConfig(image_size=12, patch_size=2, block_size=9, dim=16, n_layers=1, n_heads=2,
                                     num_classes=3),
                   train=TrainConfig(steps=3, warmup_steps=1, progress=False))
    model, metrics = train(job)
    assert metrics["steps"] == 3 and model.cfg.seq_len == 36
    assert generate(model, torch.tensor([0, 2]), dataclasses.replace(job, sample_steps=2)).shape == (2, 1, 12, 12)
    with pytest.raises(ValueError, match=r"data images are \(1, 12, 12\).*expects \(1, 8, 8\)"):
        load_data(dataclasses.replace(job, model=ModelConfig(block_size=4)))
    with pytest.raises(ValueError, match="data has 3 classes but model.num_classes = 2"):
        load_data(dataclasses.replace(job, model=dataclasses.replace(job.model, num_classes=2)))
