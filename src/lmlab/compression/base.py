"""Compression family base: the ``Compressor`` protocol, its ``Report``, and module replacement by name.

A compressor is fit on calibration data and APPLIED to a model by replacing modules found through a mapping
table; no model file knows about quantization or sparsity.

    model, report = REGISTRY.get("flatquant")(Config(bits="w4a4kv4")).fit(model, calib_ids)   # calib (N, T)

Mapping tables (``ARCHS``): one ``Arch`` per model family says where the blocks live and, inside a block, the
path of each role (``attn_norm``, ``q`` ... ``down``, ``attn``, ``mlp``). Adding an architecture is one more
``Arch`` row: the block list, the role paths, the embedding / final norm / head paths and how the attention
exposes q, k, v after RoPE (``hook``: ``"module"`` when the attention calls a ``qkv_hook`` submodule, as the
lmlab core does; ``"hf_interface"`` for Hugging Face models that dispatch through ``AttentionInterface``).
``resolve_arch`` picks the table that fits a model and raises, naming the unmatched module names, when none
does; ``check_replaced`` refuses to return a model that still holds an ``nn.Linear`` the method did not touch
(never silent full precision).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn

# ---------------------------------------------------------------- report


@dataclass
class LayerError:
    name: str  # block path, e.g. "model.layers.3"
    mse_before: float  # block output MSE vs full precision with plain RTN at the same bits (no transform)
    mse_after: float  # block output MSE vs full precision with the method


@dataclass
class Report:
    method: str
    settings: dict[str, Any]  # the method's config as plain data
    layers: list[LayerError] = field(default_factory=list)
    seconds: float = 0.0  # wall time of fit()
    notes: list[str] = field(default_factory=list)  # fallbacks taken (e.g. a dense transform, prime size)
    fp_bytes: int = 0  # bytes of the model's tensors before compression (its own dtype; tied tensors once)
    saved_bytes: int = 0  # bytes save_quantized wrote (model.safetensors + meta.json); 0 = not saved

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "settings": self.settings, "seconds": self.seconds,
                "notes": self.notes, "fp_bytes": self.fp_bytes,
                "layers": [vars(e) for e in self.layers]}


def state_bytes(model: nn.Module) -> int:
    """Bytes of a model's state dict (parameters and persistent buffers), each shared storage counted once."""
    seen = {(v.untyped_storage().data_ptr(), v.storage_offset(), tuple(v.shape)): v.numel() * v.element_size()
            for v in unwrap(model).state_dict().values()}
    return sum(seen.values())


class Compressor(Protocol):
    def fit(self, model: nn.Module, calib: torch.Tensor | None) -> tuple[nn.Module, Report]:
        """Compress ``model`` in place with calibration token ids ``calib`` (N, T); return it and a report."""
        ...


# ---------------------------------------------------------------- mapping tables


@dataclass(frozen=True)
class Arch:
    name: str
    layers: str  # path of the ModuleList of blocks
    block: dict[str, str]  # role -> path inside one block
    embed: str
    final_norm: str
    lm_head: str
    hook: str  # "module": attention calls block.<attn>.qkv_hook(q, k, v); "hf_interface": see qlayers.py
    model_types: tuple[str, ...] = ()  # for Hugging Face models: accepted config.model_type values
    norm_offset: float = 0.0  # the norms scale by (norm_offset + weight): Gemma's (1 + w) RMSNorm has 1.0
    no_rotation: str = ""  # why the residual stream cannot be rotated exactly (Hadamard / QuaRot refuses)


_LLAMA_ROLES = ("attn_norm", "q", "k", "v", "o", "attn", "mlp_norm", "gate", "up", "down", "mlp")
LINEAR_ROLES = ("q", "k", "v", "o", "gate", "up", "down")

ARCHS: dict[str, Arch] = {
    "lmlab": Arch("lmlab", layers="layers", embed="tok_emb", final_norm="norm", lm_head="lm_head",
                  hook="module",
                  block=dict(attn_norm="attn_norm", q="attn.q_proj", k="attn.k_proj", v="attn.v_proj",
                             o="attn.o_proj", attn="attn", mlp_norm="mlp_norm", gate="mlp.gate_proj",
                             up="mlp.up_proj", down="mlp.down_proj", mlp="mlp")),
    "hf-llama": Arch("hf-llama", layers="model.layers", embed="model.embed_tokens", final_norm="model.norm",
                     lm_head="lm_head", hook="hf_interface", model_types=("llama", "mistral"),
                     block=dict(attn_norm="input_layernorm", q="self_attn.q_proj", k="self_attn.k_proj",
                                v="self_attn.v_proj", o="self_attn.o_proj", attn="self_attn",
                                mlp_norm="post_attention_layernorm", gate="mlp.gate_proj", up="mlp.up_proj",
                                down="mlp.down_proj", mlp="mlp")),
    # Gemma-3 text blocks: q/k RMSNorms inside the attention (before RoPE, so the q/k hook after RoPE is
    # untouched), (1 + w) RMSNorms, a sqrt(dim)-scaled embedding (left in full precision) and sandwich norms:
    # post_attention_layernorm / post_feedforward_layernorm scale o_proj / down_proj outputs right before the
    # residual add, which is why no residual rotation can be folded (R1 of QuaRot).
    "hf-gemma3": Arch("hf-gemma3", layers="model.layers", embed="model.embed_tokens", final_norm="model.norm",
                      lm_head="lm_head", hook="hf_interface", model_types=("gemma3_text",), norm_offset=1.0,
                      no_rotation="Gemma-3 blocks scale the attention and MLP outputs by a post-norm (x / rms "
                                  "* (1 + w)) right before the residual add; a rotation Q of the residual "
                                  "stream does not commute with that per-channel scale and no linear layer "
                                  "follows it to absorb Q, so R1 would have to run online",
                      block=dict(attn_norm="input_layernorm", q="self_attn.q_proj", k="self_attn.k_proj",
                                 v="self_attn.v_proj", o="self_attn.o_proj", attn="self_attn",
                                 mlp_norm="pre_feedforward_layernorm", gate="mlp.gate_proj", up="mlp.up_proj",
                                 down="mlp.down_proj", mlp="mlp")),
}


