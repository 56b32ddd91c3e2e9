"""The adapter family's promises: identity at init, fast == naive, merge == unmerged, MoLoRA(1) == LoRA,
HydraLoRA == MALoRA(S = A, P = I), parameter formulas, gradients, save / load, trainable-only exact resume."""

import copy
import threading

import pytest
import torch

from lmlab import adapters
from lmlab.adapters.layers import Config, LowRankMixture, hydralora, lora, malora, molora, naive_delta, param_count
from lmlab.adapters.tuner import AdaptedModel, AdapterLinear
from lmlab.core.checkpoint import CheckpointError
from lmlab.core.data import TokenWindows
from lmlab.core.train import TrainConfig, Trainer
from lmlab.core.transformer import Transformer
from lmlab.objectives.causal_lm import CausalLM

METHODS = ["lora", "molora", "hydralora", "malora"]
PRESET = {"lora": lora, "molora": molora, "hydralora": hydralora, "malora": malora}


@pytest.fixture
def base(tiny_cfg):
    torch.manual_seed(0)
    return Transformer(tiny_cfg).double().eval()


@pytest.fixture
def ids():
    return torch.randint(0, 61, (2, 12), generator=torch.Generator().manual_seed(1))


def randomise_b(model: AdaptedModel, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, layer in model.adapter_layers():
            for mix in layer.adapters.values():
                mix.B.copy_(torch.randn(mix.B.shape, generator=gen, dtype=torch.float64) * 0.1)


@pytest.mark.parametrize("method", METHODS)
def test_b_zero_is_exactly_the_base_model(base, ids, method):
    ref = base(ids)
    model = adapters.apply(copy.deepcopy(base), PRESET[method]())
    assert torch.equal(model(ids), ref)
    assert sum(1 for _ in model.adapter_layers()) == 2 * 7  # q k v o gate up down in each of 2 layers


@pytest.mark.parametrize("method", METHODS)
def test_fast_path_equals_the_naive_reference(method):
    torch.manual_seed(0)
    mix = LowRankMixture(PRESET[method](rank=4, n_experts=0 if method == "lora" else 3), 24, 20, seed=3).double()
    torch.nn.init.normal_(mix.B)
    x = torch.randn(2, 7, 24, dtype=torch.float64)
    fast, naive = mix(x), naive_delta(mix, x)
    torch.testing.assert_close(fast, naive, rtol=1e-10, atol=1e-10)
    # gradients too: the zero weight of an unselected expert gives it no gradient from that token
    g_fast = torch.autograd.grad(fast.square().sum(), list(mix.parameters()))
    g_naive = torch.autograd.grad(naive.square().sum(), list(mix.parameters()))
    for a, b in zip(g_fast, g_naive):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)


def test_merge_equals_unmerged_and_unmerge_restores(base, ids):
    model = adapters.apply(copy.deepcopy(base), lora(rank=4))
    randomise_b(model)
    before = {k: v.clone() for k, v in model.base.state_dict().items() if k.endswith("base.weight")}
    unmerged = model(ids)
    model.merge()
    torch.testing.assert_close(model(ids), unmerged, rtol=0, atol=1e-5)
    assert any(not torch.equal(before[k], v) for k, v in model.base.state_dict().items() if k in before)
    model.unmerge()
    for k, v in model.base.state_dict().items():
        if k in before:
            torch.testing.assert_close(v, before[k], rtol=0, atol=1e-12)
    torch.testing.assert_close(model(ids), unmerged, rtol=0, atol=1e-12)


@pytest.mark.parametrize("method", ["molora", "hydralora", "malora"])
def test_merging_a_routed_adapter_is_refused(base, method):
    model = adapters.apply(copy.deepcopy(base), PRESET[method]())
    with pytest.raises(ValueError, match="routes each token"):
        model.merge()


def test_molora_with_one_expert_is_lora(base, ids):
    a = adapters.apply(copy.deepcopy(base), lora(rank=4, seed=5))
    b = adapters.apply(copy.deepcopy(base), molora(rank=4, n_experts=1, seed=5))
    randomise_b(a)
    randomise_b(b)
    assert a.counts() == b.counts()
    torch.testing.assert_close(a(ids), b(ids), rtol=0, atol=0)


