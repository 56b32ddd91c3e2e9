"""objectives.labelling_cost: the closed forms against a token-by-token count of the same pipelines, the ratio's
invariances and monotonicity, and input validation."""

from __future__ import annotations

import pytest

from lmlab.objectives import labelling_cost as lc


def setup(**kw) -> lc.LabellingSetup:
    base = dict(params=3.0, prompt_tokens=5, response_tokens=12, steps=4, mc_per_step=3, responses=2,
                instructions=3)
    return lc.LabellingSetup(**(base | kw))


def naive_flops(s: lc.LabellingSetup) -> tuple[float, float]:
    """(implicit PRM, Math-Shepherd) FLOPs by walking every instruction, rollout, step, completion and token.
    Steps are ``response_tokens / steps`` tokens each (the tests pick divisible sizes)."""
    assert s.response_tokens % s.steps == 0
    P, L, step_len = s.params, s.prompt_tokens + s.response_tokens, s.response_tokens // s.steps
    implicit = shepherd = 0.0
    for _ in range(s.instructions):
        for _ in range(s.responses):
            for _ in range(L):  # the rollout: prefill the prompt, then generate the response token by token
                implicit += 2 * P
                shepherd += 2 * P
            for _ in range(s.epochs):  # reward-model training over the whole sequence
                for _ in range(L):
                    implicit += 6 * P
                    shepherd += 6 * P
            for _ in range(L):  # implicit PRM: the reference forward
                implicit += 2 * P
            for k in range(1, s.steps):  # Math-Shepherd: completions from the end of steps 1 .. S-1
                for _ in range(s.mc_per_step):
                    first = s.prompt_tokens + k * step_len if s.prefix_cached else 0
                    for _ in range(first, L):
                        shepherd += 2 * P
    return implicit, shepherd


@pytest.mark.parametrize("kw", [{}, {"prefix_cached": False}, {"epochs": 2}, {"steps": 1}, {"steps": 6},
                                {"steps": 3, "mc_per_step": 8, "responses": 1, "epochs": 3, "prefix_cached": False},
                                {"instructions": 1, "responses": 8, "steps": 12, "mc_per_step": 1}])
def test_closed_forms_equal_a_token_by_token_count(kw):
    s = setup(**kw)
    implicit, shepherd = naive_flops(s)
    assert lc.implicit_prm_flops(s) == pytest.approx(implicit, rel=1e-12)
    assert lc.math_shepherd_flops(s) == pytest.approx(shepherd, rel=1e-12)
    assert lc.flops_ratio(s) == pytest.approx(shepherd / implicit, rel=1e-12)


def test_a_hand_computed_case():
    # P = 1, prompt 10, response 24 (4 steps of 6), M = 8, one rollout: implicit = 2*34 + 6*34 + 2*34 = 340;
    # Math-Shepherd = 2*34 + 6*34 + 2*8*(18 + 12 + 6) = 272 + 576 = 848
    s = lc.LabellingSetup(params=1, prompt_tokens=10, response_tokens=24, steps=4, mc_per_step=8, responses=1,
                          instructions=1)
    assert lc.implicit_prm_flops(s) == 340
    assert lc.math_shepherd_flops(s) == 848
    assert lc.flops_ratio(s) == pytest.approx(848 / 340)


@pytest.mark.parametrize("cached", [True, False])
def test_ratio_does_not_depend_on_instructions_responses_or_size(cached):
    ref = lc.flops_ratio(setup(prefix_cached=cached))
    for kw in ({"instructions": 1}, {"instructions": 1000}, {"responses": 8}, {"params": 8e9}):
        assert lc.flops_ratio(setup(prefix_cached=cached, **kw)) == pytest.approx(ref, rel=1e-12)
    assert lc.math_shepherd_flops(setup(instructions=6)) == pytest.approx(2 * lc.math_shepherd_flops(setup()))


@pytest.mark.parametrize("cached", [True, False])
def test_ratio_grows_with_completions_per_step_and_with_steps(cached):
    by_m = [lc.flops_ratio(setup(mc_per_step=m, prefix_cached=cached)) for m in range(1, 17)]
    by_s = [lc.flops_ratio(setup(steps=k, response_tokens=60, prefix_cached=cached)) for k in (1, 2, 3, 4, 5, 6, 10)]
    assert all(a < b for a, b in zip(by_m, by_m[1:]))
    assert all(a < b for a, b in zip(by_s, by_s[1:]))
    # one step: no completions, and Math-Shepherd saves the reference forward
    assert lc.flops_ratio(setup(steps=1, prefix_cached=cached)) < 1


def test_without_prefix_cache_labelling_costs_more():
    assert lc.mc_labelling_flops(setup(prefix_cached=False)) > lc.mc_labelling_flops(setup())


def test_steps_for_ratio_inverts_the_ratio():
    s = setup(response_tokens=70, prefix_cached=False)
    assert lc.steps_for_ratio(lc.flops_ratio(setup(steps=7, response_tokens=70, prefix_cached=False)), s) == \
        pytest.approx(7)
    with pytest.raises(ValueError, match="target ratio must be > 0"):
        lc.steps_for_ratio(0.0, s)
    with pytest.raises(ValueError, match="below the ratio at one step"):  # S = 1: no labelling, ratio < 1
        lc.steps_for_ratio(0.5 * lc.flops_ratio(setup(steps=1, response_tokens=70, prefix_cached=False)), s)


@pytest.mark.parametrize("field", ["params", "prompt_tokens", "response_tokens", "steps", "mc_per_step",
                                   "responses", "instructions", "epochs"])
@pytest.mark.parametrize("bad", [0, -2])
def test_zero_or_negative_inputs_are_refused_by_name(field, bad):
    with pytest.raises(ValueError, match=rf"LabellingSetup\.{field} must be > 0, got {bad}"):
        setup(**{field: bad})


def test_non_integer_counts_and_non_numbers_are_refused():
    with pytest.raises(TypeError, match=r"steps must be an integer count, got 2.5"):
        setup(steps=2.5)
    with pytest.raises(TypeError, match=r"responses must be a number, got True"):
        setup(responses=True)
    with pytest.raises(TypeError, match=r"params must be a number, got '8B'"):
        setup(params="8B")
    with pytest.raises(TypeError, match="prefix_cached must be a bool"):
        setup(prefix_cached=1)
