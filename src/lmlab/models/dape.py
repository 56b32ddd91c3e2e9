"""Position-bias attention (ALiBi, Kerple, FIRE) and DAPE v1 / v2: the attention scores as a feature map.

Papers: DAPE v2, "Process Attention Score as Feature Map for Length Extrapolation" (Zheng et al., arXiv:2410.04798,
ACL 2025; method name CDAPE) and DAPE v1, "DAPE: Data-Adaptive Positional Encoding for Length Extrapolation"
(Zheng et al., NeurIPS 2024). The biases: ALiBi (Press et al., arXiv:2108.12409), Kerple (Chi et al.,
arXiv:2205.09921, log variant), FIRE (Li et al., arXiv:2310.04418). Defaults follow the official code
(github.com/chuanyang-Zheng/DAPE: ``DAPE.py``, ``megatron/model/positional_embeddings.py``, ``neox_args.py``).

Idea. An additive relative PE adds ``Bias`` (H, N, N) to the logits ``A = Q K^T / sqrt(d)``. DAPE treats the 2H
maps [A; Bias] as an image with heads as channels and adds a learned correction:

    Z  = tril(concat([A, Bias], heads))                       # zero the future BEFORE convolving (causality)
    F  = Conv2d(2H -> D, (1, k), pad (0, k//2)) -> LeakyReLU -> Conv2d(D -> H, (1, k), pad (0, k//2))
    A' = A + Bias + F(Z)                                       # then the mask, softmax, @ V

k = 1 is DAPE v1 (a per-entry MLP over heads), k = 3 is DAPE v2's default "DAPE_{1x3}"; the kernel runs along the
key axis only, so every query row is processed on its own (a KV cache gives the same result as recomputation).
With ``bias = "none"`` the input is A alone (H channels; the official ``DAPEV2`` class
declares 2H input channels on that path but feeds H, a latent bug not copied here).

Positions. The distance from query i to key j is pos(i) - pos(j), clamped at 0 for keys after the query (the
official ``tril`` of the distance matrix), with positions from the forward pass (``core.blocks.
query_key_positions``): a cache, a sliding-window slot, packed documents whose positions restart and a draft tree
(siblings at one position) all see the distances of the sequence they stand for. DAPE v2's convolution also reads
neighbouring keys, so it refuses masks under which a query sees a non-contiguous run of keys (draft trees).

Deviations. (1) The ``tril`` is generalised to the attention mask: entries the mask forbids are zeroed before the
convolution (for the causal mask this is exactly ``tril``; for a document-packing mask no logit of another
document leaks through a neighbouring tap). (2) Kerple's p, a are clamped at 1e-2 in the forward pass
(functionally) instead of the official in-place clamp of ``.data``; values are equal, gradients are zero below the
clamp. (3) The hidden map between the two convs is zeroed at the forbidden entries too: officially the hidden value
at key i + 1 (conv bias plus the taps reading key i) reaches the query's own key i whenever the sequence goes on past
i, but not at the last key, so a query's output would depend on how many keys follow it and a KV cache (queries at
the last key) would disagree with recomputation. (4) FIRE's normaliser uses the query's position i (the official
``max(tril(distance), -1)``) and the Transformer's init re-draws its linear layers with ``init_std``.

Use ``pos = "nope"``: with RoPE also on, the rotation acts inside A and the bias is added on top (both encodings
apply; not a configuration of the papers). No fused kernel: DAPE needs
the full (B, H, T, S) logits, so its memory is quadratic (see ``bench/dape_attention_cost.py``).

Legend: B batch, H heads, T queries, S keys, D conv width, k kernel.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lmlab.core import masks
from lmlab.core.blocks import Attention, Context, query_key_positions, slot_options
from lmlab.core.config import param

KINDS = ("none", "alibi", "kerple", "fire")
KERPLE_EPS = 1e-2  # official ParallelKerpleLog.eps: p and a are clamped at this value
FIRE_EPS = 1e-6  # official FIRE eps added to the normaliser


@dataclass
class Config:
    bias: str = param("kerple", "additive bias DAPE processes: none | alibi | kerple | fire (dape slot only)",
                      source="DAPE v2 headline arm DAPE_{1x3}-Kerple (arXiv:2410.04798 §5)", choices=KINDS)
    kernel: int = param(3, "k: conv kernel along the key axis (odd; 1 = DAPE v1, 3 = DAPE v2)",
                        source="official neox_args dapev2_kernel / paper DAPE_{1x3}")
    width: int = param(32, "D: hidden channels of the two-layer conv", source="official neox_args mlp_width = 32")
    fire_c: float = param(0.1, "FIRE: initial c of psi(x) = log(c x + 1)", source="official FIRE init_c")
    fire_L: float = param(512.0, "FIRE: initial threshold L (a learned multiplier scales it)",
                          source="official FIRE init_L")

    def __post_init__(self) -> None:
        if self.bias not in KINDS:
            raise ValueError(f"dape bias {self.bias!r} is unknown; expected one of {', '.join(KINDS)}")
        if isinstance(self.kernel, bool) or not isinstance(self.kernel, int) or self.kernel < 1 or self.kernel % 2 == 0:
            raise ValueError(f"dape kernel {self.kernel!r} must be an odd integer >= 1 (1 = DAPE v1, 3 = DAPE v2)")
        if self.width < 1:
            raise ValueError(f"dape width {self.width!r} must be >= 1 (hidden channels of the conv)")
        if self.fire_L <= 0 or self.fire_c <= 0:
            raise ValueError(f"dape fire_c {self.fire_c!r} and fire_L {self.fire_L!r} must be > 0")


# ---------------------------------------------------------------- distances and the three biases


def distances(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """max(i - j, 0) for query positions i (T,) or (B, T) and key positions j (S,) or (B, S), as a float
    (1 or B, 1, T, S) map (the official tril of the distance); positions, so a cache, a window slot, packed documents
    with restarting positions and a draft tree all see the distances of the sequence they stand for."""
    d = (q[..., :, None] - k[..., None, :]).clamp(min=0).float()  # (T, S) or (B, T, S)
    return d[None, None] if d.ndim == 2 else d[:, None]


def _per_head(x: torch.Tensor, H: int) -> torch.Tensor:
    return x.view(1, H, 1, 1)


def alibi_slopes(n: int) -> list[float]:
    """ALiBi's head slopes: 2^(-8h/n), h = 1..n, for n a power of 2; otherwise the paper's interleaving rule."""
    if math.log2(n).is_integer():
        return [2 ** (-8 * h / n) for h in range(1, n + 1)]
    p = 2 ** math.floor(math.log2(n))
    return alibi_slopes(p) + alibi_slopes(2 * p)[0::2][: n - p]


class ALiBiBias(nn.Module):
    """-m_h (i - j) with fixed geometric slopes m_h."""

    def __init__(self, heads: int, opts: Config):
        super().__init__()
        self.register_buffer("slopes", torch.tensor(alibi_slopes(heads)), persistent=False)  # (H,)

    def forward(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        return -_per_head(self.slopes, len(self.slopes)) * distances(q, k)  # (1 or B, H, T, S)

    def reference(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """The same bias entry by entry."""
        d = distances(q, k)
        out = torch.zeros(d.shape[0], len(self.slopes), *d.shape[2:])
        for b, h, t, j in _entries(out.shape):
            out[b, h, t, j] = -self.slopes[h] * max(float(d[b, 0, t, j]), 0.0)
        return out.to(self.slopes.device)


class KerpleBias(nn.Module):
    """Kerple (log): -p_h log(1 + a_h (i - j)), p_h, a_h > 0 learned (clamped at 1e-2)."""

    def __init__(self, heads: int, opts: Config):
        super().__init__()
        self.p = nn.Parameter(torch.rand(heads) * 2)  # official init: uniform * 2
        self.a = nn.Parameter(torch.rand(heads) * 1)  # official init: uniform * 1

    def forward(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        p, a = self.p.clamp(min=KERPLE_EPS), self.a.clamp(min=KERPLE_EPS)  # (H,)
        H = len(p)
        return -_per_head(p, H) * torch.log1p(_per_head(a, H) * distances(q, k))  # (1 or B, H, T, S)

    def reference(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        p, a = self.p.clamp(min=KERPLE_EPS), self.a.clamp(min=KERPLE_EPS)
        d = distances(q, k)
        shape = (d.shape[0], len(p), *d.shape[2:])
        vals = [-p[h] * torch.log(1 + a[h] * d[b, 0, t, j]) for b, h, t, j in _entries(shape)]
        return torch.stack(vals).view(shape)


class FIREBias(nn.Module):
    """FIRE: f_theta(psi(i - j) / psi(max(L, i))), psi(x) = log(|c x| + 1), f a Linear(1, D)-ReLU-Linear(D, H) MLP,
    L = |multiplier * L_init| a learned threshold."""

    def __init__(self, heads: int, opts: Config):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(1, opts.width), nn.ReLU(), nn.Linear(opts.width, heads))
        self.c = nn.Parameter(torch.tensor(float(opts.fire_c)))
        self.L_multiplier = nn.Parameter(torch.tensor(1.0))
        self.register_buffer("L_init", torch.tensor(float(opts.fire_L)))

    def psi(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log(torch.abs(self.c * x) + 1)

    def forward(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        i = q.float()[..., :, None]  # (T, 1) or (B, T, 1): the query's absolute position
        i = i[None, None] if i.ndim == 2 else i[:, None]  # (1 or B, 1, T, 1)
        norm = torch.maximum(i, torch.abs(self.L_multiplier * self.L_init))
        x = self.psi(distances(q, k)) / (self.psi(norm) + FIRE_EPS)  # (1 or B, 1, T, S)
        w = self.mlp[0].weight
        return self.mlp(x[:, 0, ..., None].to(w.dtype)).permute(0, 3, 1, 2)  # (1 or B, T, S, H) -> (.., H, T, S)

    def reference(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        L = torch.abs(self.L_multiplier * self.L_init)
        d = distances(q, k)
        qb = q.float().expand(d.shape[0], d.shape[2]) if q.ndim == 1 else q.float()  # (1 or B, T)
        out = []
        for b in range(d.shape[0]):
            for t in range(d.shape[2]):
                den = torch.log(torch.abs(self.c * torch.maximum(qb[b, t], L)) + 1) + FIRE_EPS
                for j in range(d.shape[3]):
                    out.append(self.mlp((torch.log(torch.abs(self.c * d[b, 0, t, j]) + 1) / den).view(1)))
        return torch.stack(out).view(d.shape[0], d.shape[2], d.shape[3], -1).permute(0, 3, 1, 2)


BIASES: dict[str, type[nn.Module]] = {"alibi": ALiBiBias, "kerple": KerpleBias, "fire": FIREBias}


def _entries(shape: tuple[int, ...]):
    return itertools.product(*(range(n) for n in shape))


# ---------------------------------------------------------------- masks and the reference attention


def allowed(mask: torch.Tensor | None, causal: bool, T: int, S: int, device: Any) -> torch.Tensor | None:
    """The boolean (.., T, S) mask the scores see: the given one, the causal one (offset S - T) or None."""
    if mask is not None:
        return mask
    if causal:
        return masks.causal(T, S, device=device)
    return None


def contiguous(keep: torch.Tensor) -> bool:
    """Whether every query row of the boolean mask (.., T, S) allows one contiguous run of keys (or none)."""
    S = keep.shape[-1]
    count = keep.sum(-1)
    first = keep.int().argmax(-1)
    last = S - 1 - keep.flip(-1).int().argmax(-1)
    return bool(((count == 0) | (count == last - first + 1)).all())


def masked_softmax_v(scores: torch.Tensor, keep: torch.Tensor | None, v: torch.Tensor) -> torch.Tensor:
    """softmax(scores masked) @ v in float32 softmax. scores (B, H, T, S), v (B, H, S, Dh) -> (B, H, T, Dh)."""
    if keep is None:
        return torch.softmax(scores.float(), dim=-1).to(v.dtype) @ v
    probs = torch.softmax(scores.masked_fill(~keep, float("-inf")).float(), dim=-1)
    probs = probs.masked_fill(~keep.any(-1, keepdim=True), 0.0)  # a query that may see no key attends to nothing
    return probs.to(v.dtype) @ v


def reference_conv(z: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """A (1, k) 'same' convolution along the last axis written out tap by tap: (B, Cin, T, S) -> (B, Cout, T, S)."""
    k, S = conv.kernel_size[1], z.shape[-1]
    out = conv.bias[None, :, None, None].expand(z.shape[0], -1, *z.shape[2:]).clone()
    for j in range(S):
        for d in range(k):
            src = j + d - k // 2  # zero padding outside [0, S)
            if 0 <= src < S:
                out[..., j] = out[..., j] + torch.einsum("oc,bct->bot", conv.weight[:, :, 0, d], z[..., src])
    return out


# ---------------------------------------------------------------- the attention slots


def positions(ctx: Context | None, T: int, S: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Query and key positions of the pass; without a context (a direct call), queries are the last T of S
    consecutive keys."""
    return query_key_positions(ctx, T, S) if ctx is not None else (torch.arange(S - T, S), torch.arange(S))