def test_hydralora_is_malora_with_s_a_and_p_identity(base, ids):
    r = 4
    hydra = adapters.apply(copy.deepcopy(base), hydralora(rank=r, top_k=2))
    ma = adapters.apply(copy.deepcopy(base), malora(rank=r, subspace_rank=r, top_k=2))
    randomise_b(hydra)
    with torch.no_grad():
        for (_, lh), (_, lm) in zip(hydra.adapter_layers(), ma.adapter_layers()):
            h, m = lh.adapters["default"], lm.adapters["default"]
            m.S.copy_(h.A)  # S = the shared A (d_s = r) and P_i = I (r' = d_s)
            m.P.copy_(torch.eye(r, dtype=m.P.dtype).expand_as(m.P))
            m.B.copy_(h.B)
            m.router.weight.copy_(h.router.weight)
    torch.testing.assert_close(ma(ids), hydra(ids), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("method", METHODS)
def test_parameter_formula_equals_the_module_count(method):
    cfg = PRESET[method](rank=6)
    mix = LowRankMixture(cfg, 40, 24)
    assert sum(p.numel() for p in mix.parameters()) == param_count(cfg, 40, 24)


def test_malora_has_fewer_parameters_than_molora_at_the_spec_example():
    # training.md Sec. 3.2: d = 4096, N = 8, r = 8 -> MoLoRA 524k; MALoRA d_s = 16, r' = 8 -> 329k (-37%)
    mo = param_count(molora(rank=8, n_experts=8), 4096, 4096) - 8 * 4096  # the spec's formula has no router
    ma = param_count(malora(rank=8, n_experts=8, subspace_rank=16), 4096, 4096) - 8 * 4096
    assert mo == 524_288 and ma == 65_536 + 8 * 8 * (16 + 4096)
    assert ma / mo == pytest.approx(0.627, abs=1e-3)


@pytest.mark.parametrize("method", METHODS)
def test_gradients_reach_adapter_parameters_only(tiny_cfg, method):
    model = adapters.apply(Transformer(tiny_cfg), PRESET[method]())
    randomise_b_float = [m.B for _, layer in model.adapter_layers() for m in layer.adapters.values()]
    with torch.no_grad():
        for b in randomise_b_float:
            b.normal_(0, 0.1)
    ids = torch.randint(0, 61, (2, 13))
    loss = CausalLM()(model, {"ids": ids[:, :-1], "targets": ids[:, 1:]}).loss
    aux = model.pop_aux()
    (loss + sum(aux.values())).backward()
    assert ("adapter_balance" in aux) == (method != "lora")
    for name, p in model.named_parameters():
        if ".adapters." in name:
            assert p.requires_grad and p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert not p.requires_grad and p.grad is None, name


def test_balance_loss_is_one_for_uniform_routing():
    mix = LowRankMixture(molora(n_experts=4, top_k=2), 8, 8)
    w = torch.tensor([[0.5, 0.5, 0, 0], [0, 0, 0.5, 0.5]])
    assert float(mix.balance_loss(w, torch.full((2, 4), 0.25))) == pytest.approx(1.0)
    skew = torch.tensor([[0.5, 0.5, 0, 0], [0.5, 0.5, 0, 0]])
    assert float(mix.balance_loss(skew, torch.tensor([[0.4, 0.4, 0.1, 0.1]] * 2))) > 1.0


def test_save_load_round_trip_and_lmlab_load(tmp_path, base, ids):
    from lmlab.core.checkpoint import save_model
    from lmlab.core.config import to_dict

    save_model(tmp_path / "base", base, to_dict(base.cfg))
    model = adapters.apply(copy.deepcopy(base), malora(rank=6))
    randomise_b(model)
    want = model(ids)
    adapters.save(model, tmp_path / "ad", base=str(tmp_path / "base"))
    again = adapters.load(tmp_path / "ad", copy.deepcopy(base))
    torch.testing.assert_close(again(ids), want, rtol=0, atol=0)
    import lmlab

    loaded, _, meta = lmlab.load(tmp_path / "ad")
    assert meta["kind"] == "lmlab-adapter" and isinstance(loaded, AdaptedModel)
    torch.testing.assert_close(loaded.double()(ids), want, rtol=0, atol=1e-5)  # the base loads as float32


def test_loading_onto_other_shapes_names_module_and_shapes(tmp_path, base, tiny_cfg):
    import dataclasses

    model = adapters.apply(copy.deepcopy(base), lora(rank=4))
    adapters.save(model, tmp_path / "ad")
    other = Transformer(dataclasses.replace(tiny_cfg, dim=48)).double()
    with pytest.raises(CheckpointError, match=r"module layers\.\d\.\w+\.\w+_proj .*needs \(1, 4, 48\)"):
        adapters.load(tmp_path / "ad", other)


def test_bad_input_errors(base):
    with pytest.raises(ValueError, match="match no linear module.*q_proj"):
        adapters.apply(copy.deepcopy(base), lora(target_modules=["query"]))
    with pytest.raises(ValueError, match="rank must be > 0, got 0"):
        lora(rank=0)
    with pytest.raises(ValueError, match="top_k=5 exceeds n_experts=4"):
        molora(top_k=5)
    with pytest.raises(ValueError, match="unknown"):
        Config(method="dora")


def test_several_adapters_on_one_base(base, ids):
    ref = base(ids)
    model = adapters.apply(copy.deepcopy(base), lora(rank=4), name="a")
    adapters.apply(model, malora(rank=4), name="b")
    randomise_b(model)
    with model.using("a"):
        ya = model(ids)
    with model.using("b"):
        yb = model(ids)
    with model.using(None):
        torch.testing.assert_close(model(ids), ref, rtol=0, atol=0)
    assert not torch.allclose(ya, yb)
    assert all(isinstance(m, AdapterLinear) for _, m in model.adapter_layers())
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".adapters.b." in n for n in trainable)  # the active one (b, added last)


