"""Decoding family: decoders returning `Generation(tokens, stats)`; speculative ones split into propose /
score / verify.

One registry line per method; targets are lazy "module:attr" strings, so importing this module imports no torch.
"""

from lmlab.core.registry import Entry, Registry

REGISTRY = Registry("decoding", {
    "greedy": Entry("lmlab.decoding.reference:Greedy", paper="baseline", status="stable",
                    summary="plain greedy decoding with a KV cache (the exactness reference)",
                    caps=("hf", "greedy-lossless"), repro="gsd"),
    "sample": Entry("lmlab.decoding.reference:Sample", paper="baseline", status="stable",
                    summary="plain sampling with temperature, top-k, top-p (the distribution reference)",
                    config="lmlab.decoding.reference:Config", caps=("hf", "sampling"), repro="gsd"),
    "chain_sd": Entry("lmlab.decoding.chain:ChainSpeculative", paper="arXiv:2211.17192", status="stable",
                      summary="speculative decoding with a k-token draft chain, exact greedy and sampling",
                      config="lmlab.decoding.chain:Config", repro="gsd",
                      caps=("draft", "hf", "sampling", "greedy-lossless")),
    "tree_sd": Entry("lmlab.decoding.tree:TreeSpeculative", paper="arXiv:2305.09781", status="stable",
                     summary="token-tree speculative decoding: top-k expansion, sibling pruning, tree mask",
                     config="lmlab.decoding.tree:Config", repro="gsd",
                     caps=("draft", "hf", "sampling", "greedy-lossless")),
    "gsd": Entry("lmlab.decoding.gsd:GraphSpeculative", paper="arXiv:2407.16207", status="experimental",
                 summary="graph-structured speculative decoding: recurring draft tokens merged into a DAG",
                 config="lmlab.decoding.gsd:Config", caps=("draft", "hf", "sampling", "greedy-lossless")),
})
