"""The ACDiT network: patch layout in block order, adaLN-Zero blocks with QK-norm and 2-D RoPE, SCAM forward.

Legend: N batch, L tokens per image, B tokens per block, nb blocks (L = nb * B), P values per token
(channels * patch^2), C model width, H heads, D head dim, T tokens in one forward, S cached + new keys.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lmlab.core.blocks import RMSNorm, RoPE, naive_attention
from lmlab.core.checkpoint import load_into, load_tensors
from lmlab.core.config import from_dict, param
from lmlab.core.kv_cache import KVCache
from lmlab.core.masks import skip_causal

Mask = torch.Tensor | tuple[int, int] | None  # see Attention.attend


@dataclass
class Config:
    image_size: int = param(8, "image side in pixels (square images)", source="sklearn load_digits (8x8)")
    channels: int = param(1, "image channels")
    patch_size: int = param(2, "patch side in pixels; a token holds channels * patch_size^2 values "
                            "(8x8 digits -> 16 tokens of 4 values; the paper patches VAE latents with p=1)")
    block_size: int = param(4, "tokens per autoregressive block B (1 = token-wise AR, L = full-sequence DiT)",
                            source="paper, images: 4 blocks (B=256 of 1024)")
    block_layout: str = param("square", "square: sqrt(B) x sqrt(B) tiles in raster order of tiles (paper, "
                              "images); raster: B consecutive raster-order tokens",
                              choices=("square", "raster"), source="paper, images")
    dim: int = param(128, "model width C (CPU scale; paper: 768 / 1024 / 1152 / 1280 for B / L / XL / H)")
    n_layers: int = param(4, "transformer blocks (CPU scale; paper: 12 to 32)")
    n_heads: int = param(4, "attention heads (head dim must be a multiple of 4 for 2-D RoPE)")
    mlp_ratio: float = param(4.0, "MLP hidden width / C (GELU-tanh)", source="paper / DiT")
    num_classes: int = param(10, "class labels; id num_classes is the null label used for guidance")
    qk_norm: bool = param(True, "RMSNorm on queries and keys", source="paper (video stability)")
    norm_eps: float = param(1e-6, "RMSNorm epsilon")
    freq_dim: int = param(256, "sinusoidal timestep features before the timestep MLP", source="DiT")
    attn: str = param("sdpa", "attention kernel: sdpa or naive (explicit matmuls, the reference)",
                      choices=("sdpa", "naive"))

    def __post_init__(self) -> None:
        for name in ("image_size", "channels", "patch_size", "block_size", "dim", "n_layers", "n_heads",
                     "num_classes"):
            if getattr(self, name) < 1:
                raise ValueError(f"acdit Config.{name} must be >= 1, got {getattr(self, name)}")
        if self.image_size % self.patch_size:
            raise ValueError(f"image size {self.image_size} is not a multiple of the patch size "
                             f"{self.patch_size}")
        if self.dim % self.n_heads or (self.dim // self.n_heads) % 4:
            raise ValueError(f"dim {self.dim} / n_heads {self.n_heads} must give a head dim divisible by 4 "
                             "(2-D RoPE rotates pairs in two halves)")
        block_layout(self.grid, self.block_size, self.block_layout)  # raises on a bad block size

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def seq_len(self) -> int:
        return self.grid * self.grid

    @property
    def n_blocks(self) -> int:
        return self.seq_len // self.block_size

    @property
    def token_dim(self) -> int:
        return self.channels * self.patch_size ** 2


def block_layout(grid: int, block: int, layout: str = "square") -> tuple[torch.Tensor, torch.Tensor]:
    """Sequence order of a grid x grid token image: ``order`` (L,) raster index of each sequence position and
    ``positions`` (L, 2) its (row, col). Square layout: sqrt(B) x sqrt(B) tiles, tiles in raster order."""
    L = grid * grid
    if block < 1 or L % block:
        raise ValueError(f"block size {block} must be >= 1 and divide the sequence length {L} "
                         f"({grid}x{grid} tokens)")
    raster = torch.arange(L)
    if layout == "raster" or block == L:
        order = raster
    elif layout == "square":
        side = math.isqrt(block)
        if side * side != block or grid % side:
            raise ValueError(f"square blocks need block size = k*k with k dividing the token grid side "
                             f"{grid}, got {block}; use block_layout='raster' or another block size")
        t = grid // side
        order = raster.view(t, side, t, side).permute(0, 2, 1, 3).reshape(L)  # tile-major, raster inside
    else:
        raise ValueError(f"unknown block layout {layout!r}; expected 'square' or 'raster'")
    return order, torch.stack([order // grid, order % grid], dim=1)


def rope_base(axis_len: int) -> float:
    """Per-axis RoPE base 100*(floor(floor(8*axis/pi)/100)+1): longest wavelength ~8x the axis (official)."""
    return 100.0 * (math.floor(math.floor(8 * axis_len / math.pi) / 100) + 1)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """DiT's sinusoidal features of integer timesteps: (...,) -> (..., dim) as [cos, sin]."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[..., None] * freqs  # (..., half)
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class Attention(nn.Module):
    """Multi-head attention with QK-norm, 2-D RoPE and an optional core ``KVCache`` (write-only: the caller
    decides how many positions to commit with ``cache.advance``)."""

    def __init__(self, cfg: Config, layer_idx: int):
        super().__init__()
        C, self.H, self.D, self.layer_idx = cfg.dim, cfg.n_heads, cfg.dim // cfg.n_heads, layer_idx
        self.qkv = nn.Linear(C, 3 * C)
        self.proj = nn.Linear(C, C)
        self.q_norm = RMSNorm(self.D, cfg.norm_eps) if cfg.qk_norm else nn.Identity()
        self.k_norm = RMSNorm(self.D, cfg.norm_eps) if cfg.qk_norm else nn.Identity()
        base = rope_base(cfg.grid)
        self.rope_row = RoPE(self.D // 2, cfg.grid, base)
        self.rope_col = RoPE(self.D // 2, cfg.grid, base)
        self.naive = cfg.attn == "naive"

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Mask) -> torch.Tensor:
        """(N,H,T,D) x (N,H,S,D) -> (N,H,T,D). ``mask``: bool (T, S), None (all keys), or (rows, keys):
        the first ``rows`` queries see only the first ``keys`` keys, the others all keys; run as two unmasked
        calls so SDPA keeps its fused kernel and computes no masked-out score (the sampler's mixed step)."""
        if isinstance(mask, tuple):
            r, n = mask
            return torch.cat([self.attend(q[:, :, :r], k[:, :, :n], v[:, :, :n], None),
                              self.attend(q[:, :, r:], k, v, None)], dim=2)
        if self.naive:
            return naive_attention(q, k, v, mask)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)

    def forward(self, x: torch.Tensor, pos: torch.Tensor, mask: Mask, cache: KVCache | None) -> torch.Tensor:
        N, T, C = x.shape
        q, k, v = self.qkv(x).view(N, T, 3, self.H, self.D).permute(2, 0, 3, 1, 4)  # each (N, H, T, D)
        q, k = self.q_norm(q), self.k_norm(k)
        half = self.D // 2
        qr, kr = self.rope_row(q[..., :half], k[..., :half], pos[:, 0])  # rows rotate the first half
        qc, kc = self.rope_col(q[..., half:], k[..., half:], pos[:, 1])  # columns the second
        q, k = torch.cat([qr, qc], -1), torch.cat([kr, kc], -1)
        if cache is not None:
            k, v = cache.write(self.layer_idx, k, v)  # (N, H, S, D): cached clean keys ++ these
        y = self.attend(q, k, v, mask)  # (N, H, T, D)
        return self.proj(y.transpose(1, 2).reshape(N, T, C))


