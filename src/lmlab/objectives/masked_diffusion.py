"""Absorbing-state masked diffusion over the target of ``prompt <sep> target``: the MDM and MGDM losses.

Paper: "Beyond Autoregression: Discrete Diffusion for Complex Reasoning and Planning", Ye et al., ICLR 2025,
arXiv:2410.14157; official code HKUNLP/diffusion-vs-ar (``src/llmtuner/tuner/mdm``).

Idea. A bidirectional transformer (the core Transformer with ``mask="bidirectional"``, no timestep input)
learns to fill in masked target tokens. Forward process: draw t ~ U{0..T-1} per sequence and replace each
target token (target, <eos> and trailing <pad>: the model also predicts the length) by <mask> with
probability (t+1)/T; the prompt and <sep> are never masked. With u_n the cross-entropy at a masked position n,
MGDM's loss (eq. 8) is

    L = sum_b sum_{n masked in b} w(t_b) * v(u_n) * u_n / (number of masked tokens in the batch)
    w(t) = T - t ("linear", all released scripts)    v(u) = alpha * (1 - exp(-u))^gamma

Hard tokens (large u) get larger weights, so training concentrates on the subgoals that are hard to learn; the
gradient flows through v (no stop-gradient). MDM is the same loss without the token weight (v = 1).
Decoding (easy-first top-k; the official re-masking variant is opt-in) is ``lmlab.decoding.masked``.

Deviations from the paper / official code:
- No right shift of the logits: the official model predicts token i from output i-1 only to stay compatible
  with AR-initialised checkpoints (DiffuLLaMA); models here are trained from scratch, so output i predicts i.
- The paper's MDM baseline is read as "MGDM without token reweighting" (the ablation "token reweighting adds
  ~3-4 points"); the absorbing-ELBO weight T/(t+1) is available as ``seq_weight="elbo"``.
- The <mask> id defaults to the model's last vocabulary id (where ``lmlab.tasks.encoding`` puts it).
Defaults: T = 20, alpha = 0.25, gamma = 1 (Sudoku/SAT; Countdown uses 2), linear w(t): the official scripts.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lmlab.core.config import param
from lmlab.core.train import LossOutput

SEQ_WEIGHTS = ("linear", "elbo", "uniform")


@dataclass
class Config:
    timesteps: int = param(20, "T: number of mask levels; level t masks each target token w.p. (t+1)/T",
                           source="official scripts (diffusion_steps 20)")
    seq_weight: str = param("linear", "w(t): linear = T - t, elbo = T/(t+1), uniform = 1",
                            choices=SEQ_WEIGHTS, source="paper eq. 8; official scripts (reweighting linear)")
    token_reweight: bool = param(True, "multiply each token loss by v = alpha*(1-exp(-u))^gamma (MGDM)",
                                 source="paper eq. 8")
    alpha: float = param(0.25, "token-weight scale alpha", source="official scripts")
    gamma: float = param(1.0, "token-weight exponent gamma (1 Sudoku/SAT, 2 Countdown)",
                         source="official scripts")
    detach_token_weight: bool = param(False, "stop the gradient through v (ablation; the paper does not)")
    mask_id: int = param(-1, "id of <mask>; -1 = the model's last vocabulary id")


@dataclass
class MDMConfig(Config):
    token_reweight: bool = param(False, "multiply each token loss by v = alpha*(1-exp(-u))^gamma (MGDM)",
                                 source="paper ablation: MDM = MGDM without token reweighting")


def check_config(cfg: Config) -> None:
    if isinstance(cfg.timesteps, bool) or not isinstance(cfg.timesteps, int) or cfg.timesteps < 1:
        raise ValueError(f"masked diffusion timesteps T must be an int >= 1, got {cfg.timesteps!r}")
    if cfg.seq_weight not in SEQ_WEIGHTS:
        raise ValueError(f"seq_weight {cfg.seq_weight!r} is not one of {SEQ_WEIGHTS}")
    if cfg.alpha <= 0 or cfg.gamma < 0:
        raise ValueError(f"token weight needs alpha > 0 and gamma >= 0, got alpha={cfg.alpha}, "
                         f"gamma={cfg.gamma}")


def corrupt(ids: torch.Tensor, maskable: torch.Tensor, timesteps: int, mask_id: int,
            generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Forward process. ids, maskable (B, L) -> noised ids (B, L), masked (B, L) bool, t (B,) in 0..T-1."""
    B, L = ids.shape
    t = torch.randint(0, timesteps, (B,), generator=generator, device=ids.device)  # (B,)
    ratio = (t + 1).float() / timesteps  # (B,) mask probability
    masked = (torch.rand(B, L, generator=generator, device=ids.device) < ratio[:, None]) & maskable  # (B, L)
    return ids.masked_fill(masked, mask_id), masked, t


