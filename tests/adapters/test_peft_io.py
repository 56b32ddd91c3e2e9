"""PEFT interoperability, checked against the real ``peft`` package: lmlab LoRA -> PEFT and PEFT LoRA -> lmlab give
the same logits (HF Llama and lmlab Transformer), merge == PEFT's merge_and_unload, lmlab.load of a PEFT folder,
and refusals that name what was wrong."""

import copy
import json

import pytest
import torch

from lmlab import adapters
from lmlab.adapters.layers import lora, malora, molora
from lmlab.adapters.peft_io import load_peft, save_peft
from lmlab.adapters.tuner import AdaptedModel
from lmlab.core.checkpoint import CheckpointError, OutputFolderError
from lmlab.core.hf import HFCausalLM, llama_from_transformer, transformer_from_llama
from lmlab.core.transformer import Transformer

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")


def tiny_llama(hidden: int = 32, layers: int = 2):
    """A random float64 LlamaForCausalLM (no downloads)."""
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=61, hidden_size=hidden, intermediate_size=64, num_hidden_layers=layers,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                   bos_token_id=None, eos_token_id=None, pad_token_id=None)
    return transformers.LlamaForCausalLM(cfg).double().eval()


@pytest.fixture
def ids():
    return torch.randint(0, 61, (2, 10), generator=torch.Generator().manual_seed(1))