class DiTBlock(nn.Module):
    """Pre-norm block; noised tokens are modulated by adaLN-Zero (shift, scale, gate for attention and MLP),
    clean tokens get the identity modulation (plain RMSNorm, gate 1)."""

    def __init__(self, cfg: Config, layer_idx: int):
        super().__init__()
        C, hidden = cfg.dim, int(cfg.dim * cfg.mlp_ratio)
        self.norm1 = RMSNorm(C, cfg.norm_eps)
        self.attn = Attention(cfg, layer_idx)
        self.norm2 = RMSNorm(C, cfg.norm_eps)
        self.mlp = nn.Sequential(nn.Linear(C, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, C))
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(C, 6 * C))

    def forward(self, x: torch.Tensor, cond: torch.Tensor, n_clean: int, pos: torch.Tensor, mask: Mask,
                cache: KVCache | None) -> torch.Tensor:
        # x (N, T, C) = n_clean clean tokens then nb*B noised; cond (N, nb, C) one vector per noised block
        mod = token_modulation(self.ada(cond), x.shape[1] - n_clean, n_clean, 6)  # (N, T, 6, C)
        shift1, scale1, gate1, shift2, scale2, gate2 = mod.unbind(2)  # each (N, T, C)
        x = x + gate1 * self.attn(self.norm1(x) * (1 + scale1) + shift1, pos, mask, cache)
        return x + gate2 * self.mlp(self.norm2(x) * (1 + scale2) + shift2)


