"""Tokenizers: bytes (no files needed), characters (synthetic tasks), byte-level BPE, a Hugging Face adapter.

All of them follow the small :class:`Tokenizer` protocol: ``vocab_size``, ``encode(str) -> list[int]``,
``decode(ids) -> str`` and ``bos_id`` / ``eos_id`` (``None`` when the tokenizer has no such token).

- :class:`ByteTokenizer`: ids 0..255 are the UTF-8 bytes; optional special tokens (``<bos>``, ``<eos>``, ...)
  get ids 256, 257, ... in the order given. Decoding replaces invalid UTF-8 with U+FFFD.
- :class:`CharTokenizer`: one id per character of a fixed alphabet, specials after it; an unknown character is
  a ``ValueError`` naming it.
- :class:`BPETokenizer`: byte-level BPE trained with the ``tokenizers`` package (GPT-2 style pre-tokenization,
  so any string round-trips); saved and loaded as one ``tokenizer.json``.
- :class:`HFTokenizer`: wraps an already-built ``transformers`` tokenizer (imported lazily).

Byte, character and BPE tokenizers ``save(path)`` to a ``tokenizer.json`` (BPE: the ``tokenizers`` format; the
others: a small JSON definition) and :func:`load_tokenizer` reads any of them back.

Text is always plain text: a special token's name inside the input string is encoded as ordinary characters,
never as the special id. Add specials explicitly, e.g. ``[tok.bos_id, *tok.encode(s)]``.

:func:`fingerprint` gives a stable hash of a tokenizer's full definition; caches of token ids are keyed by it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

DEFAULT_SPECIALS = ("<bos>", "<eos>", "<pad>")
_EXPECTED = "expected a tokenizer saved by lmlab (a tokenizer.json written by save())"


@runtime_checkable
class Tokenizer(Protocol):
    """What the rest of lmlab needs from a tokenizer."""

    @property
    def vocab_size(self) -> int: ...

    @property
    def bos_id(self) -> int | None: ...

    @property
    def eos_id(self) -> int | None: ...

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


def _sha(data: str) -> str:
    return hashlib.sha256(data.encode("utf-8")).hexdigest()


class TokenizerFileError(ValueError):
    """A tokenizer file that exists but cannot be read as a tokenizer (binary, broken JSON, unknown layout)."""


def _json_file(path: str | Path, must_exist: bool = False) -> Path:
    path = Path(path)
    file = path if path.suffix == ".json" else path / "tokenizer.json"
    if must_exist and not file.is_file():
        raise FileNotFoundError(f"no tokenizer file at {file} (expected a tokenizer.json written by save())")
    return file


def _write_json(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path``'s tokenizer.json atomically (``runtime.atomic_write``); returns the file."""
    from .runtime import atomic_write  # here: the tokenizer module stays free of torch

    return atomic_write(_json_file(path), text)


def _check_specials(specials: Sequence[str]) -> tuple[str, ...]:
    specials = tuple(specials)
    for s in specials:
        if not isinstance(s, str) or not s:
            raise ValueError(f"special tokens must be non-empty strings, got {s!r}")
    if len(set(specials)) != len(specials):
        raise ValueError(f"special tokens must be unique, got {list(specials)}")
    return specials


class _SpecialsMixin:
    """Specials stored after ``_base`` regular ids; shared by the byte and character tokenizers."""

    _base: int
    specials: tuple[str, ...]

    @property
    def vocab_size(self) -> int:
        return self._base + len(self.specials)

    def token_id(self, special: str) -> int:
        """The id of a special token, e.g. ``token_id("<eos>")``."""
        if special not in self.specials:
            raise ValueError(f"unknown special token {special!r}; this tokenizer has {list(self.specials)}")
        return self._base + self.specials.index(special)

    def _maybe(self, special: str) -> int | None:
        return self.token_id(special) if special in self.specials else None

    @property
    def bos_id(self) -> int | None:
        return self._maybe("<bos>")

    @property
    def eos_id(self) -> int | None:
        return self._maybe("<eos>")

    @property
    def pad_id(self) -> int | None:
        return self._maybe("<pad>")

    def to_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    def save(self, path: str | Path) -> Path:
        """Write a small JSON definition (``path`` is a folder, or a file path ending in .json)."""
        return _write_json(path, json.dumps(self.to_dict(), indent=1))

    @property
    def fingerprint(self) -> str:
        return _sha(json.dumps(self.to_dict(), sort_keys=True))

    def _check_ids(self, ids: Sequence[int]) -> None:
        for i in ids:
            if not 0 <= int(i) < self.vocab_size:
                raise ValueError(f"token id {i} out of range for vocab_size {self.vocab_size}")


