"""Objectives family registry: one line per method (lazy "module:attr" targets; importing this imports no torch)."""

from lmlab.core.registry import Entry, Registry

REGISTRY = Registry("objectives", {
    "causal_lm": Entry("lmlab.objectives.causal_lm:CausalLM", paper="Radford et al. 2018 (GPT)",
                       summary="next-token cross-entropy: the autoregressive baseline",
                       status="stable", config="lmlab.objectives.causal_lm:Config"),
    "mdm": Entry("lmlab.objectives.masked_diffusion:MDM", paper="arXiv:2410.14157", status="experimental",
                 summary="absorbing-state masked diffusion on the target (MGDM without token reweighting)",
                 config="lmlab.objectives.masked_diffusion:MDMConfig", caps=("bidirectional",), repro="mgdm"),
    "mgdm": Entry("lmlab.objectives.masked_diffusion:MaskedDiffusion", paper="arXiv:2410.14157",
                  summary="multi-granularity masked diffusion: sequence weight w(t) times token weight v(u)",
                  status="experimental", config="lmlab.objectives.masked_diffusion:Config",
                  caps=("bidirectional",), repro="mgdm"),
    "block_diffusion": Entry("lmlab.objectives.block_diffusion:BlockDiffusion", paper="arXiv:2412.07720",
                             summary="ACDiT loss: DDPM eps-MSE, one timestep per block, label dropout",
                             status="experimental", config="lmlab.objectives.block_diffusion:Config",
                             caps=("image", "diffusion"), repro="acdit"),
    "dpo": Entry("lmlab.objectives.dpo:DPO", paper="arXiv:2305.18290", status="experimental",
                 summary="sigmoid DPO on chosen/rejected pairs (+ optional NLL), cached reference log-probs",
                 config="lmlab.objectives.dpo:Config", caps=("preference",), repro="implicit_prm"),
    "ce_reward": Entry("lmlab.objectives.dpo:CEReward", paper="arXiv:2412.01981", status="experimental",
                       summary="implicit PRM CE loss: BCE on beta * log(pi/pi_ref) of a response vs its outcome",
                       config="lmlab.objectives.dpo:CEConfig", caps=("outcome-reward",), repro="implicit_prm"),
    "implicit_prm": Entry("lmlab.objectives.implicit_prm:ImplicitPRM", paper="arXiv:2412.01981",
                          status="experimental",
                          summary="step rewards from a (policy, reference) pair: diffs of beta * cumulative log-ratio",
                          config="lmlab.objectives.implicit_prm:Config", caps=("scorer",)),
    "rise": Entry("lmlab.objectives.rise:build_pairs", paper="arXiv:2410.06638", status="experimental",
                  summary="RISE pairs: self-sampled full pairs plus error-injected step pairs, for DPO + NLL",
                  config="lmlab.objectives.rise:Config", caps=("data",)),
})
