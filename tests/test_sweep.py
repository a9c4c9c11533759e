"""The trade-off search: Pareto front and budget picks against brute force, and a real optuna run on a tiny model."""

from __future__ import annotations

import itertools
import random

import pytest
import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from tiny_models import CharTokenizer, tiny_model

from steer2edit_peft import ContrastiveDataset, extract_steering_vectors
from steer2edit_peft.evaluation import mean_token_kl
from steer2edit_peft.evaluation.sweep import Trial, attribute_at_matched_kl, best_under, pareto_front, search

pytest.importorskip("optuna")
REFERENCE = (["hello there", "what is this"], ["a reply", "an answer"])  # for the default contrast keys


def random_trials(seed: int, count: int = 40) -> list[Trial]:
    rng = random.Random(seed)
    return [Trial("m", {"i": i}, round(rng.random(), 2), round(rng.random(), 2)) for i in range(count)]


@pytest.mark.parametrize("seed", range(5))
def test_pareto_front_matches_brute_force(seed):
    trials = random_trials(seed)

    def dominated(t: Trial) -> bool:
        for other in trials:
            no_worse = other.attribute >= t.attribute and other.kl <= t.kl
            better = other.attribute > t.attribute or other.kl < t.kl
            if no_worse and better:
                return True
        return False

    expected = {t.params["i"] for t in trials if not dominated(t)}
    front = pareto_front(trials)
    assert {t.params["i"] for t in front} == expected
    assert [t.kl for t in front] == sorted(t.kl for t in front)


@pytest.mark.parametrize(("seed", "budget"), itertools.product(range(3), [0.0, 0.2, 0.5, 1.0]))
def test_best_under_a_budget_matches_a_scan(seed, budget):
    trials = random_trials(seed)
    allowed = [t for t in trials if t.kl <= budget]
    best = best_under(trials, budget)
    if not allowed:
        assert best is None
    else:
        assert best is not None and best.kl <= budget
        assert best.attribute == max(t.attribute for t in allowed)
    row = attribute_at_matched_kl({"m": trials}, [budget])[0]
    assert (row["m"] is None) == (best is None)


def test_search_runs_both_methods_and_leaves_the_model_unchanged():
    model = tiny_model("llama", num_hidden_layers=3)
    tokenizer = CharTokenizer()
    dataset = ContrastiveDataset.from_lists(["ab", "cd"], ["no!", "never"], ["ef", "gh"], ["yes ok", "sure"])
    vectors = extract_steering_vectors(model, tokenizer, dataset, reference=REFERENCE, show_progress=False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randint(3, 90, (2, 6))
    with torch.no_grad():
        reference_logits = model(x).logits

    def measure(condition, reference):
        with condition.context(), torch.no_grad():
            shift = float((condition.model(x).logits - reference_logits).abs().mean())
        kl = mean_token_kl(
            condition.model, tokenizer, ["ab"], ["yes"], edited=condition.context, reference=reference.context
        )
        return shift, kl, {"shift": shift}

    edits = search(
        model,
        vectors,
        measure,
        method="Steer2Edit",
        trials=4,
        seed=0,
        show_progress=False,
        enqueue=[{"families": "both", "first_layer": 0, "rho_attn": 0.05, "rho_mlp": 0.05, "alpha": 0.5}],
    )
    steering = search(model, vectors, measure, method="steering", trials=3, seed=0, show_progress=False)
    assert len(edits) == 4 and len(steering) == 3
    assert edits[0].params["rho_attn"] == 0.05 and edits[0].attribute > 0 and edits[0].kl > 0
    assert all(t.method == "steering" and t.params["strength"] > 0 for t in steering)
    assert "edited_heads" in edits[0].details
    assert not any(isinstance(module, BaseTunerLayer) for module in model.modules())
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, before[key], rtol=0, atol=0)
    torch.testing.assert_close(model(x).logits, reference_logits)


def one_pair_vectors():
    model = tiny_model("llama")
    dataset = ContrastiveDataset.from_lists(["a"], ["b"], ["c"], ["d"])
    return model, extract_steering_vectors(model, CharTokenizer(), dataset, reference=REFERENCE, show_progress=False)


def test_search_rejects_an_unknown_method():
    model, vectors = one_pair_vectors()
    with pytest.raises(ValueError, match="method must be"):
        search(model, vectors, lambda c, r: (0.0, 0.0, {}), method="lora", trials=1)


def test_a_trial_that_edits_nothing_scores_as_the_base_model():
    model, vectors = one_pair_vectors()
    calls = []

    def measure(condition, reference):
        calls.append(condition.name)
        return 0.25, 0.0, {}

    # Neurons alone, rho * alpha = 0.95 * 0.8 > any |cos| that a random model gives: nothing is edited. (A head's
    # selective score can come near 1 on so little reference data, so heads are left out.)
    empty = {"families": "neurons", "first_layer": 0, "rho_mlp": 0.8, "alpha": 0.95}
    trials = search(model, vectors, measure, trials=1, enqueue=[empty], show_progress=False)
    assert calls == ["base"] and trials[0].attribute == 0.25 and trials[0].details["edited_heads"] == 0


def test_an_answerer_sees_each_condition_with_its_edit_on_or_off():
    """The hook `sweep --backend vllm` uses: the answerer gets every condition and reads which edit it applies."""
    from steer2edit_peft.evaluation.prompts import EvaluationPrompts
    from steer2edit_peft.evaluation.sweep import generation_measure
    from steer2edit_peft.export.vllm import served_adapter

    model = tiny_model("llama", num_hidden_layers=3)
    tokenizer = CharTokenizer()
    dataset = ContrastiveDataset.from_lists(["ab", "cd"], ["no!", "never"], ["ef", "gh"], ["yes ok", "sure"])
    vectors = extract_steering_vectors(model, tokenizer, dataset, reference=REFERENCE, show_progress=False)
    prompts = EvaluationPrompts(attribute=["ab", "cd"], benign=["ef"], borderline=[])
    seen = []

    def answer(condition, prompt_lists):
        with condition.context():
            seen.append((condition.name, served_adapter(condition.model), [list(p) for p in prompt_lists]))
        return [["I cannot help with that."] * len(p) for p in prompt_lists]

    measure = generation_measure("refusal", tokenizer, prompts, ["ok"], batch_size=2, answer=answer)
    edit = {"families": "heads", "first_layer": 0, "rho_attn": 0.03, "rho_mlp": None, "alpha": 0.2}
    trials = search(model, vectors, measure, trials=1, enqueue=[edit], show_progress=False)
    assert seen == [("Steer2Edit", "default", [["ab", "cd"], ["ef"]])]
    assert trials[0].details == {**trials[0].details, "refusal": 1.0, "over_refusal": 1.0}

    from steer2edit_peft import Steer2EditConfig, edit_model
    from steer2edit_peft.core.errors import Steer2EditError
    from steer2edit_peft.extraction.steering import steer

    edited = edit_model(model, vectors, Steer2EditConfig(rho_attn=0.03, alpha=0.2))
    assert served_adapter(edited) == "default"
    with edited.disable_adapter():
        assert served_adapter(edited) is None
    with steer(edited, vectors, 1.0), pytest.raises(Steer2EditError, match="forward hooks"):
        served_adapter(edited)
    edited.unload()
    assert served_adapter(model) is None