class ByteTokenizer(_SpecialsMixin):
    """UTF-8 bytes as ids 0..255, then ``specials`` as 256, 257, ..."""

    def __init__(self, specials: Sequence[str] = ()):
        self._base = 256
        self.specials = _check_specials(specials)

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [list(t.encode("utf-8")) for t in texts]

    def decode(self, ids: Sequence[int]) -> str:
        """Bytes decode with errors="replace"; a special id decodes to its name (e.g. ``<eos>``)."""
        self._check_ids(ids)
        out: list[str] = []
        run = bytearray()
        for i in ids:
            i = int(i)
            if i < 256:
                run.append(i)
                continue
            out.append(run.decode("utf-8", errors="replace"))
            run = bytearray()
            out.append(self.specials[i - 256])
        out.append(run.decode("utf-8", errors="replace"))
        return "".join(out)

    def to_dict(self) -> dict[str, Any]:
        return {"lmlab_tokenizer": "byte", "specials": list(self.specials)}

    def __repr__(self) -> str:
        return f"ByteTokenizer(specials={list(self.specials)})"


class CharTokenizer(_SpecialsMixin):
    """One id per character of ``alphabet`` (in its order), then ``specials``."""

    def __init__(self, alphabet: str, specials: Sequence[str] = ()):
        if not isinstance(alphabet, str) or not alphabet:
            raise ValueError(f"alphabet must be a non-empty string, got {alphabet!r}")
        dupes = sorted({c for c in alphabet if alphabet.count(c) > 1})
        if dupes:
            raise ValueError(f"alphabet has repeated characters {dupes}; each character must appear once")
        self.alphabet = alphabet
        self._base = len(alphabet)
        self.specials = _check_specials(specials)
        self._ids = {c: i for i, c in enumerate(alphabet)}

    def encode(self, text: str) -> list[int]:
        try:
            return [self._ids[c] for c in text]
        except KeyError as e:
            c = e.args[0]
            raise ValueError(f"character {c!r} (position {text.index(c)} of {text!r}) is not in the "
                             f"alphabet {self.alphabet!r}") from None

    def decode(self, ids: Sequence[int]) -> str:
        """Characters for regular ids; a special id decodes to its name."""
        self._check_ids(ids)
        base = self._base
        return "".join(self.alphabet[i] if i < base else self.specials[i - base] for i in map(int, ids))

    def to_dict(self) -> dict[str, Any]:
        return {"lmlab_tokenizer": "char", "alphabet": self.alphabet, "specials": list(self.specials)}

    def __repr__(self) -> str:
        return f"CharTokenizer(alphabet={self.alphabet!r}, specials={list(self.specials)})"


class BPETokenizer:
    """Byte-level BPE backed by a ``tokenizers.Tokenizer``; specials get the first ids (0, 1, ...)."""

    def __init__(self, tok: Any):
        self._tok = tok
        self._tok.encode_special_tokens = True  # special names inside text stay text

    @classmethod
    def train(
        cls,
        texts: Iterable[str],
        vocab_size: int,
        special_tokens: Sequence[str] = DEFAULT_SPECIALS,
        min_frequency: int = 2,
    ) -> BPETokenizer:
        """Train on ``texts``; deterministic for the same texts and arguments."""
        from tokenizers import Tokenizer as _Tok
        from tokenizers import decoders, models, pre_tokenizers, trainers

        specials = _check_specials(special_tokens)
        alphabet = pre_tokenizers.ByteLevel.alphabet()
        if vocab_size < len(alphabet) + len(specials):
            raise ValueError(
                f"vocab_size={vocab_size} is too small: byte-level BPE needs at least "
                f"{len(alphabet)} byte symbols + {len(specials)} specials = {len(alphabet) + len(specials)}"
            )
        tok = _Tok(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=list(specials),
            initial_alphabet=alphabet, show_progress=False,
        )
        tok.train_from_iterator(iter(texts), trainer=trainer)
        return cls(tok)

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def token_id(self, special: str) -> int:
        i = self._tok.token_to_id(special)
        if i is None:
            raise ValueError(f"unknown token {special!r} for this BPE tokenizer")
        return i

    @property
    def bos_id(self) -> int | None:
        return self._tok.token_to_id("<bos>")

    @property
    def eos_id(self) -> int | None:
        return self._tok.token_to_id("<eos>")

    @property
    def pad_id(self) -> int | None:
        return self._tok.token_to_id("<pad>")

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[int]) -> str:
        ids = [int(i) for i in ids]
        for i in ids:
            if not 0 <= i < self.vocab_size:
                raise ValueError(f"token id {i} out of range for vocab_size {self.vocab_size}")
        return self._tok.decode(ids, skip_special_tokens=False)

    def save(self, path: str | Path) -> Path:
        """Write ``tokenizer.json`` (``path``: a folder, or a file path ending in .json); returns the file."""
        return _write_json(path, self._tok.to_str())

    @classmethod
    def load(cls, path: str | Path) -> BPETokenizer:
        from tokenizers import Tokenizer as _Tok

        file = _json_file(path, must_exist=True)
        try:
            return cls(_Tok.from_file(str(file)))
        except Exception as e:  # the tokenizers package raises plain Exception for a file it cannot parse
            raise TokenizerFileError(f"{file}: not a tokenizers BPE file ({e}); {_EXPECTED}") from None

    @property
    def fingerprint(self) -> str:
        return _sha(self._tok.to_str())

    def __repr__(self) -> str:
        return f"BPETokenizer(vocab_size={self.vocab_size})"


