"""Tokenizers: exact round trips, special ids, errors, BPE determinism and save/load, the HF adapter."""

import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmlab.core.tokenizer import (
    BPETokenizer,
    ByteTokenizer,
    CharTokenizer,
    HFTokenizer,
    Tokenizer,
    TokenizerFileError,
    fingerprint,
    load_tokenizer,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "text"


@pytest.fixture(scope="module")
def texts():
    return [p.read_text(encoding="utf-8") for p in sorted(FIXTURES.glob("*.txt"))]


@pytest.fixture(scope="module")
def bpe(texts):
    return BPETokenizer.train(texts, vocab_size=400)


@given(st.text())
@settings(max_examples=200, deadline=None)
def test_byte_round_trip(s):
    tok = ByteTokenizer(["<bos>", "<eos>"])
    ids = tok.encode(s)
    assert ids == list(s.encode("utf-8")) and all(0 <= i < 256 for i in ids)
    assert tok.decode(ids) == s


def test_byte_specials_and_errors():
    tok = ByteTokenizer(["<bos>", "<eos>", "<pad>"])
    assert (tok.vocab_size, tok.bos_id, tok.eos_id, tok.pad_id) == (259, 256, 257, 258)
    assert ByteTokenizer().bos_id is None and ByteTokenizer().vocab_size == 256
    assert tok.encode("<eos>") == list(b"<eos>")  # a special's name in text is just text
    assert tok.decode([tok.bos_id, *tok.encode("hé"), tok.eos_id]) == "<bos>hé<eos>"
    assert tok.decode([0xC3]) == "\ufffd"  # a cut multi-byte character is replaced, not raised
    with pytest.raises(ValueError, match="out of range"):
        tok.decode([259])
    with pytest.raises(ValueError, match="unique"):
        ByteTokenizer(["<eos>", "<eos>"])
    with pytest.raises(ValueError, match="unknown special"):
        tok.token_id("<mask>")


def test_char_tokenizer():
    tok = CharTokenizer("0123456789+=", specials=["<eos>"])
    ids = tok.encode("12+7=19")
    assert ids == [1, 2, 10, 7, 11, 1, 9] and tok.decode(ids) == "12+7=19"
    assert tok.vocab_size == 13 and tok.eos_id == 12 and tok.bos_id is None
    assert tok.decode([*ids, tok.eos_id]) == "12+7=19<eos>"
    with pytest.raises(ValueError, match=r"character 'x' \(position 2"):
        tok.encode("12x")
    with pytest.raises(ValueError, match=r"repeated characters \['a'\]"):
        CharTokenizer("aba")
    with pytest.raises(ValueError, match="non-empty"):
        CharTokenizer("")


def test_bpe_round_trip_and_specials(bpe, texts):
    assert bpe.vocab_size == 400
    assert (bpe.bos_id, bpe.eos_id, bpe.pad_id) == (0, 1, 2)
    text = texts[0]
    ids = bpe.encode(text)
    assert len(ids) < len(text.encode("utf-8")) / 1.5  # merges were learned from the text
    assert bpe.decode(ids) == text
    assert bpe.eos_id not in bpe.encode("a <eos> b")  # a special's name in text is just text
    assert bpe.decode([*bpe.encode("Amen."), bpe.eos_id]) == "Amen.<eos>"
    assert bpe.encode_batch(texts[:3]) == [bpe.encode(t) for t in texts[:3]]
    with pytest.raises(ValueError, match="out of range"):
        bpe.decode([400])


@given(st.text(max_size=200))
@settings(max_examples=100, deadline=None)
def test_bpe_round_trips_any_string(s):
    tok = _shared_bpe()
    assert tok.decode(tok.encode(s)) == s


_CACHE = {}


def _shared_bpe():
    if "tok" not in _CACHE:
        texts = [p.read_text("utf-8") for p in sorted(FIXTURES.glob("*.txt"))]
        _CACHE["tok"] = BPETokenizer.train(texts, 300)
    return _CACHE["tok"]


def test_bpe_training_is_deterministic(texts, bpe):
    again = BPETokenizer.train(texts, vocab_size=400)
    assert again.fingerprint == bpe.fingerprint
    other = BPETokenizer.train(texts[::-1], vocab_size=400, special_tokens=["<eos>"])
    assert other.fingerprint != bpe.fingerprint and other.eos_id == 0 and other.bos_id is None
    with pytest.raises(ValueError, match="vocab_size=100 is too small"):
        BPETokenizer.train(texts, vocab_size=100)


def test_bpe_save_load(bpe, texts, tmp_path):
    file = bpe.save(tmp_path / "tok")
    assert file == tmp_path / "tok" / "tokenizer.json" and not list(tmp_path.rglob("*.tmp"))
    loaded = BPETokenizer.load(tmp_path / "tok")
    assert loaded.fingerprint == bpe.fingerprint
    assert loaded.encode(texts[1]) == bpe.encode(texts[1])
    assert load_tokenizer(file).fingerprint == bpe.fingerprint
    with pytest.raises(FileNotFoundError, match="no tokenizer file"):
        BPETokenizer.load(tmp_path / "missing")


def test_simple_tokenizers_save_load(tmp_path):
    for tok in (ByteTokenizer(["<eos>"]), CharTokenizer("abc", ["<bos>"])):
        path = tok.save(tmp_path / type(tok).__name__ / "tokenizer.json")
        back = load_tokenizer(path)
        assert type(back) is type(tok) and back.fingerprint == tok.fingerprint
        assert back.decode(back.encode("abc")) == "abc"


def test_protocol_and_fingerprint(bpe):
    for tok in (ByteTokenizer(), CharTokenizer("ab"), bpe):
        assert isinstance(tok, Tokenizer)
        assert len(fingerprint(tok)) == 64
    assert fingerprint(ByteTokenizer()) != fingerprint(ByteTokenizer(["<eos>"]))
    assert fingerprint(ByteTokenizer(["<eos>"])) == fingerprint(ByteTokenizer(["<eos>"]))
    with pytest.raises(TypeError, match="fingerprint"):
        fingerprint(object())  # type: ignore[arg-type]


def test_hf_adapter(bpe, texts, tmp_path):
    transformers = pytest.importorskip("transformers")
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=bpe._tok, bos_token="<bos>",
                                                eos_token="<eos>")
    tok = HFTokenizer(fast)
    assert isinstance(tok, Tokenizer)
    assert tok.vocab_size == bpe.vocab_size and (tok.bos_id, tok.eos_id) == (bpe.bos_id, bpe.eos_id)
    assert tok.encode(texts[2]) == bpe.encode(texts[2])
    assert tok.decode(tok.encode(texts[2])) == texts[2]
    assert tok.encode_batch(texts[:2]) == [tok.encode(t) for t in texts[:2]]
    fast.save_pretrained(tmp_path / "hf")
    again = HFTokenizer.from_pretrained(tmp_path / "hf")
    assert again.encode(texts[3]) == bpe.encode(texts[3]) and again.fingerprint == tok.fingerprint
    with pytest.raises(FileNotFoundError, match="only local paths"):
        HFTokenizer.from_pretrained(tmp_path / "nope")


