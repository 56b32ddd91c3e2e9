"""Models family: architectures. Interface: `build(cfg) -> nn.Module` whose
`forward(ids, *, cache=None, positions=None, mask=None) -> logits`.

One registry line per method; targets are lazy "module:attr" strings, so importing this module imports no torch.
"""

from lmlab.core.registry import Entry, Registry

REGISTRY = Registry("models", {
    "transformer": Entry("lmlab.core.transformer:Transformer", paper="Vaswani et al. 2017; Llama (arXiv:2302.13971)",
                         summary="the core pre-norm decoder (RMSNorm, RoPE, GQA, SwiGLU) with component slots",
                         status="stable", config="lmlab.core.transformer:TransformerConfig", caps=("kv_cache", "hf"),
                         repro="causal_lm"),
    "acdit": Entry("lmlab.models.acdit:ACDiT", paper="arXiv:2412.07720", status="experimental",
                   summary="blockwise AR diffusion transformer: Skip-Causal mask, clean-block KV cache",
                   config="lmlab.models.acdit:Config", caps=("image", "diffusion", "kv_cache")),
    "mom": Entry("lmlab.models.mom:build", paper="arXiv:2407.06677", status="experimental",
                 summary="Mixture-of-Modules: per-token routed attention/FFN module pools over H rounds (GRU/MLP "
                 "router, SKIP)",
                 config="lmlab.models.mom:MoMConfig", caps=("kv_cache",)),
    "dape": Entry("lmlab.models.dape:DAPEAttention", paper="arXiv:2410.04798", status="experimental",
                  summary="DAPE v1/v2: a (1 x k) convolution across heads over attention logits + position bias; "
                          "ALiBi / Kerple / FIRE attention slots", config="lmlab.models.dape:Config"),
    "moice": Entry("lmlab.models.moice:apply_moice", paper="arXiv:2406.19598", status="experimental",
                   summary="MoICE: per head and token, a router mixes attentions under N RoPE bases; router-only "
                           "training, pre-RoPE KV cache, lmlab and HF Llama models",
                   config="lmlab.models.moice:Config"),
    "yi_lightning": Entry("lmlab.models.yi_lightning:build", paper="arXiv:2412.01253", status="experimental",
                          summary="fine-grained MoE with 3-level balance losses, SSSF hybrid attention with "
                                  "cross-layer KV sharing, KV planner, packed SFT",
                          config="lmlab.models.yi_lightning:Config", caps=("kv_cache",)),
})