def sequence_weight(t: torch.Tensor, timesteps: int, kind: str) -> torch.Tensor:
    """w(t) for t (B,) in 0..T-1: linear T - t, elbo T/(t+1) (= 1 / mask ratio), uniform 1."""
    if kind == "linear":
        return (timesteps - t).float()
    if kind == "elbo":
        return timesteps / (t + 1).float()
    if kind == "uniform":
        return torch.ones_like(t, dtype=torch.float)
    raise ValueError(f"seq_weight {kind!r} is not one of {SEQ_WEIGHTS}")


def token_weight(u: torch.Tensor, alpha: float, gamma: float) -> torch.Tensor:
    """v(u) = alpha * (1 - exp(-u))^gamma: small for easy tokens (u -> 0), up to alpha for hard ones."""
    return alpha * (-torch.expm1(-u)).clamp(min=0).pow(gamma)


def diffusion_loss(logits: torch.Tensor, ids: torch.Tensor, masked: torch.Tensor, t: torch.Tensor,
                   cfg: Config) -> tuple[torch.Tensor, torch.Tensor]:
    """MGDM eq. 8 (MDM: without v). logits (B, L, V), ids/masked (B, L), t (B,) -> (loss, CE (M,))."""
    u = F.cross_entropy(logits[masked].float(), ids[masked], reduction="none")  # (M,) CE of the masked tokens
    w = sequence_weight(t, cfg.timesteps, cfg.seq_weight)[:, None].expand_as(masked)[masked]  # (M,)
    per_token = w * u
    if cfg.token_reweight:
        v = token_weight(u.detach() if cfg.detach_token_weight else u, cfg.alpha, cfg.gamma)  # (M,)
        per_token = per_token * v
    return per_token.sum() / max(int(masked.sum()), 1), u.detach()


def vocab_size_of(model: torch.nn.Module) -> int:
    """The vocabulary of an LM (``core.lm.LM``), also under DistributedDataParallel (``.module``)."""
    v = getattr(getattr(model, "module", model), "vocab_size", None)
    if not isinstance(v, int):
        raise TypeError(f"the masked-diffusion objective reads the model's vocab_size (core.lm.LM) to pick the "
                        f"<mask> id; {type(model).__name__} has none: set the objective's mask_id")
    return v


class MaskedDiffusion:
    """``objective(model, batch) -> LossOutput``; batch: ``ids`` (B, L), ``src_mask`` (B, L; True = given).

    Metrics: ``ce`` (mean unweighted cross-entropy of the masked tokens), ``masked_frac`` (share of maskable
    tokens that were masked).
    """

    def __init__(self, cfg: Config | None = None, generator: torch.Generator | None = None):
        self.cfg = cfg if cfg is not None else Config()
        check_config(self.cfg)
        self.generator = generator  # None: the global torch RNG (saved in the Trainer's checkpoints)

    def __call__(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> LossOutput:
        ids = batch["ids"]  # (B, L)
        src = batch.get("src_mask")
        maskable = ~src if src is not None else torch.ones_like(ids, dtype=torch.bool)  # (B, L)
        mask_id = self.cfg.mask_id if self.cfg.mask_id >= 0 else vocab_size_of(model) - 1
        x, masked, t = corrupt(ids, maskable, self.cfg.timesteps, mask_id, self.generator)
        logits = model(x)  # (B, L, V)
        loss, u = diffusion_loss(logits, ids, masked, t, self.cfg)
        frac = float(masked.sum()) / max(int(maskable.sum()), 1)
        return LossOutput(loss, {"ce": float(u.mean()) if u.numel() else 0.0, "masked_frac": frac})


def MDM(cfg: Config | None = None, generator: torch.Generator | None = None) -> MaskedDiffusion:
    """The plain masked-diffusion baseline: MGDM's loss without the token weight (``MDMConfig`` defaults)."""
    return MaskedDiffusion(cfg if cfg is not None else MDMConfig(), generator)