@pytest.mark.parametrize("content, problem", [
    (b'{\n "lmlab_tokenizer": "byte",\n specials: []\n}', "not valid JSON at line 3, column 2"),
    (b"\x89PNG\r\n\x1a\n\xff", "not a UTF-8 JSON file (byte 0x89 at offset 0)"),
    (b'["<bos>"]', "holds a JSON list, not an object"),
    (b'{"lmlab_tokenizer": "char", "specials": []}', "a 'char' tokenizer lacks the key 'alphabet'"),
    (b'{"version": "1.0", "model": 3}', "not a tokenizers BPE file"),
])
def test_a_corrupted_tokenizer_file_is_named(tmp_path, content, problem):
    file = tmp_path / "run" / "tokenizer.json"
    file.parent.mkdir()
    file.write_bytes(content)
    with pytest.raises(TokenizerFileError) as info:
        load_tokenizer(file.parent)
    msg = str(info.value)
    assert isinstance(info.value, ValueError)  # the CLI reports ValueErrors as user errors (exit code 2)
    assert msg.startswith(f"{file}: {problem}") and msg.endswith("expected a tokenizer saved by lmlab "
                                                                 "(a tokenizer.json written by save())")


def test_bpe_load_of_a_broken_file_names_it(tmp_path):
    file = tmp_path / "tokenizer.json"
    file.write_text('{"version": "1.0",\n "model": {"type": "BPE",')
    with pytest.raises(TokenizerFileError, match=f"^{re.escape(str(file))}: not a tokenizers BPE file .*line 2"):
        BPETokenizer.load(file)
