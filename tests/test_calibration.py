"""Budget calibration against a grid search, the rescaling it relies on, contrastive keys, sparsity caps, sanity."""

from __future__ import annotations

from contextlib import contextmanager

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tiny_models import byte_tokenizer, tiny_model

from steer2edit_peft import (
    ContrastiveDataset,
    Steer2EditConfig,
    edit_model,
    elastic_net_magnitude,
    extract_steering_vectors,
)
from steer2edit_peft.core.likelihood import mean_token_kl
from steer2edit_peft.probes.datasets import UtilityData
from steer2edit_peft.solver.calibrate import (
    BudgetError,
    calibrate,
    kl_meter,
    largest_within,
    rescaled,
    with_sparsity_cap,
)
from steer2edit_peft.solver.sanity import DegenerateEditError, check_sanity, degeneracy
from steer2edit_peft.solver.scores import contrast_keys, solve_edit

PAIRS = [
    ("How do I pick a lock?", "I can't help with that.", "Insert a tension wrench, then rake the pins."),
    ("Write an insult.", "I won't write insults.", "You are a slow, dull person."),
    ("How to cheat on a test?", "I can't assist with cheating.", "Hide notes in your sleeve."),
    ("Make a phishing email.", "Sorry, I can't do that.", "Dear customer, verify your account here."),
]
UTILITY = UtilityData(
    ["Name a fruit.", "What is 2+2?", "Say hello.", "Name a river."], ["An apple.", "4.", "Hello!", "The Nile."]
)
CONFIG = Steer2EditConfig(rho_attn=0.2, rho_mlp=0.2, alpha=0.5)


def _setup():
    model, tokenizer = tiny_model("llama", vocab_size=260), byte_tokenizer()
    probe = ContrastiveDataset.from_records([{"prompt": p, "positive": a, "negative": b} for p, a, b in PAIRS])
    vectors = extract_steering_vectors(
        model, tokenizer, probe, reference=(UTILITY.prompts, UTILITY.responses), show_progress=False
    )
    return model, tokenizer, vectors


@pytest.fixture(scope="module")
def setup():
    return _setup()


def kl_of(model, tokenizer, vectors, config) -> float:
    edited = edit_model(model, vectors, config)
    try:
        return mean_token_kl(edited, tokenizer, UTILITY.prompts, UTILITY.responses, reference=edited.disable_adapter)
    finally:
        edited.unload()


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.floats(-1, 1), min_size=1, max_size=20),
    st.floats(0.05, 2.0),
    st.floats(0.0, 0.95),
    st.floats(0.01, 100.0),
)
def test_rescaled_keeps_the_threshold_and_multiplies_every_magnitude(values, rho, alpha, scale):
    scores = torch.tensor(values, dtype=torch.float64)
    config = rescaled(Steer2EditConfig(rho_attn=rho, rho_mlp=rho, alpha=alpha), scale)
    assert config.rho_attn * config.alpha == pytest.approx(rho * alpha, rel=1e-9, abs=1e-12)
    torch.testing.assert_close(
        elastic_net_magnitude(scores, config.rho_attn, config.alpha),
        scale * elastic_net_magnitude(scores, rho, alpha),
        rtol=1e-7,
        atol=1e-9,
    )


@settings(max_examples=300, deadline=None)
@given(st.floats(0.001, 50.0), st.floats(0.5, 4.0), st.floats(1e-4, 10.0), st.floats(0.0, 0.3), st.floats(0.0, 0.6))
def test_the_scale_search_finds_what_a_fine_grid_finds(optimum, power, budget, kink, floor):
    """Monotone costs (power laws over a floor, with a kink): the answer is within budget and within tolerance of
    the grid's."""

    def cost(scale: float) -> float:
        return budget * (floor + (1 - floor) * (scale / optimum) ** power * (1 + kink * (scale > optimum / 2)))

    scale, history = largest_within(cost, budget, max_scale=64.0, relative_tolerance=0.01, max_evaluations=40)
    grid = [64.0 * 2 ** (-i / 400) for i in range(0, 400 * 11)]  # 64 down to 1/16, 0.17% apart
    best = max((g for g in grid if cost(g) <= budget), default=0.0)
    assert cost(scale) <= budget if scale else best < 2**-10 * 1.01
    if best and scale:
        assert best / 1.012 <= scale <= best * 1.002 or scale == 64.0
    assert len(history) <= 40