def token_modulation(ada: torch.Tensor, n_noisy: int, n_clean: int, k: int) -> torch.Tensor:
    """Per-block adaLN outputs (N, nb, k*C) -> per-token (N, n_clean + n_noisy, k, C); clean rows are the
    identity modulation (shift 0, scale 0, gate 1 in every (shift, scale, gate) triple)."""
    N, nb, kC = ada.shape
    C = kC // k
    noisy = ada.view(N, nb, 1, k, C).expand(N, nb, n_noisy // nb, k, C).reshape(N, n_noisy, k, C)
    if n_clean == 0:
        return noisy
    ident = torch.zeros(k, C, dtype=ada.dtype, device=ada.device)
    ident[2::3] = 1.0  # gates
    return torch.cat([ident.expand(N, n_clean, k, C), noisy], dim=1)


class ACDiT(nn.Module):
    checkpoint_kind = "lmlab-acdit"  # meta.json kind (lmlab.load)

    def __init__(self, cfg: Config | None = None):
        super().__init__()
        cfg = cfg or Config()
        self.cfg = cfg
        C, P = cfg.dim, cfg.token_dim
        order, positions = block_layout(cfg.grid, cfg.block_size, cfg.block_layout)
        self.register_buffer("order", order, persistent=False)  # (L,) raster index per sequence position
        self.register_buffer("inv_order", torch.argsort(order), persistent=False)
        self.register_buffer("positions", positions, persistent=False)  # (L, 2) row, col
        self.x_embed = nn.Linear(P, C)
        self.t_embed = nn.Sequential(nn.Linear(cfg.freq_dim, C), nn.SiLU(), nn.Linear(C, C))
        self.y_embed = nn.Embedding(cfg.num_classes + 1, C)  # last row: null label (guidance)
        self.layers = nn.ModuleList(DiTBlock(cfg, i) for i in range(cfg.n_layers))
        self.final_norm = RMSNorm(C, cfg.norm_eps)
        self.final_ada = nn.Sequential(nn.SiLU(), nn.Linear(C, 2 * C))
        self.out = nn.Linear(C, P)
        self._init_weights()

    def _init_weights(self) -> None:
        """DiT init: xavier linears, N(0, 0.02) timestep MLP and label table, zero adaLN and output layer."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.y_embed.weight, std=0.02)
        for lin in (self.t_embed[0], self.t_embed[2]):
            nn.init.normal_(lin.weight, std=0.02)
        for lin in [blk.ada[1] for blk in self.layers] + [self.final_ada[1], self.out]:
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # ------------------------------------------------------------ images <-> tokens
    def patchify(self, images: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) images -> (N, L, P) tokens in block order."""
        cfg = self.cfg
        want = (cfg.channels, cfg.image_size, cfg.image_size)
        if images.ndim != 4 or tuple(images.shape[1:]) != want:
            raise ValueError(f"expected images of shape (N, {', '.join(map(str, want))}), got "
                             f"{tuple(images.shape)}; image_size must match the data and be a multiple of "
                             f"patch_size {cfg.patch_size}")
        N, g, p = images.shape[0], cfg.grid, cfg.patch_size
        x = images.reshape(N, cfg.channels, g, p, g, p).permute(0, 2, 4, 1, 3, 5)  # (N, g, g, ch, p, p)
        return x.reshape(N, g * g, cfg.token_dim)[:, self.order]

    def unpatchify(self, tokens: torch.Tensor) -> torch.Tensor:
        """(N, L, P) tokens in block order -> (N, C, H, W) images."""
        cfg = self.cfg
        N, g, p = tokens.shape[0], cfg.grid, cfg.patch_size
        x = tokens[:, self.inv_order].reshape(N, g, g, cfg.channels, p, p).permute(0, 3, 1, 4, 2, 5)
        return x.reshape(N, cfg.channels, cfg.image_size, cfg.image_size)

    # ------------------------------------------------------------ conditioning and the shared trunk
    def check_labels(self, y: torch.Tensor, allow_null: bool = True) -> None:
        hi = self.cfg.num_classes + (1 if allow_null else 0)
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= hi):
            bad = int(y.max()) if int(y.max()) >= hi else int(y.min())
            raise ValueError(f"class id {bad} out of range: expected 0..{hi - 1} "
                             f"({self.cfg.num_classes} classes{', last = null label' if allow_null else ''})")

    def condition(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Timesteps (N, n) and labels (N,) -> conditioning (N, n, C) = t_emb + y_emb."""
        return self.t_embed(timestep_embedding(t, self.cfg.freq_dim)) + self.y_embed(y)[:, None]

    def run(self, clean: torch.Tensor | None, noisy: torch.Tensor, cond: torch.Tensor, pos: torch.Tensor,
            mask: Mask, cache: KVCache | None = None, commit: int = 0) -> torch.Tensor:
        """The trunk on ``[clean ; noisy]`` tokens: clean (N, Tc, P) or None, noisy (N, n*B, P), cond
        (N, n, C), pos (Tc + n*B, 2), mask (see ``Attention.attend``). Returns eps for the noisy tokens.
        With a cache, keys/values of all tokens are written after the cached ones and the first ``commit`` are
        kept."""
        h = self.x_embed(noisy)  # (N, n*B, C)
        n_clean = 0 if clean is None else clean.shape[1]
        if clean is not None:
            h = torch.cat([self.x_embed(clean), h], dim=1)  # (N, T, C)
        for block in self.layers:
            h = block(h, cond, n_clean, pos, mask, cache)
        if cache is not None:
            cache.advance(commit)
        shift, scale = token_modulation(self.final_ada(cond), noisy.shape[1], 0, 2).unbind(2)
        return self.out(self.final_norm(h[:, n_clean:]) * (1 + scale) + shift)  # (N, n*B, P)

    # ------------------------------------------------------------ training forward (SCAM)
    def forward(self, x_t: torch.Tensor, t: torch.Tensor, y: torch.Tensor,
                context: torch.Tensor | None = None) -> torch.Tensor:
        """Predicted noise (N, L, P) for noised tokens x_t (N, L, P), per-block timesteps t (N, nb), labels
        y (N,).

        ``context`` (N, L, P) are the clean tokens: the input becomes [context ; x_t] under the Skip-Causal
        mask, so block i's output depends on context blocks < i and x_t block i only. With one block (B = L)
        the context cannot influence the output and may be None: that is exactly a DiT forward.
        """
        cfg = self.cfg
        N, L, P = x_t.shape
        if (L, P) != (cfg.seq_len, cfg.token_dim):
            raise ValueError(f"expected tokens (N, {cfg.seq_len}, {cfg.token_dim}), got {tuple(x_t.shape)}")
        if tuple(t.shape) != (N, cfg.n_blocks):
            raise ValueError(f"expected one timestep per block: t of shape ({N}, {cfg.n_blocks}), "
                             f"got {tuple(t.shape)}")
        self.check_labels(y)
        cond = self.condition(t, y)  # (N, nb, C)
        if context is None:
            if cfg.n_blocks > 1:
                raise ValueError(f"{cfg.n_blocks} blocks need the clean context tokens "
                                 "(only B = L runs without)")
            return self.run(None, x_t, cond, self.positions, None)
        if context.shape != x_t.shape:
            raise ValueError(f"context shape {tuple(context.shape)} must equal x_t shape {tuple(x_t.shape)}")
        mask = skip_causal(cfg.n_blocks, cfg.block_size, device=x_t.device)  # (2L, 2L)
        pos = torch.cat([self.positions, self.positions])  # clean and noised copies share positions
        return self.run(context, x_t, cond, pos, mask)

    # ------------------------------------------------------------ one cached sampling step
    def new_cache(self, batch: int) -> KVCache:
        """KV cache for the clean blocks of ``batch`` images (room for one block of noised keys on top)."""
        cfg, p = self.cfg, self.x_embed.weight
        return KVCache(cfg.n_layers, batch, cfg.n_heads, cfg.dim // cfg.n_heads, cfg.seq_len,
                       dtype=p.dtype, device=p.device)

    def block_step(self, x: torch.Tensor, block: int, t: torch.Tensor, y: torch.Tensor, cache: KVCache,
                   clean_prev: torch.Tensor | None = None) -> torch.Tensor:
        """eps (N, B, P) for noised block ``block`` x (N, B, P) at timesteps t (N,), attending to the cached
        clean blocks. ``clean_prev`` (N, B, P), the finished block ``block - 1``, is encoded in the same pass
        (its rows see the cache and itself) and committed to the cache; noised keys are never committed."""
        B = self.cfg.block_size
        cond = self.condition(t[:, None], y)  # (N, 1, C)
        pos = self.positions[block * B:(block + 1) * B]  # (B, 2)
        if clean_prev is None:
            return self.run(None, x, cond, pos, None, cache)
        mask = (B, cache.length + B)  # clean rows see the cache and themselves, noised rows everything
        pos = torch.cat([self.positions[(block - 1) * B:block * B], pos])
        return self.run(clean_prev, x, cond, pos, mask, cache, commit=B)


def from_checkpoint(folder: str | Path, meta: dict[str, Any]) -> ACDiT:
    """The ACDiT saved in ``folder`` (kind lmlab-acdit; ``lmlab.load`` calls this)."""
    model = ACDiT(from_dict(Config, meta["config"]))
    load_into(model, load_tensors(folder), str(folder))
    return model