def randomise(model: AdaptedModel, seed: int = 0) -> None:
    """Random A and non-zero B in every adapter, so that the adapter changes the logits."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, layer in model.adapter_layers():
            for mix in layer.adapters.values():
                for p in (mix.A,) if hasattr(mix, "A") else (mix.S, mix.P):
                    p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.3)
                mix.B.copy_(torch.randn(mix.B.shape, generator=gen, dtype=mix.B.dtype) * 0.3)


def peft_lora(llama, **kw):
    """A PEFT LoRA on ``llama`` with random non-zero B (PEFT initialises B to zero)."""
    cfg = peft.LoraConfig(**{"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj", "down_proj"],
                             "task_type": "CAUSAL_LM", **kw})
    model = peft.get_peft_model(llama, cfg)
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.3)
    return model.eval()


def peft_logits(folder, base, ids, merge=False):
    model = peft.PeftModel.from_pretrained(base, str(folder)).eval()
    if merge:
        model = model.merge_and_unload()
    with torch.no_grad():
        return model(input_ids=ids).logits


# ---------------------------------------------------------------- lmlab -> PEFT


def test_lmlab_lora_on_a_wrapped_llama_loads_in_peft(tmp_path, ids):
    llama = tiny_llama()
    model = adapters.apply(HFCausalLM(copy.deepcopy(llama)), lora(rank=4, alpha=12.0))
    randomise(model)
    with torch.no_grad():
        want, base_out = model(ids), llama(input_ids=ids).logits
    assert not torch.allclose(want, base_out, atol=1e-3)  # the adapter does change the model
    save_peft(model, tmp_path / "ad", base_model_name_or_path="my/base")
    config = json.loads((tmp_path / "ad" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 4 and config["lora_alpha"] == 12
    assert config["target_modules"] == sorted(["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                               "down_proj"])
    assert config["base_model_name_or_path"] == "my/base" and config["bias"] == "none"
    from safetensors.torch import load_file

    keys = load_file(str(tmp_path / "ad" / "adapter_model.safetensors"))
    assert keys["base_model.model.model.layers.1.mlp.down_proj.lora_A.weight"].shape == (4, 64)
    assert keys["base_model.model.model.layers.1.mlp.down_proj.lora_B.weight"].shape == (32, 4)
    assert len(keys) == 2 * 2 * 7
    torch.testing.assert_close(peft_logits(tmp_path / "ad", copy.deepcopy(llama), ids), want, rtol=0, atol=1e-10)


def test_lmlab_transformer_lora_loads_in_peft_on_its_llama_twin(tmp_path, tiny_cfg, ids):
    torch.manual_seed(0)
    base = Transformer(tiny_cfg).double().eval()
    # layer 0's attention only: last names would select layer 1 too, so the full Llama paths are written
    model = adapters.apply(copy.deepcopy(base), lora(rank=3, target_modules=r"layers\.0\.attn\.\w_proj"))
    randomise(model, seed=1)
    with torch.no_grad():
        want = model(ids)
    save_peft(model, tmp_path / "ad")
    config = json.loads((tmp_path / "ad" / "adapter_config.json").read_text())
    assert config["target_modules"] == [f"model.layers.0.self_attn.{p}_proj" for p in "koqv"]
    got = peft_logits(tmp_path / "ad", llama_from_transformer(base).eval(), ids)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-10)


def test_merged_lmlab_lora_equals_peft_merge_and_unload(tmp_path, ids):
    llama = tiny_llama()
    model = adapters.apply(HFCausalLM(copy.deepcopy(llama)), lora(rank=4, target_modules=["q_proj", "up_proj"]))
    randomise(model, seed=2)
    save_peft(model, tmp_path / "ad")
    model.merge()
    with torch.no_grad():
        merged = model(ids)
    got = peft_logits(tmp_path / "ad", copy.deepcopy(llama), ids, merge=True)
    torch.testing.assert_close(got, merged, rtol=0, atol=1e-10)


# ---------------------------------------------------------------- PEFT -> lmlab


@pytest.mark.parametrize("rslora", [False, True])
def test_peft_lora_loads_onto_hf_and_onto_an_lmlab_transformer(tmp_path, ids, rslora):
    llama = tiny_llama()
    pm = peft_lora(copy.deepcopy(llama), use_rslora=rslora, lora_alpha=6)
    with torch.no_grad():
        want = pm(input_ids=ids).logits
    assert not torch.allclose(want, llama(input_ids=ids).logits, atol=1e-3)
    pm.save_pretrained(str(tmp_path / "ad"))
    on_hf = load_peft(tmp_path / "ad", HFCausalLM(copy.deepcopy(llama)))
    assert on_hf.configs["default"].target_modules == ["down_proj", "q_proj", "v_proj"]
    with torch.no_grad():
        torch.testing.assert_close(on_hf(ids), want, rtol=0, atol=1e-10)
        on_lmlab = load_peft(tmp_path / "ad", transformer_from_llama(copy.deepcopy(llama)).eval())
        torch.testing.assert_close(on_lmlab(ids), want, rtol=0, atol=1e-10)
        on_raw = load_peft(tmp_path / "ad", copy.deepcopy(llama))  # a transformers model without the wrapper
        torch.testing.assert_close(on_raw(input_ids=ids).logits, want, rtol=0, atol=1e-10)


def test_peft_keys_with_the_adapter_name_load_too(tmp_path, ids):
    from safetensors.torch import load_file, save_file

    llama = tiny_llama()
    pm = peft_lora(copy.deepcopy(llama))
    with torch.no_grad():
        want = pm(input_ids=ids).logits
    pm.save_pretrained(str(tmp_path / "ad"))
    f = tmp_path / "ad" / "adapter_model.safetensors"
    state = load_file(str(f))
    save_file({k.replace(".weight", ".default.weight"): v for k, v in state.items()}, str(f))
    assert all(".lora_A.default.weight" in k or ".lora_B.default.weight" in k for k in load_file(str(f)))
    model = load_peft(tmp_path / "ad", HFCausalLM(copy.deepcopy(llama)))
    with torch.no_grad():
        torch.testing.assert_close(model(ids), want, rtol=0, atol=1e-10)


def test_lmlab_load_reads_a_peft_folder_with_a_local_base(tmp_path, ids):
    llama = tiny_llama()
    llama.save_pretrained(str(tmp_path / "base"))
    pm = peft_lora(copy.deepcopy(llama))
    pm.peft_config["default"].base_model_name_or_path = str(tmp_path / "base")
    with torch.no_grad():
        want = pm(input_ids=ids).logits
    pm.save_pretrained(str(tmp_path / "ad"))
    import lmlab

    model, tok, meta = lmlab.load(tmp_path / "ad")
    assert isinstance(model, AdaptedModel) and meta["kind"] == "peft" and meta["base"] == str(tmp_path / "base")
    assert tok is None and meta["source"] == str(tmp_path / "ad")
    with torch.no_grad():
        torch.testing.assert_close(model.double()(ids), want, rtol=0, atol=1e-5)  # the base loads as float32


def test_a_second_adapter_on_an_adapted_model_and_a_round_trip(tmp_path, ids):
    llama = tiny_llama()
    pm = peft_lora(copy.deepcopy(llama))
    with torch.no_grad():
        want = pm(input_ids=ids).logits
    pm.save_pretrained(str(tmp_path / "ad"))
    model = adapters.apply(HFCausalLM(copy.deepcopy(llama)), molora(rank=2), name="mix")
    load_peft(tmp_path / "ad", model, name="peft")
    assert sorted(model.configs) == ["mix", "peft"] and model.active == "peft"
    with torch.no_grad():
        torch.testing.assert_close(model(ids), want, rtol=0, atol=1e-10)
    save_peft(model, tmp_path / "again", "peft")  # and back to PEFT, into an existing PEFT folder as well
    save_peft(model, tmp_path / "ad", "peft")
    for folder in ("again", "ad"):
        torch.testing.assert_close(peft_logits(tmp_path / folder, copy.deepcopy(llama), ids), want, rtol=0,
                                   atol=1e-10)


# ---------------------------------------------------------------- refusals


def test_only_unrouted_adapters_are_saved_to_peft(tmp_path, ids):
    model = adapters.apply(HFCausalLM(tiny_llama()), molora(rank=2))
    with pytest.raises(ValueError, match="'default' is molora .*routed experts"):
        save_peft(model, tmp_path / "ad")
    assert not (tmp_path / "ad").exists()
    llama = tiny_llama()  # one expert of MALoRA is one B (P S): a plain LoRA for PEFT
    one = adapters.apply(HFCausalLM(copy.deepcopy(llama)), malora(rank=3, n_experts=1, subspace_rank=5))
    randomise(one)
    with torch.no_grad():
        want = one(ids)
    save_peft(one, tmp_path / "one")
    torch.testing.assert_close(peft_logits(tmp_path / "one", llama, ids), want, rtol=0, atol=1e-6)


def test_saving_into_a_foreign_folder_is_refused_and_leaves_it_alone(tmp_path):
    model = adapters.apply(HFCausalLM(tiny_llama()), lora(rank=2))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    with pytest.raises(OutputFolderError, match="notes.txt"):
        save_peft(model, tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["notes.txt"]
    save_peft(model, tmp_path / "out", overwrite=True)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["adapter_config.json",
                                                                    "adapter_model.safetensors", "notes.txt"]


def test_an_interrupted_save_leaves_no_adapter_that_loads(tmp_path, monkeypatch):
    from lmlab.adapters import peft_io

    model = adapters.apply(HFCausalLM(tiny_llama()), lora(rank=2))
    save_peft(model, tmp_path / "old")
    real = peft_io.atomic_write

    def killed_before_the_config(path, data):
        if path.name == "adapter_config.json":
            raise KeyboardInterrupt
        return real(path, data)

    monkeypatch.setattr(peft_io, "atomic_write", killed_before_the_config)
    with pytest.raises(KeyboardInterrupt):
        save_peft(model, tmp_path / "new")  # a new folder: written aside, never renamed into place
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old"]
    with pytest.raises(KeyboardInterrupt):
        save_peft(model, tmp_path / "old")  # an existing adapter: its old config goes first
    with pytest.raises(CheckpointError, match="no adapter_config.json"):
        load_peft(tmp_path / "old", HFCausalLM(tiny_llama()))


def test_a_pickle_only_folder_is_refused(tmp_path):
    tiny = peft_lora(tiny_llama())
    tiny.save_pretrained(str(tmp_path / "ad"))
    (tmp_path / "ad" / "adapter_model.safetensors").unlink()
    (tmp_path / "ad" / "adapter_model.bin").write_bytes(b"never unpickled")
    with pytest.raises(CheckpointError, match="adapter_model.bin, a pickle, which lmlab never loads"):
        load_peft(tmp_path / "ad", HFCausalLM(tiny_llama()))


def test_another_width_names_the_module_and_both_shapes(tmp_path):
    peft_lora(tiny_llama(hidden=32)).save_pretrained(str(tmp_path / "ad"))
    with pytest.raises(CheckpointError, match=r"lora_A of module model\.layers\.0\.self_attn\.q_proj has shape "
                                              r"\(4, 32\), .*needs \(4, 48\)"):
        load_peft(tmp_path / "ad", HFCausalLM(tiny_llama(hidden=48)))


def test_a_module_the_model_lacks_is_named(tmp_path):
    peft_lora(tiny_llama(layers=3)).save_pretrained(str(tmp_path / "ad"))
    with pytest.raises(CheckpointError, match=r"adapts module model\.layers\.2\.\w+\.\w+_proj, which HFCausalLM "
                                              "lacks"):
        load_peft(tmp_path / "ad", HFCausalLM(tiny_llama(layers=2)))


@pytest.mark.parametrize("kw, what", [({"use_dora": True}, "use_dora=True"), ({"bias": "all"}, "bias='all'"),
                                      ({"rank_pattern": {"q_proj": 2}}, "rank_pattern")])
def test_settings_lmlab_cannot_reproduce_are_refused(tmp_path, kw, what):
    peft_lora(tiny_llama(), **kw).save_pretrained(str(tmp_path / "ad"))
    with pytest.raises(CheckpointError, match=f"no equivalent of .*{what}"):
        load_peft(tmp_path / "ad", HFCausalLM(tiny_llama()))


def test_an_unconverted_residual_initialisation_is_refused(tmp_path):
    peft_lora(tiny_llama()).save_pretrained(str(tmp_path / "ad"))
    config = json.loads((tmp_path / "ad" / "adapter_config.json").read_text())
    config["init_lora_weights"] = "pissa_niter_4"  # PiSSA's adapter expects the residual base, not the original
    (tmp_path / "ad" / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="init_lora_weights='pissa_niter_4'"):
        load_peft(tmp_path / "ad", HFCausalLM(tiny_llama()))


def test_lmlab_load_refuses_a_hub_base(tmp_path):
    peft_lora(tiny_llama()).save_pretrained(str(tmp_path / "ad"))
    config = json.loads((tmp_path / "ad" / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "someone/some-llama-7b"
    (tmp_path / "ad" / "adapter_config.json").write_text(json.dumps(config))
    import lmlab

    with pytest.raises(CheckpointError, match="'someone/some-llama-7b', which is neither a local folder nor a known"):
        lmlab.load(tmp_path / "ad")