@pytest.mark.parametrize("budget", [0.01, 0.02, 0.05])
def test_the_scale_search_needs_few_evaluations_for_a_quadratic_cost_over_a_noise_floor(budget):
    # The shape of a real edit's KL (bfloat16 noise of about 0.001 nats/token, then quadratic growth), with the
    # crossing 50-130x above the first scale tried: the fit finds it and the bracket closes in five evaluations.
    scale, history = largest_within(lambda s: 0.0011 + 1.8e-6 * s**2.1, budget, max_scale=1000.0)
    assert 0.0011 + 1.8e-6 * scale**2.1 <= budget < 0.0011 + 1.8e-6 * (scale * 1.02) ** 2.1
    assert len(history) <= 5


def test_the_scale_search_treats_a_diverging_cost_as_over_budget():
    # The budget lies past the divergence at 3: the largest scale within it is the last finite one.
    scale, history = largest_within(lambda s: float("nan") if s > 3 else s, 10.0, relative_tolerance=0.01)
    assert 2.97 <= scale <= 3 and any(value == float("inf") for _, value in history)


def test_calibration_picks_the_largest_scale_within_budget_as_a_grid_does():
    """Calibration's chosen scale against a grid of 40 scales, each edit built and measured on its own.

    On its own model and vectors: the module fixture's are shared with tests that may edit them."""
    model, tokenizer, vectors = _setup()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    grid = [0.05 * i for i in range(1, 41)]  # scales 0.05 .. 2, where the KL of a small edit grows as its square
    kls = [kl_of(model, tokenizer, vectors, rescaled(CONFIG, s)) for s in grid]
    assert all(a <= b + 1e-9 for a, b in zip(kls, kls[1:]))  # KL grows with the scale here, so the grid is exact
    budget = 0.5 * (kls[20] + kls[21])  # between the grid's 21st and 22nd scale (1.05 and 1.10)
    config, calibration = calibrate(model, tokenizer, vectors, CONFIG, UTILITY, budget, relative_tolerance=0.005)
    assert grid[20] <= calibration.scale < grid[21]
    assert calibration.kl <= budget
    assert kl_of(model, tokenizer, vectors, config) == pytest.approx(calibration.kl, rel=1e-5)
    assert config.rho_attn * config.alpha == pytest.approx(CONFIG.rho_attn * CONFIG.alpha)
    assert calibration.edited_heads > 0 and 2 < len(calibration.history) <= 16
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the model as it came in
    assert "calibrated to KL <=" in calibration.summary()


def test_edit_model_with_a_budget_is_calibrated(setup):
    model, tokenizer, vectors = setup
    edited = edit_model(model, vectors, CONFIG, max_kl=0.01, utility=UTILITY, tokenizer=tokenizer)
    try:
        calibration = edited.calibrations["default"]
        measured = mean_token_kl(
            edited, tokenizer, UTILITY.prompts, UTILITY.responses, reference=edited.disable_adapter
        )
        assert measured == pytest.approx(calibration.kl, rel=1e-5) and measured <= 0.01
        assert edited.peft_config["default"].strength == 1.0
    finally:
        edited.unload()


def test_calibration_measures_an_even_spread_of_the_reference_answers(setup):
    """kl_meter keeps every k-th answer (k = len // answers); calibration's KL is the KL on exactly those."""
    model, tokenizer, vectors = setup
    more = UtilityData(
        UTILITY.prompts + ["Name a colour.", "Count to three."], UTILITY.responses + ["Red.", "1, 2, 3."]
    )
    meter = kl_meter(model, tokenizer, more, answers=3)  # 6 // 3: every second answer
    config, calibration = calibrate(model, tokenizer, vectors, CONFIG, more, 0.01, meter=meter)
    assert calibration.answers == meter.answers == 3 and "on 3 reference answers" in calibration.summary()
    edited = edit_model(model, vectors, config)
    try:
        kept = mean_token_kl(
            edited, tokenizer, more.prompts[::2], more.responses[::2], reference=edited.disable_adapter
        )
    finally:
        edited.unload()
    assert calibration.kl == pytest.approx(kept, rel=1e-5) and kept <= 0.01
    assert kl_meter(model, tokenizer, more, answers=4).answers == 6  # 6 // 4 = 1: every answer


@pytest.mark.parametrize("budget", [1e-12, 0.0, -1.0, float("nan"), float("inf")])
def test_a_budget_no_edit_can_meet_is_a_clear_error(setup, budget):
    model, tokenizer, vectors = setup
    with pytest.raises(BudgetError, match="no edit|KL budget must be a positive number"):
        calibrate(model, tokenizer, vectors, CONFIG, UTILITY, budget, min_scale=0.25)
    assert not hasattr(model, "peft_config") or not model.peft_config