class HFTokenizer:
    """Adapter for a ``transformers`` tokenizer object (no special tokens are added by ``encode``)."""

    def __init__(self, tok: Any):
        self.tok = tok

    @classmethod
    def from_pretrained(cls, path: str | Path, **kwargs: Any) -> HFTokenizer:
        """Load from a local folder only (no downloads)."""
        from transformers import AutoTokenizer

        if not Path(path).exists():
            raise FileNotFoundError(f"tokenizer folder or file not found: {path} (only local paths work)")
        return cls(AutoTokenizer.from_pretrained(str(path), local_files_only=True, **kwargs))

    @property
    def vocab_size(self) -> int:
        return len(self.tok)

    @property
    def bos_id(self) -> int | None:
        return self.tok.bos_token_id

    @property
    def eos_id(self) -> int | None:
        return self.tok.eos_token_id

    @property
    def pad_id(self) -> int | None:
        return self.tok.pad_token_id

    def encode(self, text: str) -> list[int]:
        return list(self.tok.encode(text, add_special_tokens=False))

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [list(x) for x in self.tok(list(texts), add_special_tokens=False)["input_ids"]]

    def decode(self, ids: Sequence[int]) -> str:
        return self.tok.decode([int(i) for i in ids], skip_special_tokens=False)

    @property
    def fingerprint(self) -> str:
        backend = getattr(self.tok, "backend_tokenizer", None)
        if backend is not None:
            return _sha(backend.to_str())
        vocab = sorted(self.tok.get_vocab().items())
        return _sha(json.dumps({"class": type(self.tok).__name__, "vocab": vocab}))

    def __repr__(self) -> str:
        return f"HFTokenizer({type(self.tok).__name__}, vocab_size={self.vocab_size})"


def fingerprint(tok: Tokenizer) -> str:
    """A sha256 hex digest identifying ``tok``'s full definition (same digest <=> same token ids)."""
    fp = getattr(tok, "fingerprint", None)
    if not isinstance(fp, str):
        raise TypeError(
            f"{type(tok).__name__} has no 'fingerprint' property; add one (a sha256 of its definition) "
            "so token caches can be keyed by it"
        )
    return fp


_SIMPLE = {
    "byte": lambda d: ByteTokenizer(d["specials"]),
    "char": lambda d: CharTokenizer(d["alphabet"], d["specials"]),
}


def load_tokenizer(path: str | Path) -> ByteTokenizer | CharTokenizer | BPETokenizer:
    """Load any tokenizer written by a ``save()`` above (a folder or a tokenizer.json path)."""
    file = _json_file(path, must_exist=True)
    data = _read_json(file)
    if not isinstance(data, dict):
        raise TokenizerFileError(f"{file}: holds a JSON {type(data).__name__}, not an object; {_EXPECTED}")
    kind = data.get("lmlab_tokenizer")
    if kind is None:
        return BPETokenizer.load(file)
    if kind not in _SIMPLE:
        raise TokenizerFileError(f"{file}: unknown lmlab_tokenizer kind {kind!r}; expected one of {list(_SIMPLE)}")
    try:
        return _SIMPLE[kind](data)
    except KeyError as e:
        raise TokenizerFileError(f"{file}: a {kind!r} tokenizer lacks the key {e.args[0]!r}; {_EXPECTED}") from None


def _read_json(file: Path) -> Any:
    """The parsed JSON of a tokenizer file; a binary file or broken JSON raises TokenizerFileError naming it."""
    try:
        return json.loads(file.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as e:
        why = f"not a UTF-8 JSON file (byte 0x{e.object[e.start]:02x} at offset {e.start})"
    except json.JSONDecodeError as e:
        why = f"not valid JSON at line {e.lineno}, column {e.colno} ({e.msg})"
    raise TokenizerFileError(f"{file}: {why}; {_EXPECTED}")
