"""Round-to-nearest (RTN) quantization: the no-transform baseline of W4A4 post-training quantization.

Every linear layer of every block gets per-channel symmetric INT-b weights (rounded to nearest), its input is
quantized per token, and with ``kv<b>`` the K and V caches are quantized per head and token (asymmetric). The
embedding and the output head stay in full precision (as in QuaRot and FlatQuant). No calibration is needed;
when calibration ids are given the report holds each block's output MSE against full precision.

Defaults: pure RTN (no clipping), the baseline row of the FlatQuant and QuaRot tables.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from lmlab.core.config import param, to_dict
from lmlab.core.runtime import Timer

from .base import LayerError, Report, blocks, check_replaced, resolve_arch, state_bytes
from .layerwise import BlockData, block_mse, layerwise
from .qlayers import quantize_block
from .quantizers import Bits


@dataclass
class Config:
    bits: str = param("w4a4kv4", "bit widths: w<b>[a<b>][kv<b>], e.g. w4a4kv4, w4a8, w4a16 (16 = float)")
    w_clip_search: bool = param(False, "search a per-channel weight clip ratio minimising the |error|^2.4 "
                                       "(QuaRot's --w_clip); False = pure RTN")
    a_clip: float = param(1.0, "activation clip ratio (scales the per-token max)")
    k_clip: float = param(1.0, "K-cache clip ratio")
    v_clip: float = param(1.0, "V-cache clip ratio")
    batch_size: int = param(4, "calibration batch size (used for the per-block error report only)")


class RTN:
    def __init__(self, cfg: Config | None = None):
        self.cfg = cfg or Config()
        self.bits = Bits.parse(self.cfg.bits)

    def quantize(self, block: nn.Module, arch) -> None:
        c = self.cfg
        quantize_block(block, arch, self.bits, w_clip_search=c.w_clip_search, a_clip=c.a_clip,
                       k_clip=c.k_clip, v_clip=c.v_clip)

    def fit(self, model: nn.Module, calib: torch.Tensor | None = None) -> tuple[nn.Module, Report]:
        arch = resolve_arch(model)
        report = Report("rtn", {**to_dict(self.cfg), "arch": arch.name}, fp_bytes=state_bytes(model))
        with Timer() as sw:
            if calib is None:
                for _, block in blocks(model, arch):
                    self.quantize(block, arch)
            else:
                def step(i: int, path: str, block: nn.Module, data: BlockData) -> None:
                    self.quantize(block, arch)
                    mse = block_mse(block, data)
                    report.layers.append(LayerError(path, mse, mse))

                layerwise(model, arch, calib, self.cfg.batch_size, step)
            check_replaced(model, arch)
        report.seconds = sw.seconds
        return model, report
