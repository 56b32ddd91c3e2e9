"""Compression family: quantizers, sparsifiers, token reducers, applied to any model by module replacement.

One registry line per method; targets are lazy "module:attr" strings, so importing this module imports no
torch.
"""

from lmlab.core.registry import Entry, Registry

REGISTRY = Registry("compression", {
    "rtn": Entry("lmlab.compression.rtn:RTN", paper="round-to-nearest baseline (arXiv:2410.09426 Tab. 1)",
                 summary="per-channel INT-b weights, per-token activations, per-head KV cache; no transform",
                 status="stable", config="lmlab.compression.rtn:Config", caps=("hf", "kv_cache", "save"),
                 repro="flatquant"),
    "hadamard": Entry("lmlab.compression.hadamard:Hadamard", paper="arXiv:2404.00456 (QuaRot)",
                      summary="Hadamard rotations folded into weights (online where needed), then RTN",
                      config="lmlab.compression.hadamard:Config", caps=("hf", "kv_cache", "save"),
                      repro="flatquant"),
    "flatquant": Entry("lmlab.compression.flatquant:FlatQuant", paper="arXiv:2410.09426",
                       summary="learned Kronecker affine transforms + clipping, block-wise calibration",
                       config="lmlab.compression.flatquant:Config", caps=("hf", "kv_cache", "calibration", "save")),
    "ppl_p_sparsity": Entry("lmlab.compression.activation_sparsity:PPLPSparsity", paper="arXiv:2411.02335",
                            summary="CETT per-layer FFN thresholds at PPL+p%; Top-k and FAT-eps baselines",
                            config="lmlab.compression.activation_sparsity:Config", caps=("hf", "calibration"),
                            repro="sparsing_law"),
})
