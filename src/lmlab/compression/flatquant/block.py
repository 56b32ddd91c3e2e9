"""One decoder block under FlatQuant calibration: transforms wired in by module replacement, training, export.

``FlatBlock`` owns every learnable tensor of a block (transforms, scales, clip logits) and computes, for the
current parameters, the transformed weights, the transformed and quantized linear inputs and the q/k/v hook.
Thin adapter modules (``_Linear``, ``_Norm``, ``_QKV``) replace the block's modules and call back into it, so
the block runs its own ``forward`` (lmlab or Hugging Face) unchanged. ``export`` folds everything foldable in
float64 and installs the shared quantized modules (``qlayers.quantize_block``) with the online Kronecker
factors.

Where each transform sits (official ``model_tools/llama_utils.py``; legend H heads, Hkv kv heads, D head dim):
  attn_in  P_a (Kronecker, with scale c_a): norm output feeding q/k/v; c_a folds into the norm scale.
  mlp_in   P_ug (Kronecker, with c_ug): norm output feeding gate/up; c_ug folds into the norm scale.
  down_in  P_d (Kronecker, with c_d): SwiGLU output feeding down; c_d folds into up_proj's rows.
  v        P_v (D x D) on v_proj's output side per head, so the V cache holds v P_v.
  o_in     P_o (H x H) mixing heads online; o_proj's weight takes (P_o ⊗ P_v)^{-T}.
  qkv      P_h (D x D) after RoPE: q <- q P_h^{-T}, k <- k P_h, then K and V quantized (KV settings only).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..base import LINEAR_ROLES, Arch, get_module, head_shape, scale_norm, set_module
from ..layerwise import BlockData, outputs, run_block
from ..qlayers import QKVQuant, enable_hf_hook, quantize_block
from ..quantizers import ActQuantizer, Bits, fake_quant_weight
from ..transforms import OnlineKron, kron_apply
from .transform import KronAffine, SVDMatrix

SITES = ("attn_in", "mlp_in", "o_in", "down_in")
_T = {"q": "t_attn", "k": "t_attn", "v": "t_attn", "gate": "t_mlp", "up": "t_mlp", "down": "t_down"}


def _bounds(w: torch.Tensor, logits: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row clip bounds (lo, hi) (out, 1): sigmoid(logits) times the row min / max (LWC)."""
    lo = w.min(dim=1, keepdim=True).values.clamp(max=0)  # (out, 1)
    hi = w.max(dim=1, keepdim=True).values.clamp(min=0)
    if logits is None:
        return lo, hi
    r = torch.sigmoid(logits.to(w.dtype))  # (out, 2): (max, min)
    return lo * r[:, 1:], hi * r[:, :1]


