"""Block-by-block processing on calibration data, for any model a mapping table in ``base.ARCHS`` describes.

``capture_blocks`` runs the model on the calibration batches and records each block's call (the first block's hidden
states plus whatever else the model passes each block: RoPE tables, masks, positions), so a block can be re-run
in isolation with its own ``forward``: no model-specific code. ``layerwise`` then walks the blocks: block i
gets the full-precision outputs of block i-1 as inputs (FlatQuant's recipe: no error propagation between
blocks), hands (block, inputs, full-precision outputs) to a callback that may replace the block's modules, and
moves on.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from .base import Arch, blocks, get_module, unwrap


@dataclass
class BlockCall:
    args: tuple  # positional arguments after the hidden states
    kwargs: dict


@dataclass
class BlockData:
    xs: list[torch.Tensor]  # inputs per calibration batch (b, T, C)
    calls: list[BlockCall]  # the rest of each call
    ys: list[torch.Tensor]  # full-precision outputs (b, T, C)


class _Stop(Exception):
    pass


def calib_batches(calib: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    if calib.ndim != 2 or calib.dtype not in (torch.long, torch.int32, torch.int64):
        raise ValueError(f"calibration data must be token ids of shape (N, T), got {tuple(calib.shape)} "
                         f"{calib.dtype}")
    if batch_size < 1:
        raise ValueError(f"calibration batch size must be >= 1, got {batch_size}")
    return list(calib.long().split(batch_size))


@torch.no_grad()
def capture_blocks(model: nn.Module, arch: Arch, calib: torch.Tensor, batch_size: int,
                   n_blocks: int | None = None) -> tuple[list, list[list]]:
    """Inputs of the first block per calibration batch, and the calls of the first ``n_blocks`` blocks (all when
    None) per batch: (xs, calls[i][b]); the model runs in full precision up to block n_blocks - 1.

    Each block keeps its own call because blocks of one model may get different masks and RoPE tables
    (Gemma-3's sliding-window and global layers).
    """
    layers = list(get_module(unwrap(model), arch.layers))[:n_blocks]
    xs: list[torch.Tensor] = []
    calls: list[list[BlockCall]] = [[] for _ in layers]

    def recorder(i: int):
        def hook(module, args, kwargs):
            if i == 0:
                xs.append(args[0].detach())
            calls[i].append(BlockCall(tuple(args[1:]), dict(kwargs)))
            if i == len(layers) - 1:
                raise _Stop
        return hook

    handles = [layer.register_forward_pre_hook(recorder(i), with_kwargs=True) for i, layer in enumerate(layers)]
    try:
        for ids in calib_batches(calib, batch_size):
            try:
                model(ids)
            except _Stop:
                pass
    finally:
        for h in handles:
            h.remove()
    return xs, calls


def capture(model: nn.Module, arch: Arch, calib: torch.Tensor, batch_size: int) -> tuple[list, list]:
    """Inputs and calls of the first block for each calibration batch: (xs, calls)."""
    xs, calls = capture_blocks(model, arch, calib, batch_size, n_blocks=1)
    return xs, calls[0]


def run_block(block: nn.Module, x: torch.Tensor, call: BlockCall) -> torch.Tensor:
    out = block(x, *call.args, **call.kwargs)
    return out[0] if isinstance(out, tuple) else out


@torch.no_grad()
def outputs(block: nn.Module, xs: list[torch.Tensor], calls: list[BlockCall]) -> list[torch.Tensor]:
    return [run_block(block, x, c) for x, c in zip(xs, calls)]


@torch.no_grad()
def block_mse(block: nn.Module, data: BlockData) -> float:
    """Mean squared error of ``block`` against the stored full-precision outputs."""
    total, count = 0.0, 0
    for x, c, y in zip(data.xs, data.calls, data.ys):
        total += float((run_block(block, x, c).float() - y.float()).pow(2).sum())
        count += y.numel()
    return total / max(count, 1)


def copy_block(block: nn.Module) -> nn.Module:
    """A deep copy (its own config object for Hugging Face blocks), for trying a compression on the side."""
    return copy.deepcopy(block)


def layerwise(model: nn.Module, arch: Arch, calib: torch.Tensor, batch_size: int,
              fn: Callable[[int, str, nn.Module, BlockData], None]) -> None:
    """Call ``fn(i, path, block, data)`` for every block; ``data`` holds full-precision inputs and outputs."""
    was_training = model.training
    model.eval()
    xs, calls = capture_blocks(model, arch, calib, batch_size)
    for i, (path, block) in enumerate(blocks(model, arch)):
        data = BlockData(xs, calls[i], outputs(block, xs, calls[i]))
        fn(i, path, block, data)
        xs = data.ys
    model.train(was_training)