class BiasAttention(Attention):
    """Attention with an additive relative bias: softmax(QK^T/sqrt(d) + Bias, masked) V. The fast path hands the
    bias to SDPA as a float mask; ``naive = True`` computes the scores and the bias explicitly."""

    kind = "alibi"

    def __init__(self, cfg: Any, layer_idx: int):
        super().__init__(cfg, layer_idx)
        self.opts = slot_options(cfg, "attn", Config)
        self.bias = BIASES[self.kind](cfg.n_heads, self.opts)

    def scores_to_output(self, q, k, v, mask, causal: bool, ctx: Context | None = None) -> torch.Tensor:
        T, S = q.shape[2], k.shape[2]
        keep = allowed(mask, causal, T, S, q.device)
        pos = [p.to(q.device) for p in positions(ctx, T, S)]
        if self.naive:
            bias = self.bias.reference(*pos).to(q.dtype)  # (1 or B, H, T, S)
            return masked_softmax_v(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]) + bias, keep, v)
        bias = self.bias(*pos).to(q.dtype)  # (1 or B, H, T, S)
        if keep is not None:
            bias = bias.masked_fill(~keep, float("-inf"))  # (B or 1, H, T, S)
            if not bool(keep.any(-1).all()):  # a query that may see no key: SDPA's NaN row -> the reference's 0
                return masked_softmax_v(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]) + bias, keep, v)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)


