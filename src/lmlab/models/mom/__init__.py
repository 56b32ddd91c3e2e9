"""MoM: Mixture-of-Modules.

Paper: Gong et al., "Mixture-of-Modules: Reinventing Transformers as Dynamic Assemblies of Modules", arXiv:2407.06677
(EMNLP 2024). Official code: github.com/gzhch/Mixture-of-Modules (GPT-2 based, internally "MoT").

Idea. A Transformer's depth-ordered layers become pools of attention modules and FFN modules. A chunk runs H
rounds; in every round a router picks, per token, one (top-k) attention module and then one FFN module from the
pools, or SKIP (a zero update). Each token's Q/K/V come from its own chosen module, attention runs over the whole
sequence, and the module outputs are scaled by the router weight (the router's gradient path). The GRU router
carries its state across the rounds, so a choice depends on the token's path so far. A Switch load-balancing loss
(coefficient 0.01) is added through the block context. The vanilla Transformer is the fixed router "round r ->
module r"; N = 1 with H > 1 is weight sharing; SKIP is layer skipping.

Deviations. Pre-norm with the core slots (RMSNorm, RoPE, SwiGLU by default) instead of GPT-2's LayerNorm, learned
positions and GELU; no anchor layers; top-1 weights are the raw softmax probability (the official softmax router
renormalises the top-k, which makes a top-1 weight the constant 1); a token that takes SKIP in an attention round
contributes zero keys and values to the other tokens (as in the official code); pruning masks modules out of the
router instead of deleting their weights.

    model = MoM(TransformerConfig(vocab_size=256, dim=64, n_heads=4), MoMConfig(n_attn=4, n_ffn=4, rounds=4))
    logits = model(ids)                                     # (B, T, V); model.pop_aux() -> {"mom_balance": ...}
    init_from_vanilla(model, transformer)                   # pools from consecutive vanilla layers
    prune(model, "attn", 0.5, batches)                      # drop the modules with the least routing mass
"""

from .model import MoM, build, from_checkpoint
from .routing import MoMConfig, balance_loss, mix_gathered, mix_per_token, route
from .surgery import flops_per_token, init_from_vanilla, layer_map, prune, routing_mass, vanilla_layers

__all__ = ["MoM", "MoMConfig", "balance_loss", "build", "flops_per_token", "from_checkpoint", "init_from_vanilla",
           "layer_map", "mix_gathered", "mix_per_token", "prune", "route", "routing_mass", "vanilla_layers"]
