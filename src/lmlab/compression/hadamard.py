"""Hadamard rotation before quantization, QuaRot-style: orthogonal transforms folded into the weights where
the network is invariant, applied online where it is not, then RTN.

Paper: "QuaRot: Outlier-Free 4-Bit Inference in Rotated LLMs", Ashkboos et al., arXiv:2404.00456 (official
code: github.com/spcl/QuaRot). Here it is the rotation baseline of FlatQuant (arXiv:2410.09426, Tables 1-3).

Idea: an orthogonal Q spreads a few large channels over all channels, so per-token INT4 loses far less. With
the RMSNorm scales folded into the next linear layers, RMSNorm(x Q) = RMSNorm(x) Q, so the residual stream can
be rotated for free: embeddings E <- E Q, every reading weight W <- W Q, every writing weight W <- Q^T W (R1,
a randomised Hadamard). A Hadamard per head is folded into v_proj's outputs and o_proj's inputs (R2). Where no
folding is possible the rotation runs online: across heads before o_proj, over the FFN width before down_proj
(as a Kronecker product, R4) and over the head dim on q and k after RoPE for the KV cache (R3).

Deviations: sizes with no Hadamard matrix in ``transforms.hadamard`` (e.g. SmolLM2's 9 heads) use a seeded
random orthogonal matrix instead (noted in the report); the o_proj head mixing is then a dense 9 x 9 matrix.
QuaRot ships a few extra hand-made Hadamard orders (e.g. 28, 40) this module does not. The embedding and
output head are untied by the rotation (the head also absorbs the final norm). Weights use RTN by default
(QuaRot's RTN rows); ``gptq=True`` rounds them with GPTQ (``gptq.py``). Defaults: ``w_clip_search=True``
follows the QuaRot README example (``--w_clip``); clip ratios 1.0 are its argparse defaults.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from lmlab.core.config import param, to_dict
from lmlab.core.runtime import Timer
from lmlab.core.transformer import Transformer

from .base import (
    Arch,
    LayerError,
    Report,
    blocks,
    check_replaced,
    families,
    get_module,
    head_shape,
    resolve_arch,
    state_bytes,
    unwrap,
)
from .layerwise import BlockData, block_mse, copy_block, layerwise
from .qlayers import quantize_block
from .quantizers import Bits
from .transforms import OnlineKron, hadamard, hadamard_pair, kron_apply, random_orthogonal


@dataclass
class Config:
    bits: str = param("w4a4kv4", "bit widths: w<b>[a<b>][kv<b>], e.g. w4a4kv4, w4a8, w4a16 (16 = float)")
    seed: int = param(0, "seed of the random signs of R1 and of any random orthogonal fallback")
    w_clip_search: bool = param(True, "per-channel weight clip search (QuaRot --w_clip)",
                                source="QuaRot README example command")
    a_clip: float = param(1.0, "activation clip ratio", source="QuaRot argparse default")
    k_clip: float = param(1.0, "K-cache clip ratio", source="QuaRot argparse default")
    v_clip: float = param(1.0, "V-cache clip ratio", source="QuaRot argparse default")
    gptq: bool = param(False, "round weights by GPTQ on the calibration data (QuaRot's default), not RTN",
                       source="QuaRot main.py (GPTQ unless --w_rtn)")
    batch_size: int = param(4, "calibration batch size (error report; GPTQ inputs)")


def orthogonal(n: int, gen: torch.Generator, notes: list[str], what: str) -> torch.Tensor:
    """A normalised Hadamard matrix of order n, else a seeded random orthogonal one (noted in ``notes``)."""
    h = hadamard(n)
    if h is None:
        notes.append(f"{what}: no Hadamard matrix of order {n}; using a random orthogonal matrix")
        return random_orthogonal(n, gen)
    return h


def online_factors(n: int, gen: torch.Generator, notes: list[str], what: str) -> tuple:
    """Kronecker factors (A, B) of an online rotation of size n (Hadamard when possible)."""
    pair = hadamard_pair(n)
    if pair is None:
        notes.append(f"{what}: no Hadamard matrix of order {n}; using a dense random orthogonal matrix "
                     "online")
        return None, random_orthogonal(n, gen)
    return pair


@torch.no_grad()
def _set(lin: nn.Module, w: torch.Tensor, bias: torch.Tensor | None = None) -> None:
    lin.weight.data = w.to(lin.weight.dtype).contiguous()
    if bias is not None:
        lin.bias.data = bias.to(lin.bias.dtype)


@torch.no_grad()
def fold_norm(norm: nn.Module, linears: list[nn.Module]) -> None:
    """RMSNorm scale g into the columns of the layers it feeds: W <- W diag(g); g <- 1."""
    if getattr(norm, "bias", None) is not None or not hasattr(norm, "weight"):
        raise ValueError(f"{type(norm).__name__} is not an RMSNorm (scale only); rotations need RMSNorm")
    g = norm.weight.double()
    for lin in linears:
        _set(lin, lin.weight.double() * g[None, :])
    norm.weight.fill_(1.0)


@torch.no_grad()
def untie_head(model: nn.Module, arch: Arch) -> None:
    """Give the output head its own weight (it will differ from the rotated embedding)."""
    root = unwrap(model)
    head, emb = get_module(root, arch.lm_head), get_module(root, arch.embed)
    if head.weight is emb.weight or head.weight.data_ptr() == emb.weight.data_ptr():
        head.weight = nn.Parameter(head.weight.detach().clone())
    if isinstance(root, Transformer):
        root.cfg.tie_embeddings = False
    elif hasattr(root, "config"):  # a Hugging Face model
        root.config.tie_word_embeddings = False


@torch.no_grad()
def rotate_model(model: nn.Module, arch: Arch, q: torch.Tensor) -> None:
    """Fold all norms, then rotate the residual stream by the orthogonal q (C, C) (R1): exact in float."""
    root, r = unwrap(model), arch.block
    untie_head(model, arch)
    head, emb = get_module(root, arch.lm_head), get_module(root, arch.embed)
    fold_norm(get_module(root, arch.final_norm), [head])
    emb.weight.data = (emb.weight.double() @ q).to(emb.weight.dtype)
    _set(head, head.weight.double() @ q)
    for _, block in blocks(model, arch):
        fold_norm(get_module(block, r["attn_norm"]), [get_module(block, r[k]) for k in ("q", "k", "v")])
        fold_norm(get_module(block, r["mlp_norm"]), [get_module(block, r[k]) for k in ("gate", "up")])
        for role in ("q", "k", "v", "gate", "up"):
            lin = get_module(block, r[role])
            _set(lin, lin.weight.double() @ q)
        for role in ("o", "down"):
            lin = get_module(block, r[role])
            b = None if lin.bias is None else lin.bias.double() @ q
            _set(lin, q.T @ lin.weight.double(), b)


@torch.no_grad()
def rotate_heads(block: nn.Module, arch: Arch, h_dim: torch.Tensor, heads: torch.Tensor) -> None:
    """R2: v_proj outputs and o_proj inputs per head by h_dim (D, D); o_proj also absorbs the online head
    mixing ``heads`` (H, H), i.e. W_o <- W_o (I ⊗ h_dim)(heads ⊗ I)."""
    r = arch.block
    H, Hkv, D = head_shape(get_module(block, r["attn"]))
    v, o = get_module(block, r["v"]), get_module(block, r["o"])
    wv = v.weight.double().reshape(Hkv, D, -1)  # (Hkv, D, C): per head rows
    bv = None if v.bias is None else (v.bias.double().reshape(Hkv, D) @ h_dim).reshape(-1)
    _set(v, (h_dim.T @ wv).reshape(Hkv * D, -1), bv)
    wo = kron_apply(o.weight.double(), None, h_dim)  # (C, H*D): columns per head times h_dim
    _set(o, kron_apply(wo, heads, None))  # W (heads ⊗ I_D)


class Hadamard:
    def __init__(self, cfg: Config | None = None):
        self.cfg = cfg or Config()
        self.bits = Bits.parse(self.cfg.bits)

    def fit(self, model: nn.Module, calib: torch.Tensor | None = None) -> tuple[nn.Module, Report]:
        c, bits, arch = self.cfg, self.bits, resolve_arch(model)
        if arch.no_rotation:
            raise ValueError(f"Hadamard (QuaRot) cannot rotate a {arch.name!r} model exactly: {arch.no_rotation}. "
                             f"Supported families: {families(method_needs_rotation=True)}; rtn and flatquant "
                             f"(per-layer transforms, no residual rotation) support {arch.name!r}")
        report = Report("hadamard", {**to_dict(c), "arch": arch.name}, fp_bytes=state_bytes(model))
        gen = torch.Generator().manual_seed(c.seed)
        if c.gptq and calib is None:
            raise ValueError("Hadamard(gptq=True) needs calibration token ids; got calib=None")
        with Timer() as sw:
            before: list[float] = []
            if calib is not None:  # plain RTN error of each original block, for the report
                def rtn_error(i: int, path: str, block: nn.Module, data: BlockData) -> None:
                    side = copy_block(block)
                    quantize_block(side, arch, bits, a_clip=c.a_clip, k_clip=c.k_clip, v_clip=c.v_clip)
                    before.append(block_mse(side, data))

                layerwise(model, arch, calib, c.batch_size, rtn_error)
            root = unwrap(model)
            dim = get_module(root, arch.embed).weight.shape[1]
            signs = torch.randint(0, 2, (dim,), generator=gen).double() * 2 - 1
            rotate_model(model, arch, signs[:, None] * orthogonal(dim, gen, report.notes, "residual stream"))
            H, _, D = head_shape(get_module(blocks(model, arch)[0][1], arch.block["attn"]))
            h_dim = orthogonal(D, gen, report.notes, "head dim")
            ffn = get_module(blocks(model, arch)[0][1], arch.block["down"]).weight.shape[1]
            heads = orthogonal(H, gen, report.notes, "attention heads (online, before o_proj)")
            down = online_factors(ffn, gen, report.notes, "FFN width")

            def finish(block: nn.Module, data: BlockData | None = None) -> None:
                rotate_heads(block, arch, h_dim, heads)
                d = get_module(block, arch.block["down"])
                _set(d, kron_apply(d.weight.double(), *down))
                online = {"o_in": OnlineKron.of(heads, None, H * D),
                          "down_in": OnlineKron.of(down[0], down[1], ffn)}
                quantize_block(block, arch, bits, online=online, qk=(h_dim, h_dim),
                               w_clip_search=c.w_clip_search, a_clip=c.a_clip, k_clip=c.k_clip,
                               v_clip=c.v_clip, gptq=data if c.gptq else None)

            if calib is None:
                for _, block in blocks(model, arch):
                    finish(block)
            else:
                def step(i: int, path: str, block: nn.Module, data: BlockData) -> None:
                    finish(block, data)
                    report.layers.append(LayerError(path, before[i], block_mse(block, data)))

                layerwise(model, arch, calib, c.batch_size, step)
            check_replaced(model, arch)
        report.seconds = sw.seconds
        return model, report
