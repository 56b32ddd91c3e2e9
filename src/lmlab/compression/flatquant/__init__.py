"""FlatQuant: learnable affine transforms that flatten weights and activations for W4A4 (+KV4) quantization.

Paper: "FlatQuant: Flatness Matters for LLM Quantization", Sun et al., ICML 2025, arXiv:2410.09426. Official
code: github.com/ruikangliu/FlatQuant (MIT).

Idea. For y = x W^T insert an invertible P: y = (x P)(W P^{-T})^T, and quantize both factors. A good P makes
both x P and W P^{-T} "flat" (small crest factor), which per-token / per-channel INT4 rounding tolerates. P is
learned per block with the quantizers in the loop: a Kronecker product P1 ⊗ P2 of two small matrices in SVD
form (U diag(s) V^T, U and V Cayley-orthogonal, so P^{-T} needs no inverse), plus a per-channel scale
initialised SmoothQuant-style, plus learnable clipping of weights (LWC) and activations (LAC). Each block is
calibrated on its own: inputs are the full-precision outputs of the previous block, the loss is the MSE to the
full-precision block output divided by its own (detached) value. Export folds scales into norms / up_proj and
P^{-T} into the weights in float64; the Kronecker factors stay online (``block.py`` lists where each transform
sits).

Defaults (paper Sec. 4.1 and the official ``scripts/llama-3/*/w4a4kv4.sh``): 128 sequences x 2048 tokens, 15
epochs, batch 4, AdamW lr 5e-3 for transforms and scales and 10x that for clip logits, cosine to lr * 1e-3,
scale init alpha 0.3, clip logits init 4.0, RTN weights after export. The official argparse default
``--flat_lr 1e-5`` is wrong for the paper's results (its scripts pass 5e-3); 5e-3 is used here.

Deviations: singular values and scales are learned in log form (exp(l) > 0: never singular); U = U0 cayley(X)
around a random orthogonal U0 instead of torch's ``orthogonal(..., use_trivialization=False)``; one activation
quantizer (one LAC pair) per shared input instead of one per consuming layer (a kernel quantizes x P once);
Kronecker sizes are the divisor pair closest to sqrt(n) (same as the official choice on the paper's models;
688 -> 16 x 43, where the official search gives 8 x 86 and never ends for n = 2 mod 4); float32 training (no
AMP: the official ``--deactive_amp``, the fix for its singular-matrix reports). GPTQ is optional
(``gptq=True``). The K/V quantizers
also learn clip ratios (official ``lac`` applies to them as well). Calibration-size defaults are the paper's;
CPU runs lower them (``repro/flatquant``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from lmlab.core.config import param, to_dict
from lmlab.core.runtime import Timer, format_seconds

from ..base import Arch, LayerError, Report, check_replaced, get_module, resolve_arch, state_bytes, unwrap
from ..layerwise import BlockData, block_mse, copy_block, layerwise
from ..qlayers import quantize_block
from ..quantizers import Bits
from ..transforms import kron_factors
from .block import FlatBlock, export, input_absmax, install, train


@dataclass
class Config:
    bits: str = param("w4a4kv4", "bit widths: w<b>[a<b>][kv<b>], e.g. w4a4kv4, w4a8, w4a16 (16 = float)")
    nsamples: int = param(128, "calibration sequences used (the first rows of calib)",
                          source="paper Sec. 4.1")
    seq_len: int = param(2048, "tokens per calibration sequence (the first columns of calib)",
                         source="paper Sec. 4.1")
    epochs: int = param(15, "passes over the calibration set per block", source="paper Sec. 4.1")
    batch_size: int = param(4, "calibration sequences per step", source="official --cali_bsz")
    lr: float = param(5e-3, "AdamW learning rate of transforms and scales",
                      source="paper Sec. 4.1 / official scripts (argparse default 1e-5 is wrong)")
    clip_lr_mult: float = param(10.0, "learning-rate multiplier of the clip logits (LWC, LAC)",
                                source="official train_utils.py")
    weight_decay: float = param(0.01, "AdamW weight decay", source="torch AdamW default (official code)")
    diag: bool = param(True, "learn per-channel scales (official --add_diag)", source="official scripts")
    diag_alpha: float = param(0.3, "SmoothQuant-style scale init exponent", source="official --diag_alpha")
    lwc: bool = param(True, "learnable weight clipping", source="paper Sec. 3.2")
    lac: bool = param(True, "learnable activation clipping", source="paper Sec. 3.2")
    clip_init: float = param(4.0, "initial clip logit (sigmoid(4) = 0.982)", source="official flat_linear.py")
    gptq: bool = param(False, "round the exported weights with GPTQ instead of RTN (paper's GPTQ rows)",
                       source="official --gptq (off in the w4a4kv4 scripts)")
    seed: int = param(0, "seed of the random orthogonal initialisations")


def select_calibration(calib: torch.Tensor | None, nsamples: int, seq_len: int) -> torch.Tensor:
    """The first ``nsamples`` rows and ``seq_len`` columns of calib (N, T); too little data is an error."""
    if calib is None or calib.ndim != 2:
        raise ValueError(f"FlatQuant needs calibration token ids of shape (N, T), got "
                         f"{None if calib is None else tuple(calib.shape)}")
    N, T = calib.shape
    if N < nsamples or T < seq_len:
        raise ValueError(f"calibration data is shorter than requested: {N} x {T} tokens given, nsamples="
                         f"{nsamples} x seq_len={seq_len} requested; pass more text or lower nsamples or "
                         "seq_len")
    return calib[:nsamples, :seq_len]


class FlatQuant:
    def __init__(self, cfg: Config | None = None, log: Callable[[str], None] | None = None):
        self.cfg = cfg or Config()
        self.bits = Bits.parse(self.cfg.bits)
        self.log = log or logging.getLogger(__name__).info  # per-block progress (the CLI shows INFO on stderr)
        if self.cfg.epochs < 0 or self.cfg.nsamples < 1 or self.cfg.seq_len < 1:
            raise ValueError(f"epochs >= 0, nsamples >= 1 and seq_len >= 1 required, got {self.cfg}")

    def fit(self, model: nn.Module, calib: torch.Tensor | None) -> tuple[nn.Module, Report]:
        """Calibrate and quantize every block of ``model`` in place on token ids ``calib`` (N, T)."""
        c, bits = self.cfg, self.bits
        calib = select_calibration(calib, c.nsamples, c.seq_len)
        arch = resolve_arch(model)
        dtypes = {p.dtype for p in model.parameters()}
        if dtypes != {torch.float32}:
            raise ValueError(f"FlatQuant calibrates float32 models (the official --deactive_amp path); got "
                             f"{sorted(map(str, dtypes))}: call model.float() first")
        report = Report("flatquant", {**to_dict(c), "arch": arch.name}, fp_bytes=state_bytes(model))
        gen = torch.Generator().manual_seed(c.seed)
        trainable = [p for p in model.parameters() if p.requires_grad]
        for p in trainable:
            p.requires_grad_(False)
        n_blocks, t0 = len(get_module(unwrap(model), arch.layers)), time.monotonic()

        def step(i: int, path: str, block: nn.Module, data: BlockData) -> None:
            side = copy_block(block)
            quantize_block(side, arch, bits)
            before = block_mse(side, data)
            fb = FlatBlock(block, arch, bits, gen, diag=c.diag, lwc=c.lwc, lac=c.lac, init_logit=c.clip_init)
            if i == 0:
                for t in (fb.t_attn, fb.t_down):
                    n1, n2 = kron_factors(t.n)
                    if n1 == 1:
                        report.notes.append(f"size {t.n} is prime: a dense {t.n}x{t.n} transform is learned "
                                            f"(cost 2n^2 per token instead of 2n(n1+n2))")
            if c.diag:
                self._init_scales(fb, block, arch, data)
            wiring = install(fb, block, arch)
            history = train(fb, block, data, c.epochs, c.lr, c.clip_lr_mult, c.weight_decay)
            export(fb, block, arch, wiring, gptq=data if c.gptq else None)
            after = block_mse(block, data)
            report.layers.append(LayerError(path, before, after))
            first = f"{history[0]:.3g} -> {history[-1]:.3g}" if history else "no training"
            spent = time.monotonic() - t0
            eta = format_seconds(spent / (i + 1) * (n_blocks - i - 1))
            self.log(f"[{i + 1}/{n_blocks}] {path}: rtn mse {before:.4g}, flatquant mse {after:.4g} "
                     f"(train loss {first}); {format_seconds(spent)} so far, ETA {eta}")

        with Timer() as sw:
            try:
                layerwise(model, arch, calib, c.batch_size, step)
            finally:
                for p in trainable:
                    p.requires_grad_(True)
            check_replaced(model, arch)
        report.seconds = sw.seconds
        return model, report

    def _init_scales(self, fb: FlatBlock, block: nn.Module, arch: Arch, data: BlockData) -> None:
        """SmoothQuant-style scales from the weights' and the full-precision inputs' per-channel max."""
        r, alpha = arch.block, self.cfg.diag_alpha
        x_max = input_absmax(block, arch, data)

        def w_max(*roles: str) -> torch.Tensor:
            return torch.cat([get_module(block, r[k]).weight.detach() for k in roles]).abs().amax(dim=0)

        fb.t_attn.init_scale(w_max("q", "k", "v"), x_max["attn_in"], alpha)
        fb.t_mlp.init_scale(w_max("gate", "up"), x_max["mlp_in"], alpha)
        fb.t_down.init_scale(w_max("down"), x_max["down_in"], alpha)