class ALiBiAttention(BiasAttention):
    kind = "alibi"


class KerpleAttention(BiasAttention):
    kind = "kerple"


class FIREAttention(BiasAttention):
    kind = "fire"


class DAPEAttention(Attention):
    """DAPE: A' = A + Bias + F(tril(concat(A, Bias))); F two (1, k) convs with a LeakyReLU (k = 1: DAPE v1).

    ``zero_future`` is the causality switch (the official ``tril``): never turn it off outside a test.
    """

    zero_future = True

    def __init__(self, cfg: Any, layer_idx: int):
        super().__init__(cfg, layer_idx)
        self.opts = o = slot_options(cfg, "attn", Config)
        H = cfg.n_heads
        self.bias = BIASES[o.bias](H, o) if o.bias != "none" else None
        channels = 2 * H if self.bias is not None else H
        self.conv1 = nn.Conv2d(channels, o.width, (1, o.kernel), padding=(0, o.kernel // 2))
        self.conv2 = nn.Conv2d(o.width, H, (1, o.kernel), padding=(0, o.kernel // 2))

    def features(self, a: torch.Tensor, bias: torch.Tensor | None, keep: torch.Tensor | None) -> torch.Tensor:
        """Z: [A; Bias] (B, 2H or H, T, S) with the entries the mask forbids set to 0 (also used on the hidden map)."""
        z = a if bias is None else torch.cat([a, bias.expand(a.shape[0], -1, -1, -1)], dim=1)
        if self.zero_future and keep is not None:
            z = z.masked_fill(~keep, 0.0)
        return z

    def scores_to_output(self, q, k, v, mask, causal: bool, ctx: Context | None = None) -> torch.Tensor:
        T, S = q.shape[2], k.shape[2]
        keep = allowed(mask, causal, T, S, q.device)
        a = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (B, H, T, S)
        pos = [p.to(q.device) for p in positions(ctx, T, S)]
        if self.opts.kernel > 1 and keep is not None and not contiguous(keep):
            raise ValueError(f"DAPE (kernel {self.opts.kernel}) convolves along the key axis, so every query must see "
                             "one contiguous run of keys (causal, window or document masks); a draft tree's mask "
                             "cannot be scored exactly")
        bias = None
        if self.bias is not None:
            bias = (self.bias.reference(*pos) if self.naive else self.bias(*pos)).to(a.dtype)  # (1 or B, H, T, S)
        z = self.features(a, bias, keep)
        conv = reference_conv if self.naive else (lambda x, layer: layer(x))
        hidden = self.features(F.leaky_relu(conv(z, self.conv1)), None, keep)  # (B, D, T, S), forbidden keys 0
        f = conv(hidden, self.conv2)  # (B, H, T, S)
        scores = a + f if bias is None else a + bias + f
        return masked_softmax_v(scores, keep, v)


class NaiveALiBiAttention(ALiBiAttention):
    naive = True


class NaiveKerpleAttention(KerpleAttention):
    naive = True


class NaiveFIREAttention(FIREAttention):
    naive = True


class NaiveDAPEAttention(DAPEAttention):
    """DAPE with explicit bias loops and a tap-by-tap convolution (the reference for the fast path)."""

    naive = True
