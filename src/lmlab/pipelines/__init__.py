"""Pipelines family: LLM data pipelines against a `ChatClient`, JSONL in and out, resumable by record id.

One registry line per method; targets are lazy "module:attr" strings, so importing this module imports no torch.
"""

from lmlab.core.registry import Entry, Registry

REGISTRY = Registry("pipelines", {
    "reviseval": Entry("lmlab.pipelines.reviseval:RevisEval", paper="arXiv:2410.05193",
                       summary="revise each response into a response-adapted reference, then judge or score against it",
                       config="lmlab.pipelines.reviseval:Config"),
})