def families(method_needs_rotation: bool = False) -> str:
    """The supported families as text, e.g. "lmlab, hf-llama (llama, mistral)" (rotatable ones only if asked)."""
    return ", ".join(a.name + (f" ({', '.join(a.model_types)})" if a.model_types else "")
                     for a in ARCHS.values() if not (method_needs_rotation and a.no_rotation))


@torch.no_grad()
def scale_norm(norm: nn.Module, c: torch.Tensor, arch: Arch) -> None:
    """Multiply a norm's effective per-channel scale by c (C,): (off + w) <- (off + w) c, off = arch.norm_offset."""
    off = arch.norm_offset
    norm.weight.data = ((off + norm.weight.double()) * c - off).to(norm.weight.dtype)


def get_module(root: nn.Module, path: str) -> nn.Module:
    return root.get_submodule(path) if path else root


def set_module(root: nn.Module, path: str, new: nn.Module) -> None:
    """Replace (or add) the submodule at dotted ``path``."""
    parent, _, name = path.rpartition(".")
    setattr(get_module(root, parent), name, new)


def unwrap(model: nn.Module) -> nn.Module:
    """The module the tables address: the wrapped Hugging Face model of an ``HFCausalLM``, else ``model``."""
    from lmlab.core.hf import HFCausalLM

    return model.model if isinstance(model, HFCausalLM) else model


def _has(root: nn.Module, path: str) -> bool:
    try:
        get_module(root, path)
        return True
    except AttributeError:
        return False


def _linear_names(root: nn.Module) -> list[str]:
    return [n for n, m in root.named_modules() if isinstance(m, nn.Linear)]


def _fits(root: nn.Module, arch: Arch) -> list[str]:
    """Missing paths of ``arch`` in ``root`` (empty = it fits)."""
    model_type = getattr(getattr(root, "config", None), "model_type", None)
    if arch.model_types and model_type not in arch.model_types:
        return [f"config.model_type in {arch.model_types}"]
    if not _has(root, arch.layers) or not isinstance(get_module(root, arch.layers), nn.ModuleList):
        return [arch.layers]
    missing = [p for p in (arch.embed, arch.final_norm, arch.lm_head) if not _has(root, p)]
    for i, block in enumerate(get_module(root, arch.layers)):
        missing += [f"{arch.layers}.{i}.{arch.block[r]}" for r in _LLAMA_ROLES
                    if not _has(block, arch.block[r])]
    return missing


def mapped_linears(root: nn.Module, arch: Arch) -> set[str]:
    n = len(get_module(root, arch.layers))
    return {f"{arch.layers}.{i}.{arch.block[r]}" for i in range(n) for r in LINEAR_ROLES} | {arch.lm_head}


def resolve_arch(model: nn.Module) -> Arch:
    """The mapping table that fits ``model`` (after ``unwrap``); ValueError naming what does not match."""
    root = unwrap(model)
    report = {}
    for arch in ARCHS.values():
        missing = _fits(root, arch)
        if not missing:
            unmatched = sorted(set(_linear_names(root)) - mapped_linears(root, arch))
            if unmatched:
                raise ValueError(f"{type(root).__name__} matches the {arch.name!r} mapping table but these "
                                 "linear "
                                 f"modules are not in it: {unmatched[:20]}; add their roles to an Arch in "
                                 "lmlab.compression.base.ARCHS")
            return arch
        report[arch.name] = missing[:4]
    names = _linear_names(root)
    model_type = getattr(getattr(root, "config", None), "model_type", None)
    raise ValueError(f"no mapping table in lmlab.compression.base.ARCHS fits {type(root).__name__} "
                     f"(model_type {model_type!r}); supported families: {families()}. Its linear modules "
                     f"{names[:20]} are unmatched (tables tried, first missing paths: {report})")


def blocks(model: nn.Module, arch: Arch) -> list[tuple[str, nn.Module]]:
    """[(path, block)] of the decoder blocks."""
    root = unwrap(model)
    return [(f"{arch.layers}.{i}", b) for i, b in enumerate(get_module(root, arch.layers))]


def check_replaced(model: nn.Module, arch: Arch) -> None:
    """Raise if an ``nn.Linear`` other than the head is left in full precision."""
    root = unwrap(model)
    left = [n for n in _linear_names(root) if n != arch.lm_head]
    if left:
        raise ValueError(f"these linear modules were not compressed: {left[:20]}")


def head_shape(attn: nn.Module) -> tuple[int, int, int]:
    """(query heads H, key/value heads Hkv, head dim D) of an lmlab or Hugging Face attention module."""
    if hasattr(attn, "Hkv"):
        return attn.H, attn.Hkv, attn.D
    cfg = attn.config
    return cfg.num_attention_heads, cfg.num_key_value_heads, attn.head_dim
