"""Block diffusion loss (ACDiT eq. 3): DDPM eps-prediction per block with an independent timestep per block.

Paper: Hu et al., "ACDiT: Interpolating Autoregressive Conditional Modeling and Diffusion Transformer",
arXiv:2412.07720. Official code: github.com/thunlp/ACDiT.

Idea. Cut the token sequence into N blocks, draw t_i ~ U{0..T-1} independently for every block of every
sample, noise each block with its own t_i, and regress the noise with plain MSE over all noised tokens, where
the prediction for block i sees the clean blocks < i (``lmlab.models.acdit``'s Skip-Causal forward). Labels
are replaced by the null label with probability 0.1 so that one network also gives the unconditional eps for
classifier-free guidance.

Deviations and options:
- ``context = "noisy"`` is the ablation of the paper's Fig. 6b: the clean half is replaced by independently
  noised copies (Diffusion-Forcing-like context); sampling still conditions on the generated clean blocks.
- With one block (B = L) the clean half cannot influence the output, so it is not computed (exact; tested):
  the DiT baseline costs one L-token forward, ACDiT a 2L-token one (the paper's ~2x training cost).
- The digits training / sampling / evaluation recipe (``lmlab train acdit``, ``repro/acdit``) is
  ``lmlab.recipes.acdit``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lmlab.core.config import param
from lmlab.core.train import LossOutput
from lmlab.models.acdit import NoiseSchedule


@dataclass
class Config:
    num_timesteps: int = param(1000, "DDPM diffusion steps T", source="paper (DDPMScheduler)")
    beta_start: float = param(1e-4, "first beta of the linear schedule", source="DDPMScheduler default")
    beta_end: float = param(0.02, "last beta of the linear schedule", source="DDPMScheduler default")
    class_dropout: float = param(0.1, "probability of replacing the label by the null label (for guidance)",
                                 source="DiT / official ACDiT code")
    context: str = param("clean", "conditioning context: clean (ACDiT) or noisy (ablation, independently "
                         "noised copies)", choices=("clean", "noisy"), source="paper Fig. 6b ablation")

    @property
    def schedule(self) -> NoiseSchedule:
        return NoiseSchedule(self.num_timesteps, self.beta_start, self.beta_end)


class BlockDiffusion:
    """``objective(model, batch) -> LossOutput``; batch: ``images`` (N, C, H, W) in [-1, 1], ``labels``."""

    def __init__(self, cfg: Config | None = None):
        self.cfg = cfg or Config()
        if not 0 <= self.cfg.class_dropout < 1:
            raise ValueError(f"class_dropout must be in [0, 1), got {self.cfg.class_dropout}")
        self.schedule = self.cfg.schedule

    def __call__(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> LossOutput:
        net = getattr(model, "module", model)  # the ACDiT under DistributedDataParallel
        x0 = net.patchify(batch["images"])  # (N, L, P)
        y = batch["labels"]
        net.check_labels(y, allow_null=False)
        N, nb, T = x0.shape[0], net.cfg.n_blocks, self.cfg.num_timesteps
        t = torch.randint(0, T, (N, nb), device=x0.device)  # one timestep per block per sample
        eps = torch.randn_like(x0)
        x_t = self.schedule.add_noise(x0, eps, t)
        drop = torch.rand(N, device=x0.device) < self.cfg.class_dropout
        y = torch.where(drop, torch.full_like(y, net.cfg.num_classes), y)
        context = None
        if nb > 1:
            context = x0
            if self.cfg.context == "noisy":
                t_ctx = torch.randint(0, T, (N, nb), device=x0.device)
                context = self.schedule.add_noise(x0, torch.randn_like(x0), t_ctx)
        loss = F.mse_loss(model(x_t, t, y, context=context), eps)
        return LossOutput(loss, {})