def run(tmp_path, tiny_cfg, steps, stop_at=None):
    torch.manual_seed(0)
    model = adapters.apply(Transformer(tiny_cfg), malora(rank=4))
    tokens = torch.arange(4000) % 23
    cfg = TrainConfig(steps=steps, lr=1e-2, warmup_steps=1, ckpt_every=2, run_dir=str(tmp_path), progress=False,
                      log_every=1)
    t = Trainer(model, CausalLM(), TokenWindows(tokens, 4, 16), cfg)
    if stop_at:
        orig = t.train_step

        def killed():
            if t.step == stop_at:
                raise KeyboardInterrupt
            return orig()

        t.train_step = killed
    return t, model


def test_trainable_only_checkpoint_and_exact_resume(tmp_path, tiny_cfg):
    from safetensors.torch import load_file

    full, ref = run(tmp_path / "a", tiny_cfg, 4)
    hist = full.fit()
    assert "aux_adapter_balance" in hist[-1]
    t, _ = run(tmp_path / "b", tiny_cfg, 4, stop_at=3)
    with pytest.raises(KeyboardInterrupt):
        t.fit()
    saved = load_file(str(tmp_path / "b" / "checkpoint" / "model.safetensors"))
    assert saved and all(".adapters.default." in k for k in saved)
    resumed, model = run(tmp_path / "b", tiny_cfg, 4)
    again = resumed.fit()
    assert [r["loss"] for r in again] == [r["loss"] for r in hist[2:]]
    for (k, a), b in zip(model.state_dict().items(), ref.state_dict().values()):
        assert torch.equal(a, b), k


def test_a_regex_target_never_wraps_the_inside_of_an_adapted_layer(base):
    model = adapters.apply(copy.deepcopy(base), lora(target_modules=[r".*q_proj.*"]), name="a")
    adapters.apply(model, lora(target_modules=[r".*q_proj.*"]), name="b")
    layers = dict(model.adapter_layers())
    assert sorted(layers) == ["layers.0.attn.q_proj", "layers.1.attn.q_proj"]
    assert all(isinstance(layer.base, torch.nn.Linear) and set(layer.adapters) == {"a", "b"}
               for layer in layers.values())


def test_adapters_follow_the_base_models_mode_and_eval_collects_no_balance_loss(base, ids, tmp_path):
    model = adapters.apply(copy.deepcopy(base), malora(dropout=0.5))  # base is in eval mode
    assert not model.training and not any(m.training for m in model.modules())
    randomise_b(model)
    assert torch.equal(model(ids), model(ids))  # no dropout at inference
    assert model.pop_aux() == {}  # grad enabled, but not training: nothing held
    adapters.save(model, tmp_path / "ad")
    loaded = adapters.load(tmp_path / "ad", copy.deepcopy(base).train())
    assert all(m.training for m in loaded.modules())


