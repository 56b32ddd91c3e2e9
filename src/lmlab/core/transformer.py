"""The core decoder Transformer with component slots (attn, mlp, pos, norm, mask), pre-norm, Llama-compatible.

Slots take names from the tables in ``core.blocks``, so an architecture paper registers a component instead of
adding a flag. With the defaults (rmsnorm, rope, sdpa, swiglu, causal) the module computes exactly what a
Hugging Face ``LlamaForCausalLM`` of the same shape computes; parameter names follow Llama's projection names
(q_proj ... down_proj) so weight mapping and compression name matching are one table.

    model = Transformer(TransformerConfig(vocab_size=256, dim=64, n_layers=2, n_heads=4))
    logits = model(ids)                                   # (B, T, V)
    cache = model.new_cache(batch=1, max_len=128)
    logits = model(ids, cache=cache)                      # fills the cache; later calls continue from it
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .blocks import Context, component, kv_layout, layer_kinds
from .checkpoint import CheckpointError, load_into, load_tensors
from .config import from_dict, param
from .kv_cache import KVCache


@dataclass
class TransformerConfig:
    vocab_size: int = param(256, "vocabulary size")
    dim: int = param(256, "model width C")
    n_layers: int = param(4, "number of blocks")
    n_heads: int = param(4, "query heads")
    n_kv_heads: int | None = param(None, "key/value heads (GQA); None = n_heads")
    ffn_dim: int | None = param(None, "MLP hidden width; None = 8/3 * dim rounded up to a multiple of 32")
    max_seq_len: int = param(1024, "longest sequence (RoPE table size)")
    rope_base: float = param(10000.0, "RoPE base theta")
    norm_eps: float = param(1e-5, "RMSNorm epsilon")
    attn: str = param("sdpa", "attention slot (sdpa | naive | registered)")
    mlp: str = param("swiglu", "MLP slot (swiglu | reglu | relu | silu | gelu | relu2 | registered)")
    pos: str = param("rope", "position slot (rope | nope | registered)")
    norm: str = param("rmsnorm", "norm slot (rmsnorm | layernorm)")
    mask: str = param("causal", "default mask: causal | bidirectional", choices=("causal", "bidirectional"))
    tie_embeddings: bool = param(True, "share input embedding and output head weights")
    bias: bool = param(False, "biases in linear layers")
    init_std: float = param(0.02, "std of the normal init of linear and embedding weights")
    layer_pattern: str = param("", "attention kind per layer, repeated over the layers: F full, S sliding window "
                               "(SSSF = 3 window : 1 full); empty = all full", source="Yi-Lightning report §2.3")
    window: int | None = param(None, "sliding-window width W of the S layers in keys, the query's own included")
    kv_share: int = param(1, "consecutive full-attention layers sharing one KV (2 = pairwise cross-layer reuse)",
                          source="Yi-Lightning report §2.3")
    slot_args: dict[str, dict[str, Any]] = param({}, "options of the slot components, one table per slot, e.g. "
                                                 "{mlp = {experts = 8, top_k = 2}}; --set model.slot_args.mlp.top_k=2")

    def __post_init__(self) -> None:
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        if self.ffn_dim is None:
            self.ffn_dim = 32 * -(-int(8 * self.dim / 3) // 32)
        for name in ("vocab_size", "dim", "n_layers", "n_heads", "n_kv_heads", "ffn_dim", "max_seq_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"TransformerConfig.{name} must be >= 1, got {getattr(self, name)}")
        for slot, table in self.slot_args.items():
            if slot not in ("attn", "mlp", "pos", "norm") or not isinstance(table, dict):
                raise ValueError(f"TransformerConfig.slot_args: {slot!r} = {table!r}; expected a table per slot "
                                 "(attn, mlp, pos, norm)")
        if self.window is not None and self.window < 1:
            raise ValueError(f"TransformerConfig.window must be >= 1 key, got {self.window}")
        if "S" in layer_kinds(self) and (self.window is None or self.mask != "causal"):
            raise ValueError(f"layer_pattern {self.layer_pattern!r} has sliding-window layers: they need a window "
                             f">= 1 (got {self.window}) and the causal mask (got {self.mask!r})")
        kv_layout(self)  # checks kv_share
        if self.dim % self.n_heads or self.n_heads % self.n_kv_heads:
            raise ValueError(f"dim {self.dim} must be divisible by n_heads {self.n_heads}, "
                             f"and n_heads by n_kv_heads {self.n_kv_heads}")

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads


class Block(nn.Module):
    def __init__(self, cfg: TransformerConfig, layer_idx: int):
        super().__init__()
        norm = component("norm", cfg.norm)
        self.attn_norm = norm(cfg.dim, cfg.norm_eps)
        self.attn = component("attn", cfg.attn)(cfg, layer_idx)
        self.mlp_norm = norm(cfg.dim, cfg.norm_eps)
        self.mlp = component("mlp", cfg.mlp)(cfg, layer_idx)

    def forward(self, x: torch.Tensor, ctx: Context) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), ctx)
        return x + self.mlp(self.mlp_norm(x), ctx)


class Transformer(nn.Module):
    checkpoint_kind = "lmlab-transformer"  # meta.json kind (lmlab.load)

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.pos = component("pos", cfg.pos)(cfg.head_dim, cfg.max_seq_len, cfg.rope_base)
        self.layers = self.build_layers(cfg)
        self.norm = component("norm", cfg.norm)(cfg.dim, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        self._aux: dict[str, torch.Tensor] = {}
        self.apply(self._init)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight

    def build_layers(self, cfg: TransformerConfig) -> nn.ModuleList:
        """The blocks ``hidden`` runs, in order; a model that assembles another stack (MoM) overrides this."""
        return nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layers))

    def _init(self, m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=self.cfg.init_std)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    # the core.lm.LM surface
    @property
    def vocab_size(self) -> int:
        return self.cfg.vocab_size

    @property
    def max_seq_len(self) -> int:
        return self.cfg.max_seq_len

    @property
    def n_layers(self) -> int:
        return self.cfg.n_layers

    @property
    def device(self) -> torch.device:
        return self.tok_emb.weight.device

    def num_params(self, non_embedding: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())
        return n - self.tok_emb.weight.numel() if non_embedding else n

    def new_cache(self, batch: int = 1, max_len: int | None = None, rollback: int = 0) -> KVCache:
        """A cache with one slot per ``kv_layout`` slot; window slots keep W + ``rollback`` positions."""
        p, windows = self.tok_emb.weight, kv_layout(self.cfg).windows
        return KVCache(len(windows), batch, self.cfg.n_kv_heads, self.cfg.head_dim, max_len or self.cfg.max_seq_len,
                       dtype=p.dtype, device=p.device, windows=windows, rollback=rollback)

    def hidden(self, ids: torch.Tensor, *, cache: KVCache | None = None, positions: torch.Tensor | None = None,
               mask: torch.Tensor | None = None, layers: list[int] | None = None) -> torch.Tensor:
        """Final normed hidden states (B, T, C). ``layers`` runs only those blocks (self-speculative drafts)."""
        B, T = ids.shape
        start = cache.length if cache is not None else 0
        if positions is None:
            if start + T > self.cfg.max_seq_len:  # checked in Python: no tensor op or sync per decode step
                raise ValueError(f"position {start + T - 1} is beyond max_seq_len {self.cfg.max_seq_len}")
            positions = torch.arange(start, start + T, device=ids.device)  # (T,)
        elif int(positions.max()) >= self.cfg.max_seq_len:
            raise ValueError(f"position {int(positions.max())} is beyond max_seq_len {self.cfg.max_seq_len}")
        if mask is not None and mask.ndim == 2:
            mask = mask[None, None]  # (1, 1, T, S)
        elif mask is not None and mask.ndim == 3:
            mask = mask[:, None]  # (B, 1, T, S)
        ctx = Context(positions, self.pos, mask, self.cfg.mask == "causal", cache)
        x = self.tok_emb(ids)  # (B, T, C)
        for i, block in enumerate(self.layers):
            if layers is None or i in layers:
                x = block(x, ctx)
        if cache is not None:
            cache.advance(T)
        if ctx.aux and torch.is_grad_enabled():
            for k, v in ctx.aux.items():  # summed over the forward passes until the Trainer pops them
                self._aux[k] = self._aux[k] + v if k in self._aux else v
        return self.norm(x)

    def pop_aux(self) -> dict[str, torch.Tensor]:
        """Auxiliary losses (e.g. MoE balance) added by components since the last call, summed; then cleared."""
        out, self._aux = self._aux, {}
        return out

    def forward(self, ids: torch.Tensor, *, cache: KVCache | None = None, positions: torch.Tensor | None = None,
                mask: torch.Tensor | None = None, layers: list[int] | None = None) -> torch.Tensor:
        """Logits (B, T, V). mask: bool (T, S) | (B, T, S) | (B, 1, T, S), True = attend; S = cached + T."""
        return self.lm_head(self.hidden(ids, cache=cache, positions=positions, mask=mask, layers=layers))


def from_checkpoint(folder: str | Path, meta: dict[str, Any]) -> Transformer:
    """The Transformer saved in ``folder`` (kind lmlab-transformer; ``lmlab.load`` calls this)."""
    if not isinstance(meta.get("config"), dict):
        raise CheckpointError(f"{folder}/meta.json has no model config")
    model = Transformer(from_dict(TransformerConfig, meta["config"]))
    load_into(model, load_tensors(folder), str(folder))
    return model