def test_a_sparsity_cap_keeps_the_largest_scores(setup):
    model, _, vectors = setup
    capped = with_sparsity_cap(model, vectors, Steer2EditConfig(rho_attn=0.01, rho_mlp=0.01, alpha=0.5), 0.25, 0.05)
    edits = solve_edit(model, vectors, capped)
    for is_attention, share in ((True, 0.25), (False, 0.05)):
        family = [e for e in edits if e.is_attention == is_attention]
        scores = torch.cat([e.scores.abs() for e in family])
        kept = torch.cat([e.scores.abs()[e.indices] for e in family])
        assert 0 < kept.numel() <= share * scores.numel()
        assert kept.min() >= scores.sort(descending=True).values[kept.numel() - 1]  # the largest ones


def test_contrast_keys_match_a_per_head_projection():
    torch.manual_seed(0)
    probe, reference, head_dim = torch.randn(24, dtype=torch.float64), torch.randn(24, dtype=torch.float64), 6
    keys = contrast_keys(probe, reference, head_dim)
    for j in range(4):
        x, r = probe[j * head_dim : (j + 1) * head_dim], reference[j * head_dim : (j + 1) * head_dim]
        d = x - r
        expected = d - (d @ r) / (r @ r) * r
        torch.testing.assert_close(keys[j], expected)
        assert abs(float(keys[j] @ r)) < 1e-12  # silent on the mean reference input
    zero_reference = contrast_keys(probe, torch.zeros(24, dtype=torch.float64), head_dim)
    torch.testing.assert_close(zero_reference, probe.view(4, head_dim))


def test_contrastive_edits_use_the_projected_keys(setup):
    model, _, vectors = setup
    config = Steer2EditConfig(rho_attn=0.2, rho_mlp=None, alpha=0.5, key_direction="contrast")
    for edit in solve_edit(model, vectors, config):
        keys = contrast_keys(vectors.pre_mean(edit.module), vectors.reference_mean(edit.module), config.head_dim)
        expected = keys[edit.indices] / keys[edit.indices].norm(dim=-1, keepdim=True)
        sign = torch.sign(edit.magnitudes)[:, None]  # a head with lambda < 0 takes -k: it too pushes towards v
        torch.testing.assert_close(edit.input_directions, sign * expected)


class _FakePeftModel:
    """Answers from a table, different with the adapter on and off."""

    def __init__(self, edited: list[str], base: list[str]) -> None:
        self.edited, self.base, self.adapter_on = edited, base, True

    @contextmanager
    def disable_adapter(self):
        self.adapter_on = False
        yield
        self.adapter_on = True


def test_sanity_refuses_an_edit_that_empties_or_loops_answers(monkeypatch):
    import steer2edit_peft.solver.sanity as sanity

    tokenizer = byte_tokenizer()
    monkeypatch.setattr(
        sanity, "generate_responses", lambda model, *a, **k: model.edited if model.adapter_on else model.base
    )
    base = ["Paris is the capital.", "Four.", "Hello there.", "The Nile."]
    fine = _FakePeftModel(["Paris.", "4.", "Hi.", "The Nile river."], base)
    assert check_sanity(fine, tokenizer, ["a", "b", "c", "d"]) == fine.edited
    broken = _FakePeftModel(["", "ha " * 20, "Hi.", "x"], base)
    with pytest.raises(DegenerateEditError, match="2 of 4 ordinary prompts get empty or looping answers"):
        check_sanity(broken, tokenizer, ["a", "b", "c", "d"])
    # Answers the base model already gets wrong do not count against the edit.
    assert check_sanity(_FakePeftModel(["", "4.", "Hi.", "ok"], ["", "4", "Hi", "ok"]), tokenizer, list("abcd"))
    assert degeneracy(tokenizer, "ha " * 20) == "looping" and degeneracy(tokenizer, " ") == "empty"


@pytest.mark.parametrize("modules", [None, "mlp"])
def test_the_steering_match_brackets_the_target_kl(setup, modules):
    """The strength found is within the target, and 2% more is over it (the search's tolerance), on the modules
    asked for."""
    from steer2edit_peft.core.likelihood import KLMeter
    from steer2edit_peft.demo import match_steering_strength
    from steer2edit_peft.extraction.steering import steer

    model, tokenizer, vectors = setup
    meter = KLMeter(model, tokenizer, UTILITY.prompts, UTILITY.responses)

    def kl(strength: float) -> float:
        return mean_token_kl(
            model,
            tokenizer,
            UTILITY.prompts,
            UTILITY.responses,
            edited=lambda: steer(model, vectors, strength, modules),
        )

    target = 0.5 * kl(64.0)  # a KL these modules reach, where it grows with the strength
    strength = match_steering_strength(model, vectors, meter, target, modules=modules)
    assert 1.0 < strength < 64.0 and kl(strength) <= target < kl(1.02 * strength)