def test_a_merged_adapter_is_the_active_one_until_unmerged(base, ids):
    ref = base(ids)
    model = adapters.apply(copy.deepcopy(base), lora(rank=4), name="a")
    adapters.apply(model, lora(rank=4, seed=1), name="b")  # b is active
    randomise_b(model)
    with model.using("a"):
        ya = model(ids)
    model.merge("a")  # merging a non-active adapter makes it the active one
    assert model.active == "a" and model.merged == "a"
    torch.testing.assert_close(model(ids), ya, rtol=0, atol=1e-10)
    with pytest.raises(ValueError, match="'a' is merged .*unmerge\\(\\) before running adapter 'b'"):
        model.set_active("b")
    with pytest.raises(ValueError, match="before running the base model alone"):
        model.set_active(None)
    model.unmerge()
    with model.using(None):
        torch.testing.assert_close(model(ids), ref, rtol=0, atol=1e-10)


def test_merging_into_a_tied_output_head_is_refused(tiny_cfg, ids):
    model = adapters.apply(Transformer(tiny_cfg).eval(), lora(target_modules=["lm_head"]))  # tied embeddings
    with pytest.raises(ValueError, match="lm_head is shared with tok_emb.weight"):
        model.merge()
    assert model.merged is None


def test_no_active_adapter_is_named_in_the_error(base):
    model = adapters.apply(copy.deepcopy(base), lora())
    model.set_active(None)
    with pytest.raises(ValueError, match="no adapter is active; name one of \\['default'\\]"):
        model.adapter_state_dict()


def test_a_layer_skip_draft_of_an_adapted_model_runs_its_adapter_and_decoding_stays_lossless(base):
    from lmlab.decoding.chain import ChainSpeculative
    from lmlab.decoding.reference import Greedy
    from lmlab.recipes.generate import load_draft

    model = adapters.apply(copy.deepcopy(base), malora(rank=4))
    randomise_b(model)
    draft = load_draft("skip:1", model, None)
    prompt = [3, 1, 4, 1, 5]
    x = torch.tensor([prompt])
    with model.using(None):
        plain_view = load_draft("skip:1", model, None)(x)
    assert not torch.allclose(draft(x), plain_view)  # the view runs the active adapter in its kept layer
    ref = Greedy().generate(model, prompt, 12).tokens
    assert ChainSpeculative(draft=draft).generate(model, prompt, 12).tokens == ref


def test_base_view_runs_the_base_without_a_copy(base, ids):
    want = base(ids)
    adapted = adapters.apply(copy.deepcopy(base), lora(rank=4))
    randomise_b(adapted)
    view = adapted.base_view()
    with torch.no_grad():
        assert torch.equal(view(ids), want)  # the adapter is off inside the view
        assert not torch.allclose(adapted(ids), want)  # and back on outside it
    assert adapted.active == "default" and list(view.parameters()) == []
    assert view.vocab_size == base.vocab_size and view.n_layers == base.n_layers
    adapted.merge()
    with pytest.raises(ValueError, match="unmerge"):
        view(ids)


def test_base_view_leaves_other_threads_on_the_adapter(base, ids):
    """While the view runs, another thread calling the adapted model still gets the adapter's output."""
    adapted = adapters.apply(copy.deepcopy(base), lora(rank=4))
    randomise_b(adapted)
    with torch.no_grad():
        want_adapted, want_base = adapted(ids), base(ids)
    seen: list[torch.Tensor] = []

    def meanwhile(module, inputs, output):
        if not seen:  # once, from inside the view's forward
            seen.append(torch.empty(0))
            worker = threading.Thread(target=lambda: seen.append(adapted(ids)))
            worker.start()
            worker.join()

    handle = adapted.base.layers[0].register_forward_hook(meanwhile)
    with torch.no_grad():
        got = adapted.base_view()(ids)
    handle.remove()
    assert torch.equal(got, want_base) and torch.equal(seen[1], want_adapted)
    assert all(layer.active == "default" for _, layer in adapted.adapter_layers())
