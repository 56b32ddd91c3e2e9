"""Yi-Lightning's architecture as an lmlab model preset (01.AI, "Yi-Lightning Technical Report", arXiv:2412.01253).

The report releases no code or weights and does not give sizes. What it specifies, and what this preset builds on
the core Transformer: every MLP is a fine-grained MoE (§2.1, after DeepSeekMoE: experts split into narrower units,
more of them active) trained with balance losses at three levels, expert, expert-parallel group and partition of a
group (§2.2, α = 1e-6 / 1e-4 / 1e-3; ``lmlab.models.moe``); attention comes in hybrid blocks of three
sliding-window layers and one full layer, and consecutive full layers share one KV cache (§2.3), which gives the
report's "up to 82.8%" KV saving at 64K context with a 4096 window (``core.kv_cache.kv_bytes``). Post-training packs
samples with a block-causal mask and per-sample loss weights (§4; ``core.data`` / ``objectives.causal_lm``).

Deviations: sizes (width, depth, experts) are ours, small; the window (4096) is implied by the 82.8% figure, not
stated; the RoPE base of the 64K stage is not given (the core default is kept).

    model = build(Config(dim=256, blocks=2))              # 8 layers SSSF SSSF, MoE MLPs
    model.new_cache(1, 65536).nbytes == kv_bytes(transformer_config(cfg), 65536)
"""

from __future__ import annotations

from dataclasses import dataclass

from lmlab.core.config import param, to_dict
from lmlab.core.transformer import Transformer, TransformerConfig
from lmlab.models.moe import Config as MoEConfig


@dataclass
class Config:
    vocab_size: int = param(100352, "vocabulary size", source="report §3 (SentencePiece BPE, 100,352)")
    dim: int = param(256, "model width C (not disclosed; small default)")
    blocks: int = param(2, "hybrid blocks of 3 sliding-window layers + 1 full layer (n_layers = 4 * blocks)",
                        source="report §2.3")
    n_heads: int = param(4, "query heads")
    n_kv_heads: int | None = param(None, "key/value heads (GQA); None = n_heads")
    ffn_dim: int | None = param(None, "width of one coarse expert before fine-grained splitting; None = 8/3 * dim")
    max_seq_len: int = param(65536, "longest sequence", source="report §3 (64K long-context stage)")
    window: int = param(4096, "sliding-window width of the window layers",
                        source="implied by the report's 82.8% at 64K (1 - (1/8 + 3/4 * 4096/65536))")
    kv_share: int = param(2, "consecutive full layers sharing one KV", source="report §2.3 (pairs)")
    mlp: str = param("moe", "MLP slot: moe (the report's) or a dense one (swiglu) for ablations")
    moe: MoEConfig = param(MoEConfig(), "the fine-grained MoE of every layer (lmlab.models.moe.Config)")


def transformer_config(cfg: Config) -> TransformerConfig:
    """The core TransformerConfig this preset stands for (what a checkpoint of it saves)."""
    return TransformerConfig(
        vocab_size=cfg.vocab_size, dim=cfg.dim, n_layers=4 * cfg.blocks, n_heads=cfg.n_heads,
        n_kv_heads=cfg.n_kv_heads, ffn_dim=cfg.ffn_dim, max_seq_len=cfg.max_seq_len, layer_pattern="SSSF",
        window=cfg.window, kv_share=cfg.kv_share, mlp=cfg.mlp,
        slot_args={"mlp": to_dict(cfg.moe)} if cfg.mlp == "moe" else {})


def build(cfg: Config | None = None) -> Transformer:
    """A core Transformer with Yi-Lightning's layout (``transformer_config``)."""
    return Transformer(transformer_config(cfg or Config()))