class FlatBlock(nn.Module):
    def __init__(self, block: nn.Module, arch: Arch, bits: Bits, gen: torch.Generator, diag: bool = True,
                 lwc: bool = True, lac: bool = True, init_logit: float = 4.0):
        super().__init__()
        r = arch.block
        self.arch, self.bits = arch, bits
        self.H, self.Hkv, self.D = head_shape(get_module(block, r["attn"]))
        C, n_ffn = get_module(block, r["q"]).in_features, get_module(block, r["down"]).in_features
        self.t_attn, self.t_mlp = KronAffine(C, gen, diag), KronAffine(C, gen, diag)
        self.t_down = KronAffine(n_ffn, gen, diag)
        self.p_o, self.p_v = SVDMatrix(self.H, gen), SVDMatrix(self.D, gen)
        self.p_h = SVDMatrix(self.D, gen) if bits.kv < 16 else None
        self.acts = nn.ModuleDict({s: ActQuantizer(bits.a, learnable=lac, init_logit=init_logit)
                                   for s in SITES})
        self.kv = nn.ModuleList([ActQuantizer(bits.kv, sym=False, learnable=lac, init_logit=init_logit)
                                 for _ in range(2)]) if bits.kv < 16 else None
        self.lwc = nn.ParameterDict({
            role: nn.Parameter(torch.full((get_module(block, r[role]).out_features, 2), init_logit))
            for role in LINEAR_ROLES}) if lwc and bits.w < 16 else None
        self.mats: dict = {}

    def clip_parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.named_parameters() if n.startswith(("acts.", "kv.", "lwc."))]

    def transform_parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.named_parameters() if not n.startswith(("acts.", "kv.", "lwc."))]

    def refresh(self, dtype: torch.dtype = torch.float32) -> None:
        """Materialise every matrix for the current parameters (once per training step)."""
        m = {}
        for name in ("t_attn", "t_mlp", "t_down"):
            t = getattr(self, name)
            fw, inv = t.factors(dtype)
            m[name] = (fw, inv, t.scale(dtype))
        m["o"], m["v"] = self.p_o.pair(dtype), self.p_v.pair(dtype)
        if self.p_h is not None:
            m["h"] = self.p_h.pair(dtype)
        self.mats = m

    def weight(self, role: str, w: torch.Tensor, b: torch.Tensor | None):
        """Transformed (w (out, in), bias) of a role, before clipping and quantization."""
        m = self.mats
        if role in _T:
            _, inv, c = m[_T[role]]
            w = KronAffine.weight(w, inv, c)
        if role == "v":  # output side: v_h <- v_h P_v, i.e. rows of head h <- P_v^T W_h
            p_v = m["v"][0].to(w.dtype)
            w = (p_v.transpose(0, 1) @ w.reshape(self.Hkv, self.D, -1)).reshape(self.Hkv * self.D, -1)
            b = None if b is None else (b.reshape(self.Hkv, self.D) @ p_v).reshape(-1)
        if role == "o":  # W (P_o ⊗ P_v)^{-T}
            w = kron_apply(w, m["o"][1].to(w.dtype), m["v"][1].to(w.dtype))
        return w, b

    def quant_weight(self, role: str, w: torch.Tensor) -> torch.Tensor:
        if self.bits.w >= 16:
            return w
        return fake_quant_weight(w, self.bits.w, *_bounds(w, None if self.lwc is None else self.lwc[role]))

    def site(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """Online transform then per-token quantization of a linear layer's input x (..., n)."""
        if name == "o_in":
            x = kron_apply(x, self.mats["o"][0].to(x.dtype), None)
        else:
            fw, _, c = self.mats[{"attn_in": "t_attn", "mlp_in": "t_mlp", "down_in": "t_down"}[name]]
            x = KronAffine.act(x, tuple(None if f is None else f.to(x.dtype) for f in fw), c)
        return self.acts[name](x)

    def qkv(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        if self.p_h is not None:
            p, p_inv_t = self.mats["h"]
            q, k = q @ p_inv_t.to(q.dtype), k @ p.to(k.dtype)
        if self.kv is not None:
            k, v = self.kv[0](k), self.kv[1](v)
        return q, k, v


class _Linear(nn.Module):
    def __init__(self, fb: FlatBlock, role: str, lin: nn.Module, site: str | None = None):
        super().__init__()
        self.fb, self.role, self.lin, self.site_name = fb, role, lin, site

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.site_name is not None:
            x = self.fb.site(self.site_name, x)
        w, b = self.fb.weight(self.role, self.lin.weight, self.lin.bias)
        return F.linear(x, self.fb.quant_weight(self.role, w), b)


class _Norm(nn.Module):
    def __init__(self, fb: FlatBlock, site: str, norm: nn.Module):
        super().__init__()
        self.fb, self.site_name, self.norm = fb, site, norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fb.site(self.site_name, self.norm(x))


class _QKV(nn.Module):
    def __init__(self, fb: FlatBlock):
        super().__init__()
        self.fb = fb

    def forward(self, q, k, v):
        return self.fb.qkv(q, k, v)


@torch.no_grad()
def input_absmax(block: nn.Module, arch: Arch, data: BlockData) -> dict[str, torch.Tensor]:
    """Per-channel max |x| at attn_in, mlp_in and down_in over the calibration inputs (full precision)."""
    r, out, handles = arch.block, {}, []

    def keep(name: str, x: torch.Tensor) -> None:
        m = x.detach().abs().reshape(-1, x.shape[-1]).amax(dim=0)
        out[name] = torch.maximum(out[name], m) if name in out else m

    attn_norm, mlp_norm = get_module(block, r["attn_norm"]), get_module(block, r["mlp_norm"])
    handles.append(attn_norm.register_forward_hook(lambda m, i, o: keep("attn_in", o)))
    handles.append(mlp_norm.register_forward_hook(lambda m, i, o: keep("mlp_in", o)))
    handles.append(get_module(block, r["down"]).register_forward_pre_hook(lambda m, i: keep("down_in", i[0])))
    try:
        outputs(block, data.xs, data.calls)
    finally:
        for h in handles:
            h.remove()
    return out


@dataclass
class Wiring:
    originals: dict[str, nn.Module]  # path in block -> original module
    had_hook: bool


def install(fb: FlatBlock, block: nn.Module, arch: Arch) -> Wiring:
    """Replace the block's linears, norms and q/k/v hook by adapters calling ``fb``."""
    r = arch.block
    hook_path = f"{r['attn']}.qkv_hook"
    originals = {r[k]: get_module(block, r[k]) for k in (*LINEAR_ROLES, "attn_norm", "mlp_norm")}
    had_hook = hasattr(get_module(block, r["attn"]), "qkv_hook")
    if had_hook:
        originals[hook_path] = get_module(block, hook_path)
    sites = {"o": "o_in", "down": "down_in"}
    for role in LINEAR_ROLES:
        set_module(block, r[role], _Linear(fb, role, originals[r[role]], sites.get(role)))
    set_module(block, r["attn_norm"], _Norm(fb, "attn_in", originals[r["attn_norm"]]))
    set_module(block, r["mlp_norm"], _Norm(fb, "mlp_in", originals[r["mlp_norm"]]))
    set_module(block, hook_path, _QKV(fb))
    if arch.hook == "hf_interface":
        enable_hf_hook(get_module(block, r["attn"]).config)
    return Wiring(originals, had_hook)


def train(fb: FlatBlock, block: nn.Module, data: BlockData, epochs: int, lr: float, clip_lr_mult: float,
          weight_decay: float) -> list[float]:
    """Minimise MSE(block output, full-precision output) normalised by its own value; mean loss per epoch."""
    groups = [{"params": fb.transform_parameters(), "lr": lr},
              {"params": fb.clip_parameters(), "lr": lr * clip_lr_mult}]
    opt = torch.optim.AdamW([g for g in groups if g["params"]], weight_decay=weight_decay)
    steps = max(epochs * len(data.xs), 1)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps, eta_min=lr * 1e-3)
    history = []
    for _ in range(epochs):
        total = 0.0
        for x, call, y in zip(data.xs, data.calls, data.ys):
            fb.refresh()
            loss = F.mse_loss(run_block(block, x, call), y)
            opt.zero_grad(set_to_none=True)
            (loss / loss.detach()).backward()
            opt.step()
            sched.step()
            total += loss.item()
        history.append(total / len(data.xs))
    return history


@torch.no_grad()
def export(fb: FlatBlock, block: nn.Module, arch: Arch, wiring: Wiring,
           gptq: BlockData | None = None) -> None:
    """Fold transforms into weights and norms in float64, restore the modules and quantize the block (RTN, or
    GPTQ on ``gptq``'s inputs)."""
    r, bits = arch.block, fb.bits
    for path, module in wiring.originals.items():
        set_module(block, path, module)
    hook_path = f"{r['attn']}.qkv_hook"
    if not wiring.had_hook:
        delattr(get_module(block, r["attn"]), "qkv_hook")
    fb.refresh(torch.float64)
    m, bounds = fb.mats, {}
    for role in LINEAR_ROLES:
        lin = get_module(block, r[role])
        w, b = fb.weight(role, lin.weight.double(), None if lin.bias is None else lin.bias.double())
        if role == "up" and m["t_down"][2] is not None:  # c_d into up's rows (h = act(gate) * up)
            w, b = w * m["t_down"][2][:, None], None if b is None else b * m["t_down"][2]
        if fb.lwc is not None:
            bounds[role] = _bounds(w, fb.lwc[role])
        lin.weight.data = w.to(lin.weight.dtype)
        if b is not None:
            lin.bias.data = b.to(lin.bias.dtype)
    for norm_role, t in (("attn_norm", "t_attn"), ("mlp_norm", "t_mlp")):
        c = m[t][2]
        if c is not None:  # the norm's effective scale ((1 + w) for Gemma) takes c
            scale_norm(get_module(block, r[norm_role]), c, arch)
    online = {site: OnlineKron.of(*m[t][0], getattr(fb, t).n)
              for site, t in (("attn_in", "t_attn"), ("mlp_in", "t_mlp"), ("down_in", "t_down"))}
    online["o_in"] = OnlineKron.of(m["o"][0], None, fb.H * fb.D)
    acts = {s: q.frozen() for s, q in fb.acts.items()}
    kv = (fb.kv[0].frozen(), fb.kv[1].frozen()) if fb.kv is not None else None
    qk = (m["h"][1], m["h"][0]) if "h" in m else None
    quantize_block(block, arch, bits, online=online, acts=acts, qk=qk, kv=kv, w_bounds=bounds, gptq=gptq)
    if bits.kv < 16 and not isinstance(get_module(block, hook_path), QKVQuant):
        raise RuntimeError("KV quantization hook was not installed")
