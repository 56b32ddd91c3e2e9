"""JSON-schema constrained decoding: every output is a document the schema accepts; the mask only removes tokens."""

from __future__ import annotations

import json

import jsonschema
import pytest
import torch

from lmlab.core.tokenizer import ByteTokenizer
from lmlab.core.transformer import Transformer, TransformerConfig
from lmlab.decoding.base import Sampling
from lmlab.decoding.constrained import JsonSchema, SchemaDecoder, schema_of

TOK = ByteTokenizer(["<bos>", "<eos>", "<pad>"])
SCHEMA = {"type": "object", "additionalProperties": False, "required": ["n", "ok", "word"],
          "properties": {"n": {"type": "integer", "minimum": -5, "maximum": 500}, "ok": {"type": "boolean"},
                         "word": {"enum": ["alpha", "beta", "gamma"]}}}


def model(seed: int) -> Transformer:
    torch.manual_seed(seed)
    m = Transformer(TransformerConfig(vocab_size=TOK.vocab_size, dim=32, n_layers=2, n_heads=4, max_seq_len=256))
    with torch.no_grad():
        m.tok_emb.weight.normal_(0.0, 1.0)
    return m.eval()


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("sample", [False, True])
def test_outputs_parse_and_validate(seed, sample):
    dec = SchemaDecoder(SCHEMA, TOK, Sampling(sample=sample, temperature=1.5))
    gen = dec.generate(model(seed), TOK.encode("Answer: "), 80, seed=seed, eos_id=TOK.eos_id)
    doc = json.loads(TOK.decode(gen.tokens))
    jsonschema.validate(doc, SCHEMA)
    assert gen.stats.new_tokens == len(gen.tokens) < 80


def test_the_mask_keeps_allowed_logits_and_removes_the_rest():
    c = JsonSchema(SCHEMA, TOK, TOK.vocab_size)
    logits = torch.randn(TOK.vocab_size)
    masked = c.mask(logits)
    allowed = torch.isfinite(masked)
    assert allowed.tolist() == [i == ord("{") for i in range(TOK.vocab_size)]  # a JSON object starts with {
    assert torch.equal(masked[allowed], logits[allowed])
    with pytest.raises(RuntimeError, match="broke the JSON schema"):
        c.accept(ord("["))


def test_response_formats_and_refusals():
    assert schema_of({"type": "json_object"}) == {"type": "object"}
    assert schema_of({"type": "json_schema", "json_schema": {"name": "x", "schema": SCHEMA}}) is SCHEMA
    with pytest.raises(ValueError, match="json_schema.schema"):
        schema_of({"type": "json_schema", "json_schema": {"name": "x"}})
    with pytest.raises(TypeError, match="ByteTokenizer and Hugging Face"):
        from lmlab.core.tokenizer import CharTokenizer

        JsonSchema(SCHEMA, CharTokenizer("ab"), 2)
